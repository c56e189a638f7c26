"""Descriptor distillation: the head learns to shortlist what the frozen TAL model ranks first,
leaves the model untouched, and round-trips through the checkpoint."""
from __future__ import annotations

import os

import pytest
import torch
from click.testing import CliRunner

from tal_export.distill_cli import main as distill_cli
from tal_infer.images import list_images
from tal_train import distill
from tal_train.checkpoint import load_checkpoint, save_checkpoint
from tal_train.data.synthetic import SyntheticConfig, synthesize
from tal_train.distill import (DistillOptions, _item_shapes, _teacher_block, add_descriptor,
                               distill_descriptor, load_descriptor, shortlist_recall)
from tal_train.models import TALConfig, build_model
from tal_train.models.descriptor import DescriptorHead


def test_shortlist_recall_counts_the_teachers_top_inside_the_shortlist():
    scores = torch.tensor([[0., 5., 4., 1.], [5., 0., 1., 4.], [4., 1., 0., 5.], [1., 4., 5., 0.]])
    # descriptors putting item 0 nearest to 3, item 1 nearest to 3, 2 to 1, 3 to 2
    d = torch.nn.functional.normalize(torch.tensor([[1., 0.1], [0.1, 1.], [0.8, 0.9],
                                                    [0.5, 0.9]]), dim=1)
    sim = d @ d.T
    sim.fill_diagonal_(-9)
    listed = sim.argmax(dim=1).tolist()
    best = [1, 0, 3, 2]  # each row's top by score
    want = sum(b == l for b, l in zip(best, listed)) / 4
    assert shortlist_recall(d, scores, shortlist=1, top=1) == pytest.approx(want)
    assert shortlist_recall(d, scores, shortlist=3, top=3) == 1.0  # everything listed


@pytest.fixture(scope="module")
def distill_setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distill")
    synthesize(folder / "train", SyntheticConfig(identities=24, domains=2, cameras=2,
                                                 images_per_id=(4, 5), distractors=0, junk=0,
                                                 seed=11), progress=False)
    synthesize(folder / "test", SyntheticConfig(identities=16, domains=1, cameras=2,
                                                images_per_id=(4, 5), distractors=0, junk=0,
                                                seed=12), progress=False)
    torch.manual_seed(0)
    config = TALConfig.preset("tiny", domains=("a", "b"), image_size=(64, 32))
    model = build_model(config).eval()
    with torch.no_grad():  # non-trivial experts and heads
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 2.0)
    return model, list_images(folder / "train"), list_images(folder / "test")


def test_distilled_head_shortlists_the_teachers_top_better_than_an_untrained_one(distill_setup):
    model, train, test = distill_setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    options = DistillOptions(dim=32, blocks=6, block_size=64, steps_per_block=25, batch_size=64,
                             holdout_shortlist=8)
    head, report = distill_descriptor(model, train, options)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # frozen
    assert report["images"] == len(train) and report["holdout_images"] == 64
    assert 0.0 < report["holdout_recall"]["recall"] <= 1.0

    maps, teacher = _teacher_block(model, test, "cpu")  # crops of an unseen domain
    torch.manual_seed(options.seed)
    untrained = DescriptorHead(_item_shapes(model), options.dim, options.reduced,
                               options.hidden).eval()
    with torch.no_grad():
        trained_recall = shortlist_recall(head(maps), teacher, shortlist=16)
        untrained_recall = shortlist_recall(untrained(maps), teacher, shortlist=16)
    # measured: 0.74 against 0.60 (top-10 of 74 unseen-domain crops inside the top 16)
    assert trained_recall > untrained_recall + 0.05, (trained_recall, untrained_recall)


def test_head_round_trips_through_the_checkpoint(distill_setup, tmp_path):
    model, _, _ = distill_setup
    ckpt = save_checkpoint(tmp_path / "ckpt.pth", model_state=model.state_dict(),
                           config=model.config.to_dict(), epoch=2, run_name="r")
    head = DescriptorHead(_item_shapes(model), dim=24, reduced=8, hidden=32)
    add_descriptor(ckpt, head, {"note": "x"})
    loaded = load_checkpoint(ckpt)  # weights_only: plain containers and tensors only
    assert loaded["descriptor"]["distillation"] == {"note": "x"} and loaded["epoch"] == 2
    again = load_descriptor(loaded, model)
    for key, value in head.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)
    gen = torch.Generator().manual_seed(0)
    maps = {k: torch.randn(3, *s, generator=gen) for k, s in _item_shapes(model).items()}
    torch.testing.assert_close(again(maps), head(maps))
    assert torch.allclose(again(maps).norm(dim=1), torch.ones(3))


class _BlockLog:
    """Records the crops of every teacher block (`_teacher_block` calls, in order: the
    training blocks, then the held-out block)."""

    def __init__(self, monkeypatch):
        self.blocks: list[list[str]] = []
        real = distill._teacher_block

        def teacher_block(model, paths, device):
            self.blocks.append([str(p) for p in paths])
            return real(model, paths, device)

        monkeypatch.setattr(distill, "_teacher_block", teacher_block)


def test_held_out_crops_never_reach_training(distill_setup, monkeypatch):
    model, train, _ = distill_setup
    log = _BlockLog(monkeypatch)
    options = DistillOptions(dim=8, reduced=4, hidden=16, blocks=3, block_size=48,
                             steps_per_block=1, batch_size=16)
    _, report = distill_descriptor(model, train, options)
    *trained, held_out = log.blocks
    assert len(trained) == 3 and all(len(b) == 48 for b in trained)
    assert len(held_out) == len(set(held_out)) == report["holdout_images"] == 48
    assert not set(held_out) & set().union(*trained)  # recall is measured on unseen crops
    assert set(held_out) | set().union(*trained) <= set(map(str, train))


def test_tal_distill_uses_the_block_size_it_is_given(distill_setup, monkeypatch, tmp_path):
    model, train, _ = distill_setup
    ckpt = save_checkpoint(tmp_path / "ckpt.pth", model_state=model.state_dict(),
                           config=model.config.to_dict(), epoch=1, run_name="r")
    log = _BlockLog(monkeypatch)
    res = CliRunner().invoke(distill_cli, [str(ckpt), "--images", os.path.commonpath(train),
                                           "--block-size", "40", "--blocks", "2",
                                           "--steps-per-block", "1", "--dim", "8",
                                           "--device", "cpu", "--quiet"])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert [len(b) for b in log.blocks] == [40, 40, 40]  # two training blocks, the held-out one
    assert "descriptor top-20 of 40 crops" in res.output, res.output
    stored = load_checkpoint(ckpt)["descriptor"]["distillation"]
    assert stored["options"]["block_size"] == 40 and stored["holdout_images"] == 40
