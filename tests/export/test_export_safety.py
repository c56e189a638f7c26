"""Where tal-export writes and what it replaces (issue 11 item 3), file modes under the umask,
checkpoint refusals, -h, and tal-demo's data reuse (item 11)."""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import stat
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from tal_export import bundle, export_bundle
from tal_export.cli import main as export_main
from tal_infer.errors import TalError
from tal_train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from tal_train.data.cli import main as data_main

from tiny_models import randomized_model, stand_in_graphs, write_checkpoint


@pytest.fixture(scope="module")
def model():
    return randomized_model(seed=2)


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("run_name, folder", [("../../victim", "victim"),
                                              ("{victim}", "{victim_name}"),
                                              ("a b/../c", "a-b-..-c"), ("..", "model")])
def test_run_names_become_one_folder_under_the_export_root(tmp_path, monkeypatch, model,
                                                            run_name, folder):
    victim = tmp_path / "home" / "victim"
    victim.mkdir(parents=True)
    (victim / "my_notes.txt").write_text("keep me")
    run_name = run_name.format(victim=victim)
    folder = folder.format(victim_name=str(victim).strip("/").replace("/", "-"))
    work = tmp_path / "home" / "work" / "here"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setattr(bundle, "_write_graphs", stand_in_graphs)
    ckpt = write_checkpoint(tmp_path / "ckpt.pth", model, run_name=run_name)
    out = export_bundle(ckpt, verify=False, progress=False)
    assert out == Path("export") / folder and (work / out / "manifest.json").is_file()
    assert json.loads((out / "manifest.json").read_text())["run_name"] == folder
    assert _tree(victim) == {"my_notes.txt": b"keep me"}
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["victim", "work"]
    assert [p.name for p in work.iterdir()] == ["export"]


def test_out_folders_that_are_not_bundles_are_refused(tmp_path, model, monkeypatch):
    monkeypatch.setattr(bundle, "_write_graphs", stand_in_graphs)
    ckpt = write_checkpoint(tmp_path / "ckpt.pth", model)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "my_notes.txt").write_text("keep me")
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep me too")
    earlier = export_bundle(ckpt, tmp_path / "bundle", verify=False, progress=False)
    (earlier / "my_notes.txt").write_text("inside a bundle")  # not listed by its manifest
    link = tmp_path / "link"
    link.symlink_to(notes)
    before = _tree(tmp_path)
    for target, words in [(notes, "not empty and is not an export bundle"),
                          (a_file, "exists and is not a folder"),
                          (earlier, "holds 'my_notes.txt', which its manifest does not list"),
                          (link, "exists and is not a folder")]:
        result = CliRunner().invoke(export_main, [str(ckpt), "--out", str(target), "--quiet",
                                                  "--no-verify"])
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
        assert result.output.startswith("error: ") and words in result.output
    assert _tree(tmp_path) == before  # nothing written, nothing deleted


def test_an_earlier_bundle_is_swapped_out_and_an_empty_folder_taken(tmp_path, model,
                                                                    monkeypatch):
    monkeypatch.setattr(bundle, "_write_graphs", stand_in_graphs)
    ckpt = write_checkpoint(tmp_path / "ckpt.pth", model)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_bundle(ckpt, empty, verify=False, progress=False) == empty
    out = export_bundle(ckpt, tmp_path / "bundle", verify=False, progress=False)
    (out / "extractor.onnx").write_bytes(b"old graph")
    export_bundle(ckpt, out, verify=False, progress=False)
    assert (out / "extractor.onnx").read_bytes() == b"graph"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "ckpt.pth", "empty"]


@pytest.mark.parametrize("atomic", [True, False])
def test_folder_exchange(tmp_path, monkeypatch, atomic):
    new, old = tmp_path / ".b.partial-1", tmp_path / "b"
    for folder, text in ((new, "new"), (old, "old")):
        folder.mkdir()
        (folder / "manifest.json").write_text(text)
    if not atomic:  # where renameat2(RENAME_EXCHANGE) is missing: two renames
        monkeypatch.setattr(bundle, "_swap_atomically", lambda a, b: False)
    bundle._exchange(new, old)
    assert (old / "manifest.json").read_text() == "new"
    assert (new / "manifest.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.partial-1", "b"]


@pytest.mark.slow
def test_bundles_checkpoints_and_run_files_follow_the_umask(tmp_path):
    from tal_train.hooks import write_json

    # One stream at one scale: file modes do not depend on the model, and its graph exports in
    # half the time of the full tiny model (4 s instead of 9.5 s CPU).
    model = randomized_model(seed=2, streams=("ds",), scales=("res4",))
    with _umask(0o027):
        ckpt = write_checkpoint(tmp_path / "ckpt.pth", model)
        write_json(tmp_path / "metrics.json", [{"epoch": 1}])
        out = export_bundle(ckpt, tmp_path / "export" / "b", verify=False, progress=False)
    assert _mode(ckpt) == _mode(tmp_path / "metrics.json") == 0o640  # mkstemp gave 0600
    assert _mode(out) == _mode(tmp_path / "export") == 0o750         # mkdtemp gave 0700
    assert {p.name: _mode(p) for p in out.iterdir()} == {
        name: 0o640 for name in ("extractor.onnx", "extractor.safetensors", "matcher.onnx",
                                 "matcher_trt.onnx", "heads.npz", "manifest.json")}


class _Plant:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_checkpoint_with_code_is_refused_without_advice_to_run_it(tmp_path, model):
    marker = tmp_path / "ran"
    path = tmp_path / "ckpt.pth"
    write_checkpoint(path, model)
    ckpt = torch.load(path, weights_only=True)
    ckpt["metrics"] = [_Plant(marker)]
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert "holds the Python object posix.mkdir" in message and "could run code" in message
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(pickle.dumps([1, 2, 3], protocol=2)[:-1] + b"\x99 damaged")
    with pytest.raises(CheckpointError, match="not a readable tal-reid checkpoint") as damaged:
        load_checkpoint(corrupt)
    for text in (message, str(damaged.value)):
        assert "weights_only" not in text and "\n" not in text
    result = CliRunner().invoke(export_main, [str(path), "--out", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 2 and result.output.startswith("error: ")
    assert result.output.count("\n") == 1 and "could run code" in result.output
    assert "weights_only" not in result.output and not marker.exists()


def test_save_checkpoint_replaces_atomically(tmp_path, model):
    path = save_checkpoint(tmp_path / "ckpt.pth", model_state={}, config={}, epoch=1,
                           run_name="r")
    with pytest.raises(Exception):  # a lambda cannot be pickled: the write fails midway
        save_checkpoint(path, model_state={"x": lambda: 0}, config={}, epoch=2, run_name="r")
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]  # no temporary left


@pytest.mark.parametrize("cli, args", [(export_main, ["-h"]), (data_main, ["-h"]),
                                       (data_main, ["synthesize", "-h"]),
                                       (data_main, ["stats", "-h"])])
def test_short_help_option(cli, args):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0 and result.output.startswith("Usage: ")
    assert "Examples:" in result.output


def test_demo_regenerates_data_made_with_other_options(tmp_path, capsys):
    from tal_export.demo import make_data

    folder = tmp_path / "data" / "synthetic"
    make_data(folder, identities=4, seed=0, progress=False)
    first = json.loads((folder / "synthesis.json").read_text())["config"]
    make_data(folder, identities=4, seed=0, progress=False)
    assert "reusing" in capsys.readouterr().out
    make_data(folder, identities=6, seed=0, progress=False)
    said = capsys.readouterr().out
    assert "generated with other options (identities 4 -> 6); regenerating" in said
    config = json.loads((folder / "synthesis.json").read_text())["config"]
    assert (first["identities"], config["identities"]) == (4, 6)
    train = folder / "domain-a" / "bounding_box_train"
    assert len({p.name.split("_")[0] for p in train.iterdir()}) == 3  # half of 6 identities


def test_folder_names():
    assert bundle.folder_name("/srv/data/run") == "srv-data-run"
    assert bundle.folder_name("../../x") == "x"
    assert bundle.folder_name("p2 market/ü") == "p2-market"
    assert bundle.folder_name("...") == "model"
    with pytest.raises(TalError):
        bundle._check_target(Path(__file__))
