"""Every setting does what it says: each ``Settings`` field is read by the code, and
``ALERTQ_MAX_ATTEMPTS`` alone decides how often a row is tried.

Split by test tier: these are the unit tests; see also
``tests/acceptance/test_settings_wiring.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import ValidationError

import alertq
from alertq.config import Settings

SRC = Path(alertq.__file__).parent


def settings_reads() -> dict[str, set[str]]:
    """For each attribute read off something named ``*settings*`` (``settings.x``,
    ``self.settings.x``, ``get_settings().x``), the modules that read it. ``config.py``
    itself (where fields are declared and validated) does not count."""
    reads: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        if path.name == "config.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Attribute) or not isinstance(node.ctx, ast.Load):
                continue
            owner = ast.unparse(node.value).rsplit(".", 1)[-1]
            if "settings" in owner.lower():
                reads.setdefault(node.attr, set()).add(path.relative_to(SRC).as_posix())
    return reads


def settings_properties() -> dict[str, set[str]]:
    """For each ``@property`` or plain method of ``Settings``, the fields it reads
    (``self.x``): a field read only through one (``api_token`` through ``mutation_token``,
    ``concurrency`` through ``delivery_loops``) is read when it is. Validators do not count:
    checking a value is not using it."""
    tree = ast.parse((SRC / "config.py").read_text())
    settings = next(
        n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "Settings"
    )
    found: dict[str, set[str]] = {}
    for fn in settings.body:
        if isinstance(fn, ast.FunctionDef) and (
            not fn.decorator_list
            or any(isinstance(d, ast.Name) and d.id == "property" for d in fn.decorator_list)
        ):
            found[fn.name] = {
                node.attr
                for node in ast.walk(fn)
                if isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
            }
    return found


def test_every_settings_field_is_read_by_the_code() -> None:
    reads = settings_reads()
    for prop, fields in settings_properties().items():
        if prop in reads:
            for name in fields:
                reads.setdefault(name, set()).update(reads[prop])
    assert "database_url" in reads, "the scan finds settings reads at all"
    unread = sorted(name for name in Settings.model_fields if name not in reads)
    assert unread == [], f"Settings fields nothing in src/alertq reads: {unread}"


@pytest.mark.parametrize(
    ("env", "url", "dedicated", "loops"),
    [
        # Unset: a dedicated PostgreSQL worker runs a third loop; alertq run and SQLite two.
        (None, "postgresql+asyncpg://u@h/db", True, 3),
        (None, "postgresql+asyncpg://u@h/db", False, 2),
        (None, "sqlite+aiosqlite:///q.db", True, 2),
        (None, "sqlite+aiosqlite:///q.db", False, 2),
        # Set, it decides alone.
        ("1", "postgresql+asyncpg://u@h/db", True, 1),
        ("5", "sqlite+aiosqlite:///q.db", False, 5),
    ],
)
def test_alertq_concurrency_env_var_or_the_role_decides_the_delivery_loops(
    monkeypatch: pytest.MonkeyPatch, env: str | None, url: str, dedicated: bool, loops: int
) -> None:
    monkeypatch.setenv("ALERTQ_DATABASE_URL", url)
    if env is None:
        monkeypatch.delenv("ALERTQ_CONCURRENCY", raising=False)
    else:
        monkeypatch.setenv("ALERTQ_CONCURRENCY", env)
    assert Settings().delivery_loops(dedicated=dedicated) == loops


@pytest.mark.parametrize("value", ["0", "65", "two"])
def test_alertq_concurrency_out_of_bounds_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("ALERTQ_CONCURRENCY", value)
    with pytest.raises(ValidationError, match="concurrency"):
        Settings()
