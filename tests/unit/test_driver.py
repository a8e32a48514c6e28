"""The driver's contract, run against SQLite and a real PostgreSQL (the ``db_url`` fixture).

Split by test tier: these are the unit tests; see also ``tests/integration/test_driver.py``.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import inspect

import alertq.driver
from alertq import AlertDriver


def test_driver_module_imports_only_sqlalchemy_stdlib_and_models() -> None:
    import pkgutil
    import sys

    modules = [alertq.driver] + [
        importlib.import_module(m.name)
        for m in pkgutil.walk_packages(alertq.driver.__path__, "alertq.driver.")
    ]
    assert len(modules) >= 4, "the walk found the package's modules"
    for module in modules:
        tree = ast.parse(inspect.getsource(module))
        roots: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                roots.add(node.module)
        for name in roots:
            top = name.split(".")[0]
            ok = (
                top in sys.stdlib_module_names
                or top == "sqlalchemy"
                or top == "orjson"  # a JSON codec, as the stdlib's json is
                or name == "alertq.models"
                or name.startswith("alertq.driver")
            )
            assert ok, f"{module.__name__} imports {name}"


def test_driver_exposes_the_seed_contract() -> None:
    seed = {
        "fetch_pending_alerts": ["now", "batch_size"],
        "fetch_queue_stats": [],
        "update_alert_sent": ["alert", "sent_at"],
        "update_alert_retry": ["alert", "last_attempt_at", "next_attempt_at", "last_error"],
        "update_alert_failed": ["alert", "last_attempt_at", "last_error"],
        "mark_incident_alert_sent": ["incident_id", "sent_at"],
        "insert_alert": ["payload", "alert_type", "circuit_breaker_name", "incident_id"],
        "retry_failed_alerts": ["max_retries", "now"],
        "purge_old_alerts": ["cutoff", "statuses"],
    }
    for name, params in seed.items():
        sig = inspect.signature(getattr(AlertDriver, name))
        positional = [
            p.name
            for p in sig.parameters.values()
            if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and p.name != "self"
        ]
        assert positional[: len(params)] == params, name
        assert asyncio.iscoroutinefunction(getattr(AlertDriver, name))
