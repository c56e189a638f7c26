"""Training recipes (``--recipe tal|qaconv-gs``), the loss / augmentation / DABN-reading
switches, and the paper preset's ImageNet-weights rule: an error when they cannot be loaded,
one warning with ``--pretrained none``."""
from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch
from click.testing import CliRunner

from tal_infer.errors import TalError
from tal_train import engine
from tal_train.checkpoint import save_checkpoint
from tal_train.cli import main as cli_main
from tal_train.engine import train
from tal_train.options import TrainOptions, model_config, resolve_options, resume_options
from tal_train.epoch_plan import BatchPlanner
from tal_train.models.backbones import PretrainedWeights
from test_train_engine import _options, data_root  # noqa: F401 - the engine tests' data

DOMAINS = ("domain-a", "domain-b")


def test_recipe_model_switches_and_explicit_options_win():
    official = model_config(TrainOptions(preset="paper", recipe="qaconv-gs"), DOMAINS)
    assert (official.streams, official.di_norm, official.scales, official.neck_channels) == (
        ("di",), "bn", ("res4",), 64)
    assert (official.backbone, official.image_size) == ("resnet50_ibn_b", (384, 128))
    mine = model_config(TrainOptions(preset="paper", recipe="qaconv-gs", scales=["res5"]),
                        DOMAINS)
    assert mine.scales == ("res5",) and mine.neck_channels == 64
    tal = model_config(TrainOptions(preset="paper"), DOMAINS)
    assert (tal.streams, tal.scales, tal.neck_channels, tal.dabn_stats) == (
        ("ds", "di"), ("res4", "res5"), 128, "experts")
    assert model_config(TrainOptions(preset="tiny", dabn_stats="own"), DOMAINS).dabn_stats == "own"


@pytest.mark.parametrize("recipe, preset, want", [
    ("qaconv-gs", "tiny", (15, 0.001, "pairwise", "qaconv", [10])),
    ("tal", "paper", (30, 0.005, "triplet", "qaconv", [20])),
    ("tal", "tiny", (30, 0.005, "triplet", "standard", [20])),
])
def test_recipe_training_defaults(recipe, preset, want):
    resolved = resolve_options(TrainOptions(target="t", recipe=recipe, preset=preset))
    assert (resolved.epochs, resolved.lr, resolved.loss, resolved.augment,
            resolved.milestones) == want
    given = resolve_options(TrainOptions(target="t", recipe=recipe, preset=preset, epochs=9,
                                         lr=0.02, loss="triplet", augment="none"))
    assert (given.epochs, given.lr, given.loss, given.augment, given.milestones) == (
        9, 0.02, "triplet", "none", [6])
    with pytest.raises(TalError, match="unknown recipe"):
        resolve_options(TrainOptions(target="t", recipe="fast"))


def test_qaconv_gs_recipe_trains_end_to_end(data_root, tmp_path, monkeypatch):
    samplers = []
    plan = BatchPlanner.plan
    monkeypatch.setattr(BatchPlanner, "plan", lambda self, *a, **kw: (
        samplers.append(kw.get("sampler") or self.sampler), plan(self, *a, **kw))[1])
    result = train(_options(data_root, tmp_path / "qaconv", recipe="qaconv-gs", epochs=2,
                            iters=1))
    assert samplers == ["pk", "gs"]  # v2.0: one epoch of random PK batches, then the graph sampler
    assert all(set(step) == {"hybrid_di", "total"} for step in result.losses)
    assert all(step["total"] > 0 for step in result.losses)
    ckpt = torch.load(result.checkpoint, weights_only=True)
    args, config = ckpt["train_args"], ckpt["config"]
    assert (args["recipe"], args["loss"], args["augment"], args["lr"]) == (
        "qaconv-gs", "pairwise", "qaconv", 0.001)
    assert (config["streams"], config["scales"], config["neck_channels"]) == (["di"], ["res4"], 64)
    assert all(g["nesterov"] for g in ckpt["optimizer"]["param_groups"])
    assert set(result.metrics[-1]["domain-c"]) == {"tal", "di"}


def test_dabn_own_run_records_diagnostics_and_per_query_metrics(data_root, tmp_path):
    result = train(_options(data_root, tmp_path / "own", dabn_stats="own", eval_every=1))
    entry = json.loads((result.out / "metrics.json").read_text())[-1]
    diag = entry["diagnostics"]
    stages = {"res2", "res3", "res4", "res5", "neck_res4", "neck_res5"}
    assert set(diag["expert_divergence"]) == stages == set(diag["di_offset"])
    assert all(v >= 0 for v in diag["expert_divergence"].values())
    target = diag["domain-c"]
    assert set(target["dabn_attention"]) == stages
    assert all(0 <= s["entropy"] <= 1 and s["spread"] >= 0 for s in target["dabn_attention"].values())
    assert set(target["msda_attention"]) == {"res4", "res5"}
    assert -1 <= target["ds_di_correlation"] <= 1 and 0 <= target["ds_di_top1_agreement"] <= 1
    per_query = json.loads((result.out / "per_query.json").read_text())
    assert per_query["epoch"] == 1
    for part, m in entry["domain-c"].items():
        q = per_query["targets"]["domain-c"][part]
        assert len(q["ap"]) == len(q["top1"]) == len(q["query"]) > 0
        assert 100 * sum(q["ap"]) / len(q["ap"]) == pytest.approx(m["mAP"], abs=0.006)
        assert 100 * sum(q["top1"]) / len(q["top1"]) == pytest.approx(m["top1"], abs=0.006)
    assert torch.load(result.checkpoint, weights_only=True)["config"]["dabn_stats"] == "own"


def _missing_weights(monkeypatch, tmp_path):
    """The backbone's published weights cannot be fetched (nothing listens on the discard port)."""
    real = engine.backbone_spec
    offline = PretrainedWeights("http://127.0.0.1:9/none.pth", "none.pth", None)
    monkeypatch.setattr(engine, "backbone_spec",
                        lambda name: dataclasses.replace(real(name), weights=offline))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def test_paper_preset_without_weights_is_an_error(data_root, tmp_path, monkeypatch):
    _missing_weights(monkeypatch, tmp_path)
    with pytest.raises(TalError, match="--pretrained none"):
        train(_options(data_root, tmp_path / "paper", preset="paper"))
    res = CliRunner().invoke(cli_main, ["--target", "domain-c", "--data-root", str(data_root),
                                        "--image-size", "64x32", "--epochs", "1", "--quiet",
                                        "--out", str(tmp_path / "cli")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "error:" in res.output and "--pretrained none" in res.output


def test_paper_preset_with_pretrained_none_warns_once(data_root, tmp_path, monkeypatch, caplog):
    _missing_weights(monkeypatch, tmp_path)
    options = resolve_options(_options(data_root, tmp_path / "p", preset="paper", pretrained="none"))
    protocol = engine._protocol(options)
    with caplog.at_level(logging.WARNING, logger="tal_train.engine"):
        run = engine._prepare(options, protocol, torch.device("cpu"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "random initialization" in warnings[0]
    assert "batch-all" in warnings[0] and run.options.mining == "all"


def test_resume_of_a_run_from_before_augment_keeps_the_standard_set(data_root, tmp_path):
    old_args = resolve_options(_options(data_root, tmp_path / "old")).to_dict()
    del old_args["augment"], old_args["recipe"], old_args["loss"]  # written before they existed
    path = save_checkpoint(tmp_path / "old.pth", model_state={}, config={}, epoch=1,
                           run_name="old", train_args=old_args)
    resumed = resolve_options(resume_options(path))
    assert (resumed.augment, resumed.recipe, resumed.loss) == ("standard", "tal", "triplet")
