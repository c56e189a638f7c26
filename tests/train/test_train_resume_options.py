"""`tal-train ... --resume ckpt.pth`: the user's own command with --resume appended continues the
run; only real changes of fixed settings are refused, each named with its old and new value."""
from __future__ import annotations

import os

import pytest
import torch
from click.testing import CliRunner

from tal_infer.errors import TalError
from tal_train import engine
from tal_train.cli import main as cli_main
from tal_train.data.transforms import AUGMENTATIONS
from tal_train.engine import resume_options

from test_train_engine import data_root  # noqa: F401  (module-scoped fixture)


def command(data_root, out, *extra):  # noqa: F811
    return ["--protocol", "p2", "--target", "domain-c", "--data-root", str(data_root),
            "--preset", "tiny", "--image-size", "64x32", "--batch-size", "8", "--iters", "1",
            "--streams", "ds", "--scales", "res4", "--milestones", "1", "--lr", "0.005",
            "--out", str(out), "--quiet", *extra]


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):  # noqa: F811
    """One epoch trained through the CLI: (command, checkpoint)."""
    out = tmp_path_factory.mktemp("resume") / "run"
    args = command(data_root, out)
    res = CliRunner().invoke(cli_main, [*args, "--epochs", "1"])
    assert res.exit_code == 0, res.output
    return args, out / "ckpt.pth"


def test_the_same_command_with_resume_continues_the_run(trained):
    args, ckpt = trained
    res = CliRunner().invoke(cli_main, [*args, "--epochs", "1", "--resume", str(ckpt)])
    assert res.exit_code == 0 and "error" not in res.output, res.output  # nothing left to do
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    res = CliRunner().invoke(cli_main, [*args, "--epochs", "2", "--resume", str(ckpt)])
    assert res.exit_code == 0, res.output
    saved = torch.load(ckpt, weights_only=True)
    assert saved["epoch"] == 2 and saved["train_args"]["epochs"] == 2


def test_real_changes_are_refused_naming_old_and_new_values(trained, data_root):  # noqa: F811
    args, ckpt = trained
    before = ckpt.read_bytes()
    res = CliRunner().invoke(cli_main, [*args, "--resume", str(ckpt), "--epochs", "3",
                                        "--lr", "0.1", "--target", "domain-b",
                                        "--streams", "ds,di"])
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)  # no traceback
    lines = [l for l in res.output.splitlines() if l.startswith("error:")]
    assert lines == ["error: --resume continues a run with its own settings; cannot change "
                     "--lr 0.005 -> 0.1, --streams ds -> ds,di, --target domain-c -> domain-b "
                     "(only --epochs, --eval-every, --out, --device, --workers may change)"]
    assert ckpt.read_bytes() == before  # nothing trained


def test_equal_values_in_any_spelling_are_accepted(trained, data_root):  # noqa: F811
    _, ckpt = trained
    stored = torch.load(ckpt, weights_only=True)["train_args"]
    options = resume_options(ckpt, epochs=5, streams=("ds",), scales=["res4"],
                             data_root=os.path.join(str(data_root), "."),
                             batch_size=8, milestones=[1], mining=stored["mining"],
                             run_name=stored["run_name"], image_size=(64, 32))
    assert options.epochs == 5 and options.resume == str(ckpt)
    assert options.streams == ["ds"] and options.lr == stored["lr"]
    with pytest.raises(TalError, match=r"cannot change --image-size 64x32 -> 128x64 "
                                       r"\(only --epochs"):
        resume_options(ckpt, image_size=[128, 64])
    with pytest.raises(TalError, match=r"--pretrained \(default\) -> none"):
        resume_options(ckpt, pretrained="none")


@pytest.mark.parametrize("chosen_by", [["--recipe", "qaconv-gs"], ["--augment", "qaconv"]])
def test_resume_keeps_the_qaconv_augmentation(data_root, tmp_path, monkeypatch,  # noqa: F811
                                              chosen_by):
    """The official augmentation, from the recipe or chosen explicitly on the tiny preset
    (whose default is the standard set), is what the resumed epochs train with."""
    used = []
    real = engine.TrainImages
    monkeypatch.setattr(engine, "TrainImages", lambda *a, **kw: (
        used.append(kw["augment"]), real(*a, **kw))[1])
    out = tmp_path / "run"
    res = CliRunner().invoke(cli_main, [*command(data_root, out, *chosen_by), "--epochs", "1"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli_main, ["--resume", str(out / "ckpt.pth"), "--epochs", "2",
                                        "--quiet"])  # as the README resumes: nothing else
    assert res.exit_code == 0, res.output
    assert used == [AUGMENTATIONS["qaconv"]] * 2  # the first run, then the resumed one
    saved = torch.load(out / "ckpt.pth", weights_only=True)
    assert saved["epoch"] == 2 and saved["train_args"]["augment"] == "qaconv"
