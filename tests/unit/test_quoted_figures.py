"""Counts the docs quote that the code decides: a drifted figure fails here.

(The exhaustive test checks the sequence count docs/testing.md quotes, and
the distilabel comparison the counts of docs/distilabel-compat.md; both need
their own long runs, so they check it where they compute it.)
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MUTANTS = ROOT / "tests" / "property" / "mutants"


def _flat(path: Path) -> str:
    return " ".join(path.read_text(encoding="utf-8").split())


def test_the_number_of_mutants_is_the_one_quoted() -> None:
    count = len(list(MUTANTS.glob("*.patch")))
    assert count > 0
    assert f"{count} hand-made mutants" in _flat(ROOT / "tests" / "property" / "MUTANTS.md"), (
        f"tests/property/MUTANTS.md should say {count} hand-made mutants"
    )
    testing = _flat(ROOT / "docs" / "testing.md")
    assert re.findall(r"(\d+) hand-made mutants", testing) == [str(count)], (
        f"docs/testing.md should say {count} hand-made mutants"
    )
    readme = _flat(ROOT / "README.md")
    quoted = re.findall(r"(\d+) mutants", readme)
    assert quoted, "README.md no longer quotes the number of mutants"
    assert all(int(n) == count for n in quoted), f"README.md says {quoted}; there are {count}"
