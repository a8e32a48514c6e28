"""Issue 9, finding 2: request bodies are bounded by ALERTQ_MAX_REQUEST_BYTES and refused
before they are buffered, against a real ``alertq run`` process.

Split by test tier: these are the unit tests; see also
``tests/integration/test_security_body.py`` and ``tests/acceptance/test_security_body.py``.
"""

from __future__ import annotations

import json

from alertq.config import Settings

MIB = 1024 * 1024


def test_the_default_limit_fits_256_large_alerts() -> None:
    """256 alerts with 2 KiB of labels and 12 KiB of annotations each, as JSON."""
    alert = {
        "labels": {f"l{i}": "v" * 100 for i in range(20)},
        "annotations": {f"a{i}": "w" * 1000 for i in range(12)},
        "startsAt": "2026-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.example/graph?g0.expr=up",
    }
    body = json.dumps([alert] * 256).encode()
    limit = Settings(_env_file=None).max_request_bytes  # type: ignore[call-arg]
    assert len(body) < limit < 2 * len(body) + 1 * MIB
