"""Tricky ``POST /api/v2/alerts`` bodies, with what Alertmanager 0.25 and alertq do with each.

Each :class:`PayloadCase` is the exact JSON text that is POSTed to a real Alertmanager and,
parsed by :func:`json.loads` (as Go's decoder would: the last duplicate key wins), handed to
``enqueue_alert``. The two verdicts are what was observed, not wished for:
``alertmanager_accepts`` is 0.25's answer (200 vs 400/422) and ``alertq_accepts`` is
``enqueue_alert``'s. The differential test
(``tests/acceptance/test_payload_differential.py``) checks both against the real peers every
run, and the rule that matters: **nothing Alertmanager refuses is accepted by alertq**. Where
alertq is stricter, ``note`` says why.

Cases that depend on the clock take ``now``: Alertmanager answers relative to its own clock at
POST time (later than ``now``), alertq relative to the ``now`` passed to ``enqueue_alert``.
Every alert carries a ``case`` label, so no two cases share a label set in Alertmanager.

The relay (issue 11) can reuse the shape: the body is what a sender POSTs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

ALERTNAME = "PayloadCorpus"


class Verdict(Enum):
    """(Alertmanager accepts, alertq accepts). alertq accepting alone is the bug, so absent."""

    BOTH = (True, True)
    NEITHER = (False, False)
    STRICTER = (True, False)  # alertq refuses what Alertmanager accepts: needs a note


BOTH, NEITHER, STRICTER = Verdict.BOTH, Verdict.NEITHER, Verdict.STRICTER


@dataclass(frozen=True)
class PayloadCase:
    """One body: its id, the JSON text, and each peer's verdict (True = accepted)."""

    id: str
    body: bytes
    alertmanager_accepts: bool
    alertq_accepts: bool
    note: str = ""

    def parsed(self) -> Any:
        """The body as Python data, decoded as Go decodes it (last duplicate key wins)."""
        return json.loads(self.body)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_corpus(
    now: datetime, *, resolve_timeout: timedelta = timedelta(minutes=5)
) -> list[PayloadCase]:
    """The corpus, for an Alertmanager whose ``resolve_timeout`` is ``resolve_timeout``."""
    cases: list[PayloadCase] = []

    def labels(case: str, **extra: Any) -> dict[str, Any]:
        return {"alertname": ALERTNAME, "case": case, **extra}

    def add(case: str, body: object, verdict: Verdict, note: str = "", *, raw: str = "") -> None:
        if verdict is STRICTER and not note:
            raise ValueError(f"{case}: say why alertq refuses what Alertmanager accepts")
        text = raw or json.dumps(body)
        am, aq = verdict.value
        cases.append(PayloadCase(case, text.encode("utf-8"), am, aq, note))

    def one(case: str, verdict: Verdict, note: str = "", **fields: Any) -> None:
        """A body with one alert: the case's labels plus ``fields`` (``labels`` merged in)."""
        alert: dict[str, Any] = {"labels": labels(case, **fields.pop("extra_labels", {}))}
        alert.update(fields)
        add(case, [alert], verdict, note)

    def ts(
        case: str, value: object, verdict: Verdict, note: str = "", key: str = "startsAt"
    ) -> None:
        """A timestamp case; an ``endsAt`` alone is enough to test parsing."""
        one(case, verdict, note, **{key: value})

    # ------------------------------------------------------------------ timestamps
    ts("ts-utc-z", "2024-05-01T12:00:00Z", BOTH)
    ts("ts-offset-plus", "2024-05-01T12:00:00+05:30", BOTH)
    ts("ts-offset-minus-zero", "2024-05-01T12:00:00-00:00", BOTH)
    ts("ts-offset-no-colon", "2024-05-01T12:00:00+0530", NEITHER)
    ts(
        "ts-offset-24h",
        "2024-05-01T12:00:00+24:00",
        STRICTER,
        "Go 0.25's build takes a 24-hour offset; no real zone has one",
    )
    ts(
        "ts-no-zone",
        "2024-05-01T12:00:00",
        STRICTER,
        "strfmt reads a zone-less time as UTC; alertq wants the zone said",
    )
    ts(
        "ts-space-not-t",
        "2024-05-01 12:00:00",
        STRICTER,
        "strfmt accepts '2006-01-02 15:04:05'; not RFC 3339",
    )
    ts("ts-no-seconds", "2024-05-01T12:00Z", STRICTER, "strfmt reduced precision; not RFC 3339")
    ts("ts-date-only", "2024-05-01", NEITHER)
    ts("ts-lower-t", "2024-05-01t12:00:00Z", NEITHER)
    ts("ts-lower-z", "2024-05-01T12:00:00z", NEITHER)
    ts("ts-leading-space", " 2024-05-01T12:00:00Z", NEITHER)
    ts("ts-trailing-space", "2024-05-01T12:00:00Z ", NEITHER)
    ts("ts-fraction-1", "2024-05-01T12:00:00.5Z", BOTH)
    ts("ts-fraction-9", "2024-05-01T12:00:00.123456789Z", BOTH)
    ts(
        "ts-fraction-10",
        "2024-05-01T12:00:00.1234567891Z",
        STRICTER,
        "Go truncates beyond nanoseconds; alertq refuses what it cannot compare exactly",
    )
    ts(
        "ts-fraction-comma",
        "2024-05-01T12:00:00,5Z",
        STRICTER,
        "Go accepts a comma before the fraction; RFC 3339 does not",
    )
    ts("ts-fraction-empty", "2024-05-01T12:00:00.Z", NEITHER)
    ts("ts-leap-second", "2016-12-31T23:59:60Z", NEITHER)
    ts("ts-hour-24", "2024-05-01T24:00:00Z", NEITHER)
    ts("ts-feb-30", "2024-02-30T12:00:00Z", NEITHER)
    ts("ts-feb-29-leap-year", "2024-02-29T12:00:00Z", BOTH)
    ts("ts-month-13", "2024-13-01T12:00:00Z", NEITHER)
    ts(
        "ts-year-0",
        "0000-01-01T00:00:00Z",
        STRICTER,
        "Go has a year 0; Python's datetime does not",
    )
    ts(
        "ts-year-1-zero-time",
        "0001-01-01T00:00:00Z",
        BOTH,
        "Go's zero time: Alertmanager reads it as unset (startsAt := now)",
    )
    ts("ts-year-9999-ends", "9999-12-31T23:59:59.999999999Z", BOTH, key="endsAt")
    ts(
        "ts-year-10000-utc",
        "9999-12-31T23:00:00-01:00",
        STRICTER,
        "year 10000 in UTC: beyond Python's datetime",
        key="endsAt",
    )
    ts("ts-five-digit-year", "10000-01-01T00:00:00Z", NEITHER)
    ts(
        "ts-arabic-indic-digits",
        "١٢٣٤-05-01T12:00:00Z",
        NEITHER,
        "issue 9: \\d and int() took these as 1234",
        key="endsAt",
    )
    ts("ts-fullwidth-digits", "２０２４-05-01T12:00:00Z", NEITHER, key="endsAt")
    ts("ts-devanagari-offset", "2024-05-01T12:00:00+०५:३०", NEITHER, key="endsAt")
    ts("ts-arabic-indic-fraction", "2024-05-01T12:00:00.٥Z", NEITHER, key="endsAt")
    ts(
        "ts-empty-string",
        "",
        STRICTER,
        "strfmt reads '' as 1970-01-01 (not zero); alertq refuses a meaningless time",
    )
    ts("ts-number", 1714564800, NEITHER)
    ts("ts-null", None, BOTH, "null is absent for both")
    one(
        "ts-ends-before-starts",
        NEITHER,
        startsAt="2024-05-01T12:00:00Z",
        endsAt="2024-05-01T11:59:59Z",
    )
    one(
        "ts-ends-before-starts-1ns",
        NEITHER,
        startsAt="2024-05-01T12:00:00.000000002Z",
        endsAt="2024-05-01T12:00:00.000000001Z",
    )
    one(
        "ts-ends-equals-starts",
        BOTH,
        startsAt="2024-05-01T12:00:00Z",
        endsAt="2024-05-01T12:00:00Z",
    )
    one(
        "ts-ends-equals-starts-other-zone",
        BOTH,
        startsAt="2024-05-01T14:00:00+02:00",
        endsAt="2024-05-01T12:00:00Z",
    )
    one("ts-both-zero", BOTH, startsAt="0001-01-01T00:00:00Z", endsAt="0001-01-01T00:00:00Z")
    one(
        "ts-ends-zero-starts-past",
        STRICTER,
        "a zero endsAt is unset for Alertmanager (now + resolve_timeout); alertq compares it",
        startsAt="2024-05-01T12:00:00Z",
        endsAt="0001-01-01T00:00:00Z",
    )
    one("ts-ends-only-past", BOTH, endsAt="2024-05-01T12:00:00Z")

    # startsAt in the future: Alertmanager sets a missing endsAt to now + resolve_timeout.
    far = now + resolve_timeout * 2
    near = now + resolve_timeout / 2
    one(
        "future-starts-beyond-resolve-timeout",
        NEITHER,
        "issue 9: 'start time must be before end time'",
        startsAt=_iso(far),
    )
    one(
        "future-starts-within-resolve-timeout",
        STRICTER,
        "accepted by this Alertmanager, refused by one with a shorter resolve_timeout or "
        "once the delivery is late; alertq cannot know either",
        startsAt=_iso(near),
    )
    one("future-starts-within-skew", BOTH, startsAt=_iso(now + timedelta(seconds=1)))
    one(
        "future-starts-with-ends",
        BOTH,
        startsAt=_iso(far),
        endsAt=_iso(far + timedelta(hours=1)),
    )
    one("future-starts-ends-equal", BOTH, startsAt=_iso(far), endsAt=_iso(far))
    one("future-starts-ends-zero", NEITHER, startsAt=_iso(far), endsAt="0001-01-01T00:00:00Z")
    one("future-starts-year-9999", NEITHER, startsAt="9999-12-31T23:59:59Z")
    one("future-starts-ends-null", NEITHER, startsAt=_iso(far), endsAt=None)

    # ------------------------------------------------------------------ label names
    def lbl(case: str, verdict: Verdict, note: str = "", **extra: Any) -> None:
        one(case, verdict, note, extra_labels=extra)

    lbl("label-underscore-leading", BOTH, _x="1")
    lbl("label-dunder", BOTH, __meta="1")
    lbl("label-leading-digit", NEITHER, **{"1x": "1"})
    lbl("label-dot", NEITHER, "0.27+ accepts UTF-8 names; 0.25 does not", **{"a.b": "1"})
    lbl("label-dash", NEITHER, **{"a-b": "1"})
    lbl("label-unicode-name", NEITHER, **{"名前": "1"})
    lbl("label-arabic-indic-digit-name", NEITHER, **{"a١": "1"})
    lbl("label-kelvin-sign-name", NEITHER, **{"\u212a": "1"})
    lbl("label-empty-name", NEITHER, **{"": "1"})
    lbl("label-long-name", BOTH, **{"n" * 10_000: "1"})
    # ------------------------------------------------------------------ label values
    lbl("value-unicode", BOTH, v="名前 ✓ 🚨 é")
    lbl("value-newline-tab", BOTH, v="a\nb\tc")
    lbl(
        "value-empty",
        STRICTER,
        "Alertmanager drops the label (the label set changes); alertq makes the caller omit it",
        v="",
    )
    lbl("value-long-100k", BOTH, v="x" * 100_000)
    lbl("value-nul", STRICTER, "PostgreSQL jsonb cannot store NUL", v="a\x00b")
    lbl(
        "value-lone-surrogate",
        STRICTER,
        "Go replaces it with U+FFFD; alertq refuses to change a label value",
        v="a\ud800b",
    )
    lbl("value-number", NEITHER, v=1)
    lbl("value-bool", NEITHER, v=True)
    lbl(
        "value-null",
        STRICTER,
        "Go decodes null as '', and Alertmanager drops empty-valued labels",
        v=None,
    )
    lbl("value-object", NEITHER, v={"a": "b"})
    add("labels-only-empty-values", [{"labels": {"alertname": "", "case": ""}}], NEITHER)
    add("labels-empty", [{"labels": {}}], NEITHER)
    add("labels-missing", [{"annotations": {"a": "b"}}], NEITHER)
    add("labels-null", [{"labels": None}], NEITHER)
    add("labels-array", [{"labels": ["alertname"]}], NEITHER)
    add(
        "labels-no-alertname",
        [{"labels": {"case": "labels-no-alertname"}}],
        STRICTER,
        "alertq requires alertname (every route and template uses it)",
    )
    add(
        "labels-duplicate-key-last-wins",
        None,
        NEITHER,
        raw='[{"labels": {"alertname": "PayloadCorpus", "case": "dup-key", "v": "ok", "v": 1}}]',
    )

    # ------------------------------------------------------------------ annotations
    one("annotations-empty", BOTH, annotations={})
    one("annotations-null", BOTH, annotations=None)
    one("annotations-empty-value", BOTH, annotations={"summary": ""})
    one("annotations-unicode-value", BOTH, annotations={"summary": '🔥 <b>x</b> & "y"'})
    one("annotations-bad-name", NEITHER, annotations={"run book": "x"})
    one("annotations-number-value", NEITHER, annotations={"n": 1})
    one(
        "annotations-nul",
        STRICTER,
        "PostgreSQL jsonb cannot store NUL",
        annotations={"a": "\x00"},
    )
    one("annotations-array", NEITHER, annotations=["a"])

    # ------------------------------------------------------------------ generatorURL
    def url(case: str, value: object, verdict: Verdict, note: str = "") -> None:
        one(case, verdict, note, generatorURL=value)

    url(
        "url-https",
        "https://prometheus.example:9090/graph?g0.expr=up%7Bjob%3D%22x%22%7D",
        BOTH,
    )
    url("url-http-ipv6", "http://[::1]:9090/graph", BOTH)
    url("url-upper-scheme", "HTTPS://PROM.EXAMPLE/graph", BOTH)
    url("url-idn-host", "https://exämple.org/graph", BOTH)
    url(
        "url-relative-path",
        "/graph?g0.expr=up&g0.tab=1",
        BOTH,
        "what Prometheus sends without --web.external-url",
    )
    url("url-relative-no-slash", "graph?g0.expr=up", NEITHER)
    url("url-query-only", "?g0.expr=up", NEITHER)
    url("url-fragment-only", "#x", NEITHER)
    url(
        "url-protocol-relative",
        "//evil.example/x",
        STRICTER,
        "a network-path reference: alertq takes a path or an http(s) URL",
    )
    url(
        "url-javascript",
        "javascript:alert(document.domain)",
        STRICTER,
        "the Alertmanager UI renders it as a link",
    )
    url("url-javascript-authority", "javascript://x/%0Aalert(1)", STRICTER, "issue 9")
    url("url-data", "data:text/html,<script>alert(1)</script>", STRICTER, "issue 9")
    url("url-data-authority", "data://x/text/html", STRICTER, "issue 9")
    url("url-file", "file:///etc/passwd", STRICTER, "not http(s)")
    url("url-ftp", "ftp://ftp.example/x", STRICTER, "not http(s)")
    url("url-bad-escape", "https://prom.example/graph%zz", NEITHER)
    url("url-bad-escape-host", "https://prom%zz.example/", NEITHER)
    url("url-space-in-host", "https://prom example/", NEITHER)
    url("url-space-in-path", "https://prom.example/a b", STRICTER, "alertq refuses whitespace")
    url("url-newline", "https://prom.example/a\nb", NEITHER)
    url("url-port-too-big", "https://prom.example:99999/", STRICTER, "no such port")
    url("url-port-not-number", "https://prom.example:http/", NEITHER)
    url(
        "url-userinfo",
        "https://user:secret@prom.example/",
        STRICTER,
        "credentials would be stored in the queue and shown as a link",
    )
    url("url-empty-host", "http:///graph", STRICTER, "no host")
    url("url-opaque-http", "http:prom.example", STRICTER, "no host")
    url(
        "url-empty",
        "",
        STRICTER,
        "'' is omitted by Go's omitempty; alertq wants a URL or no key",
    )
    url("url-number", 42, NEITHER)

    # ------------------------------------------------------------------ bodies and sizes
    add("body-null", None, STRICTER, "Alertmanager: nothing to do; alertq: nothing to queue")
    add("body-empty-array", [], STRICTER, "nothing to queue")
    add("body-object", {"labels": labels("body-object")}, NEITHER)
    add("body-array-of-number", [1], NEITHER)
    add(
        "body-alert-null",
        [None],
        NEITHER,
        "Alertmanager 0.25's handler panics on a null alert: the connection closes unanswered",
    )
    add(
        "unknown-key-status",
        [{"labels": labels("unknown-key-status"), "status": "firing"}],
        STRICTER,
        "Alertmanager ignores unknown keys; alertq refuses what it would not send",
    )
    add(
        "key-case-variant",
        [{"labels": labels("key-case-variant"), "StartsAt": _iso(far)}],
        NEITHER,
        "Go matches JSON keys case-insensitively: a future startsAt, refused",
    )
    add(
        "duplicate-label-sets",
        [{"labels": labels("duplicate-label-sets")}, {"labels": labels("duplicate-label-sets")}],
        STRICTER,
        "one alert to Alertmanager; alertq refuses the ambiguity",
    )
    add(
        "partial-batch",
        [{"labels": labels("partial-batch")}, {"labels": {}}],
        NEITHER,
        "Alertmanager stores the valid alert and still answers 400",
    )
    add("batch-256", [{"labels": labels("batch-256", i=str(i))} for i in range(256)], BOTH)
    add(
        "batch-257",
        [{"labels": labels("batch-257", i=str(i))} for i in range(257)],
        STRICTER,
        "alertq's batch limit (Prometheus sends at most 256)",
    )
    add(
        "body-over-1mb",
        [{"labels": labels("body-over-1mb", v="x" * 1_100_000)}],
        STRICTER,
        "alertq's MAX_PAYLOAD_BYTES",
    )
    return cases
