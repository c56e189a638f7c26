"""The training engine end to end on a small synthetic camera network: protocol domains,
graph-sampler plans, checkpoint round trip, resume equivalence, the CLI and a 2-process DDP run."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tal_train.cli import main as cli_main
from tal_train.data import build_protocol
from tal_train.data.synthetic import SyntheticConfig, synthesize
from tal_train.engine import train
from tal_train.options import TrainOptions, model_config, resume_options
from tal_train.epoch_plan import BatchPlanner
from tal_train.models import TALConfig, build_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    synthesize(root, SyntheticConfig(identities=8, domains=3, cameras=2, images_per_id=(3, 4),
                                     size=(64, 32), distractors=2, junk=1), progress=False)
    return root


def _options(data_root: Path, out: Path, **changes) -> TrainOptions:
    base = TrainOptions(protocol="p2", data_root=str(data_root), target="domain-c",
                        preset="tiny", image_size=[64, 32], batch_size=8, epochs=1, iters=2,
                        out=str(out), progress=False)
    return dataclasses.replace(base, **changes)


def test_protocol_domains_reach_the_model_and_the_plan(data_root):
    p2 = build_protocol("p2", data_root, target="domain-c")
    assert p2.domains == ["domain-a", "domain-b"] and list(p2.targets) == ["domain-c"]
    p1 = build_protocol("p1", data_root, source="domain-a")
    assert p1.domains == ["domain-a-c1", "domain-a-c2"]
    assert set(p1.targets) == {"domain-b", "domain-c"}
    assert all(r.domain == r.camid for r in p1.train)
    for protocol in (p1, p2):
        options = TrainOptions(preset="tiny", image_size=[64, 32])
        model = build_model(model_config(options, protocol.domains))
        assert list(model.config.domains) == protocol.domains
        planner = BatchPlanner(protocol.train, protocol.domains, model.training_phases(),
                               "gs", batch_ids=2, instances=4)
        plan = planner.plan(model, np.random.default_rng(0), torch.device("cpu"))
        assert len(plan.domain_batches) == protocol.num_domains
        for d, batches in enumerate(plan.domain_batches):
            ids = {r.label for r in protocol.train if r.domain == d}
            assert set(planner.domain_images[d]) == ids
            assert len(batches) == len(ids)  # graph sampler: one batch per identity
            assert all(protocol.train[i].domain == d for b in batches for i in b)
        assert len(plan.hybrid_batches) == protocol.num_ids
        assert {protocol.train[i].label for b in plan.hybrid_batches for i in b} == set(
            planner.hybrid_images)


def test_checkpoint_round_trip(data_root, tmp_path):
    result = train(_options(data_root, tmp_path / "run", eval_every=1))
    ckpt = torch.load(result.checkpoint, weights_only=True)  # plain containers only
    assert ckpt["format"] == "tal-reid-checkpoint" and ckpt["epoch"] == 1
    assert ckpt["run_name"] == "p2-domain-c"
    config = TALConfig.from_dict(ckpt["config"])
    assert config.domains == ("domain-a", "domain-b") and config.preset_name == "tiny"
    assert config.image_size == (64, 32) and ckpt["config"]["mean"] == list(config.mean)
    assert ckpt["optimizer"]["state"] and ckpt["scheduler"]["last_epoch"] == 1
    assert set(ckpt["rng"]) >= {"torch", "python"}
    # random-init backbone: batch-all mining and full lr on the backbone (tal_train.losses)
    assert ckpt["train_args"]["mining"] == "all" and ckpt["train_args"]["backbone_lr_mult"] == 1.0
    model = build_model(config)
    model.load_state_dict(ckpt["model"])
    metrics = json.loads((result.out / "metrics.json").read_text())
    assert metrics == ckpt["metrics"] == result.metrics
    entry = metrics[0]
    assert entry["epoch"] == 1 and set(entry) == {"epoch", "images_per_s", "domain-c",
                                                  "diagnostics"}
    assert set(entry["domain-c"]) == {"tal", "ds", "di"}
    for m in entry["domain-c"].values():
        assert set(m) == {"mAP", "top1", "top5", "top10"}
        assert 0 <= m["mAP"] <= 100 and m["top1"] <= m["top5"] <= m["top10"] <= 100
    assert (result.out / "curves.png").stat().st_size > 0
    log = json.loads((result.out / "train_log.json").read_text())
    assert entry["images_per_s"] == log[0]["images_per_s"] > 0  # the epoch's training speed
    assert log[0]["iterations"] == 2 and set(log[0]["loss"]) == {
        "domain0", "domain1", "hybrid_ds", "hybrid_di", "total"}


def test_resume_repeats_the_uninterrupted_loss_sequence(data_root, tmp_path):
    full = train(_options(data_root, tmp_path / "full", epochs=2, milestones=[1]))
    first = train(_options(data_root, tmp_path / "split", epochs=1, milestones=[1]))
    second = train(resume_options(first.checkpoint, epochs=2))
    assert len(full.losses) == 4 and len(first.losses) == len(second.losses) == 2
    for a, b in zip(full.losses, first.losses + second.losses):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-5), k
    resumed = torch.load(second.checkpoint, weights_only=True)
    reference = torch.load(full.checkpoint, weights_only=True)
    assert resumed["epoch"] == 2 and resumed["scheduler"]["last_epoch"] == 2
    for k, v in reference["model"].items():
        torch.testing.assert_close(resumed["model"][k], v, rtol=1e-4, atol=1e-5)
    assert [e["epoch"] for e in json.loads((second.out / "train_log.json").read_text())] == [1, 2]


def test_baseline_configuration_trains_the_di_stream_only(data_root, tmp_path):
    result = train(_options(data_root, tmp_path / "base", streams=["di"], di_norm="bn"))
    assert all(set(step) == {"hybrid_di", "total"} for step in result.losses)
    assert set(result.metrics[-1]["domain-c"]) == {"tal", "di"}


def test_cli_help_and_errors(data_root, tmp_path):
    runner = CliRunner()
    help_text = runner.invoke(cli_main, ["--help"]).output
    assert "Examples:" in help_text and "torchrun" in help_text and "--iters" in help_text
    res = runner.invoke(cli_main, ["--protocol", "p2", "--data-root", str(data_root)])
    assert res.exit_code != 0 and "needs a target dataset (--target)" in res.output
    res = runner.invoke(cli_main, ["--target", "nowhere", "--data-root", str(data_root)])
    assert res.exit_code != 0 and "nowhere" in res.output and "Traceback" not in res.output
    res = runner.invoke(cli_main, ["--resume", str(tmp_path / "missing.pth")])
    assert res.exit_code != 0 and "checkpoint not found" in res.output


def test_cli_trains_and_resume_refuses_changed_settings(data_root, tmp_path):
    out = tmp_path / "cli"
    args = ["--protocol", "p2", "--target", "domain-c", "--data-root", str(data_root),
            "--preset", "tiny", "--image-size", "64x32", "--batch-size", "8", "--epochs", "1",
            "--iters", "1", "--streams", "ds", "--scales", "res4", "--out", str(out), "--quiet"]
    res = CliRunner().invoke(cli_main, args)
    assert res.exit_code == 0, res.output
    assert "| domain-c | tal |" in res.output and (out / "ckpt.pth").is_file()
    config = torch.load(out / "ckpt.pth", weights_only=True)["config"]
    assert config["streams"] == ["ds"] and config["scales"] == ["res4"]
    res = CliRunner().invoke(cli_main, ["--resume", str(out / "ckpt.pth"), "--lr", "0.1"])
    assert res.exit_code != 0 and "cannot change --lr" in res.output


@pytest.mark.slow
def test_two_process_gloo_ddp_run(data_root, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tal_train", "--protocol", "p2", "--target", "domain-c",
           "--data-root", str(data_root), "--preset", "tiny", "--image-size", "64x32",
           "--batch-size", "8", "--epochs", "1", "--out", str(out), "--device", "cpu", "--quiet"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("| domain-c | tal |") == 1  # rank 0 alone evaluates and prints
    ckpt = torch.load(out / "ckpt.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and len(ckpt["metrics"]) == 1
    log = json.loads((out / "train_log.json").read_text())
    # 8 training identities, one graph-sampler batch each, split over 2 ranks
    assert log[0]["iterations"] == 4


def test_the_loop_runs_the_hooks_it_is_given_after_every_epoch(data_root, tmp_path):
    """The epoch's work after the iterations is a list of hooks (tal_train.hooks): given
    other hooks, the loop calls them in order with the epoch's state and writes nothing of
    its own."""
    from tal_train.hooks import EpochEnd

    calls = []

    class Recorder:
        def __init__(self, name):
            self.name = name

        def after_epoch(self, end: EpochEnd) -> None:
            calls.append((self.name, end.epoch, end.entry["iterations"], len(end.run.metrics)))

    out = tmp_path / "run"
    train(_options(data_root, out, epochs=2, iters=1), hooks=[Recorder("a"), Recorder("b")])
    assert calls == [("a", 1, 1, 0), ("b", 1, 1, 0), ("a", 2, 1, 0), ("b", 2, 1, 0)]
    assert not out.exists() or not any(out.iterdir())
