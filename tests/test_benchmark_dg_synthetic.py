"""benchmarks/dg_synthetic.py's machinery: a re-run resumes an interrupted run and skips a
finished one, a folder trained with other settings is refused, the tables and the Table 3
verdict are computed from per-query results, and --update-doc replaces only its block."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tal_infer.errors import TalError
from tal_train.data.synthetic import SyntheticConfig, synthesize
from tal_train.engine import train

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # the scripts, importable as they import each other
import dg_results as results  # noqa: E402
import dg_synthetic as dg  # noqa: E402


def _settings(root: Path, out: Path, **changes) -> "dg.Settings":
    base = dg.Settings(root=root, out=out, shift="structural", domains=3, identities=8,
                       cameras=2, size=(64, 32), targets=["domain-c"], seeds=[0],
                       methods=["baseline"], epochs=2, iters=1, batch_size=8, lr=0.005,
                       augment="standard", device="cpu", replicates=200)
    return dataclasses.replace(base, **changes)


def test_execute_resumes_skips_and_refuses_other_settings(tmp_path):
    root = tmp_path / "data"
    synthesize(root, SyntheticConfig(identities=8, domains=3, cameras=2, images_per_id=(3, 4),
                                     size=(64, 32), distractors=1, junk=0, shift="structural"),
               progress=False)
    s = _settings(root, tmp_path / "out")
    options = dg.run_options(s, "domain-c", "baseline", 0)
    folder = Path(options.out)
    folder.mkdir(parents=True)  # an interrupted run: one of its two epochs done
    (folder / "bench.json").write_text(json.dumps(
        {"signature": dg.signature(options), "seconds": 1.0, "cpu_seconds": 1.0}))
    train(dataclasses.replace(options, epochs=1))
    assert not results.finished(folder, 2)
    bench = dg.execute(options)
    assert bench["trained_now"] and results.finished(folder, 2) and bench["seconds"] > 1.0
    log = json.loads((folder / "train_log.json").read_text())
    assert [e["epoch"] for e in log] == [1, 2]
    again = dg.execute(options)
    assert "trained_now" not in again and again["seconds"] == bench["seconds"]
    with pytest.raises(TalError, match="other settings"):
        dg.execute(dataclasses.replace(options, iters=2))
    runs = results.collect(s)
    assert list(runs) == ["domain-c-baseline-0"] and runs["domain-c-baseline-0"]["metrics"]["tal"]


def _fake_runs(s, means: dict[tuple[str, str], float], queries: int = 300) -> dict:
    """Finished runs whose per-query AP is `mean` + noise for each (method, part)."""
    rng = np.random.default_rng(0)
    runs = {}
    for target in s.targets:
        for seed in s.seeds:
            for method in s.methods:
                parts = {part: {"query": list(range(queries)),
                                "ap": list(np.clip(mean + rng.normal(0, 0.02, queries), 0, 1)),
                                "top1": list((rng.random(queries) < mean).astype(int))}
                         for (m, part), mean in means.items() if m == method}
                runs[f"{target}-{method}-{seed}"] = {
                    "target": target, "method": method, "seed": seed, "seconds": 1.0,
                    "cpu_seconds": 1.0, "metrics": {}, "diagnostics": {}, "per_query": parts}
    return runs


def test_tables_paired_differences_and_the_table3_verdict(tmp_path):
    s = _settings(tmp_path, tmp_path, targets=["domain-c", "domain-d"], seeds=[0, 1, 2],
                  methods=["baseline", "qaconv-gs", "tal"])
    clear = {("baseline", "tal"): 0.30, ("qaconv-gs", "tal"): 0.32, ("tal", "ds"): 0.40,
             ("tal", "di"): 0.38, ("tal", "tal"): 0.45}
    text, numbers = results.results_tables(_fake_runs(s, clear), s)
    assert "**Table 3: streams.**" in text and "| DS + DI (TAL) | " in text
    assert "| DABN experts, DI part |" in text and "| BN, DI part |" not in text  # runs missing
    both = numbers["Table 3: streams | DS + DI (TAL)"]["all mAP"]
    assert both["low"] < 45.0 < both["high"] and both["high"] - both["low"] < 1.0
    assert numbers["paired | DS + DI - DS alone"]["low"] > 4.0
    assert "| DS + DI - DS alone |" in text and "| higher |" in text
    verdict = results.ordering_verdict(numbers)
    assert verdict.count("does not hold") == 0 and verdict.count("holds") == 2
    level = {**clear, ("tal", "tal"): 0.40}  # DS + DI no better than DS alone
    _, numbers = results.results_tables(_fake_runs(s, level), s)
    assert "DS + DI > max(DS, DI): does not hold" in results.ordering_verdict(numbers)


def test_update_doc_replaces_only_the_marked_block(tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text(f"# Results\nbefore\n{results.DOC_BEGIN}\nold tables\n{results.DOC_END}\nafter\n")
    results.update_doc(doc, "new tables")
    assert doc.read_text() == (f"# Results\nbefore\n{results.DOC_BEGIN}\nnew tables\n{results.DOC_END}"
                               "\nafter\n")
    doc.write_text("no markers")
    with pytest.raises(TalError, match="block"):
        results.update_doc(doc, "x")


def test_cli_refuses_unknown_methods_with_one_line(tmp_path):
    res = CliRunner().invoke(dg.main, ["--methods", "tal,magic", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "error:" in res.output and "magic" in res.output
    assert "Traceback" not in res.output
