"""Every random generator a test makes is seeded: one drawing from the operating system's
entropy gives another input on every run, so a failure cannot be reproduced (the global
generators are reseeded per test in conftest.py)."""
from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
UNSEEDED = {
    "numpy Generator without a seed": re.compile(r"default_rng\(\s*\)"),
    "numpy legacy seed from entropy": re.compile(r"np\.random\.seed\(\s*\)|RandomState\(\s*\)"),
    "random from entropy": re.compile(r"SystemRandom|\bRandom\(\s*\)|random\.seed\(\s*\)"),
    "torch Generator without manual_seed": re.compile(r"torch\.Generator\([^)]*\)(?!\.manual_seed)"),
}


def test_every_generator_in_the_tests_is_seeded():
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        if path == Path(__file__).resolve():
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            found += [f"{path.relative_to(TESTS)}:{number}: {what}: {line.strip()}"
                      for what, pattern in UNSEEDED.items() if pattern.search(line)]
    assert found == []
