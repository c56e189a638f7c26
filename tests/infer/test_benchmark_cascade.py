"""benchmarks/cascade.py end to end on a tiny generated gallery and the fake bundle: every M and
pre-rank width gets one row, recall is 1.0 where M covers the gallery, the last line has the
issue's format and names the configuration it reports, and a re-run reads the cached
exhaustive ranking."""
from __future__ import annotations

import re
import sys
from pathlib import Path

from click.testing import CliRunner

from optional_modules import require

require("faiss")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the scripts, importable as they import each other
import cascade  # noqa: E402

LAST = re.compile(r"^cascade: M=(\d+) recall@10=([\d.]+) mAP_exhaustive=([\d.]+) "
                  r"mAP_cascade=([\d.]+) speedup=(\d+)x$")


def _rows(output: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in output.splitlines()
            if line.startswith("| exact")]


def test_cascade_benchmark_runs_and_reports_each_configuration(fake_bundle_v2, tmp_path):
    args = ["--bundle", fake_bundle_v2, "--workdir", tmp_path, "--sizes", "200",
            "--candidates", "5,200", "--headline-m", "5", "--queries", "10",
            "--prerank", "0,auto,50", "--quiet"]
    first = CliRunner().invoke(cascade.main, [str(a) for a in args])
    assert first.exit_code == 0, first.output
    rows = _rows(first.output)
    # M = 5: none, auto (5% of 200 = 10 > 5), 50; M = 200: one row (no width above M)
    assert [(r[1], r[2]) for r in rows] == [("5", "-"), ("5", "10"), ("5", "50"), ("200", "-")]
    assert rows[-1][3] == "1.0000" and rows[-1][5] == rows[-1][6]  # M covers the gallery
    lines = first.output.strip().splitlines()
    assert lines[-2] == ("stage 1 of the last line: FAISS exact, the top 50 by descriptor "
                         "narrowed to 5 by the DI stream's score")
    got = LAST.match(lines[-1])
    assert got and got.group(1) == "5" and got.group(2) == rows[2][3]
    again = CliRunner().invoke(cascade.main, [str(a) for a in args])
    assert again.exit_code == 0, again.output
    when = re.findall(r"exhaustive measured ([\d: -]+)\)", first.output + again.output)
    assert len(when) == 2 and when[0] == when[1]  # the second run read the cached ranking
