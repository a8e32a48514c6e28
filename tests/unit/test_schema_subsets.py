"""The API's schemas never promise what the payload rules refuse: every string a schema
pattern admits passes the rule behind it (schemathesis found one that did not)."""

from __future__ import annotations

import typing

from hypothesis import given, settings
from hypothesis import strategies as st

from alertq.alerts import check_generator_url
from alertq.api_managed import GeneratorUrl

GENERATOR_URL_PATTERN = typing.get_args(GeneratorUrl)[1].pattern


@settings(max_examples=500)
@given(st.from_regex(GENERATOR_URL_PATTERN, fullmatch=True).filter(lambda v: len(v) <= 2048))
def test_every_generator_url_the_managed_api_schema_admits_passes_the_payload_rule(
    value: str,
) -> None:
    assert check_generator_url(value) == value
