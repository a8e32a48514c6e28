"""What the ``alertq`` commands print, and how they fail on bad input.

Shared by :mod:`alertq.cli` and :mod:`alertq.cli_managed`, so every command prints user data
the same way (never as markup, control characters escaped) and every bad argument is one
line on stderr and exit 2. The entry point (:func:`alertq.cli.main`) turns everything else
(an unreachable database, an unexpected error) into one line and exit 1.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

from alertq.config import Settings, UnsafeConfigFile
from alertq.logs import escape_control

T = TypeVar("T")

__all__ = [
    "PlainConsole",
    "checked",
    "console",
    "err",
    "fail",
    "load_settings",
    "say_error",
    "visible",
]


def visible(text: str) -> str:
    """``text`` with control, format (bidi override) and line-separator characters shown
    as escapes (``\\x1b``, ``\\n``, ``\\u202e``): the text logs' rule, so a reason or
    label can neither rewrite the operator's terminal nor show reversed text."""
    return escape_control(text)


class PlainConsole(Console):
    """A console that prints every string as it is: never markup, emoji codes or
    highlighting, and control characters escaped. Table cells, titles and captions are
    strings rendered through :meth:`render_str`, so this covers them too; styling is only
    ever applied with :class:`~rich.text.Text` objects built here."""

    def __init__(self, *, stderr: bool = False) -> None:
        super().__init__(stderr=stderr, markup=False, emoji=False, highlight=False)

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(visible(text), **kwargs)


def _plain_console(*, stderr: bool = False) -> Console:
    return PlainConsole(stderr=stderr)


console = _plain_console()
err = _plain_console(stderr=True)


def say_error(message: str) -> None:
    """One line on stderr, printed verbatim (control characters shown escaped)."""
    sys.stderr.write(f"alertq: {visible(message)}\n")
    sys.stderr.flush()


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``message`` as one line and exit ``code`` (2: bad input)."""
    say_error(message)
    raise typer.Exit(code)


def checked(flag: str, check: Callable[..., T], *args: Any) -> T:
    """``check(*args)`` (a :mod:`alertq.limits` rule); a ValueError exits 2 naming ``flag``."""
    try:
        return check(*args)
    except ValueError as exc:
        fail(f"invalid {flag}: {exc}")


def load_settings() -> Settings:
    """Settings from the environment, or exit 2 with pydantic's message."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        fail(f"invalid configuration: {problems}")
    except UnsafeConfigFile as exc:
        fail(f"invalid configuration: {exc}")
