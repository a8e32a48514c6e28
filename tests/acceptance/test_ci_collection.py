"""`make test` runs every collected test: pytest-xdist schedules by test id and would run a
group of tests that share one id once, passing in silence. The only such group may be the
one the Makefile deselects from the parallel run and runs alone after it."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_only_the_makefiles_serial_group_shares_a_test_id() -> None:
    makefile = (ROOT / "Makefile").read_text()
    found = re.search(r"^SCHEMATHESIS := (\S+)$", makefile, re.MULTILINE)
    assert found, "the Makefile names the group it runs alone"
    assert "--deselect $(SCHEMATHESIS)" in makefile and "$(BIN)/pytest $(SCHEMATHESIS)" in makefile
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    ).stdout
    ids = [line for line in collected.splitlines() if "::" in line]
    shared = sorted(i for i, n in Counter(ids).items() if n > 1)
    assert len(ids) > 1000, collected[-2000:]
    assert shared == [found.group(1)], shared
