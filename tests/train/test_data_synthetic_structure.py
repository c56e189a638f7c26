"""The structural domain shift of the synthetic camera network (``shift="structural"``): same
identities, cameras and file names as the photometric network, other pixels; domains spread over
pitch, alignment and occlusion; each structural effect checked on a known image."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from tal_infer.errors import TalError
from tal_train.data import build_dataset
from tal_train.data.synthetic import SyntheticConfig, synthesize
from tal_train.data.synthetic.person import BRIGHT, Fashion, sample_person
from tal_train.data.synthetic.structure import (ALIGNMENTS, apply_texture, draw_occluder,
                                                keystone, restyle_camera, sample_structures)
from tal_train.data.synthetic.style import sample_camera_style

TINY = SyntheticConfig(identities=6, domains=4, cameras=3, images_per_id=(3, 5), size=(48, 24),
                       distractors=2, junk=1, shift="structural")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


@pytest.fixture(scope="module")
def networks(tmp_path_factory) -> tuple[Path, Path]:
    structural = tmp_path_factory.mktemp("structural")
    photometric = tmp_path_factory.mktemp("photometric")
    synthesize(structural, TINY, progress=False)
    synthesize(photometric, dataclasses.replace(TINY, shift="photometric"), progress=False)
    return structural, photometric


def test_same_split_and_names_other_pixels_and_deterministic(networks, tmp_path):
    structural, photometric = networks
    a, b = _files(structural), _files(photometric)
    assert a.keys() == b.keys()  # identities, cameras, frames and splits are the same draws
    assert sum(a[k] != b[k] for k in a) > 0.9 * len(a)
    synthesize(tmp_path, TINY, progress=False)
    assert _files(tmp_path) == a
    ds = build_dataset("custom", structural / "domain-a")
    assert ds.summary()["query"]["ids"] == 3


def test_manifest_spreads_the_domains(networks):
    manifest = json.loads((networks[0] / "synthesis.json").read_text())
    structures = manifest["structures"]
    assert len(structures) == 4 and manifest["config"]["shift"] == "structural"
    pitch_bins = sorted(int((s["pitch"] + 0.15) / 0.6 * 4) for s in structures)
    assert pitch_bins == [0, 1, 2, 3]  # one domain per quarter of the pitch range
    assert len({tuple(s["top"]) for s in structures}) == len(ALIGNMENTS)
    assert len({round(s["occlusion"], 3) for s in structures}) == 4
    assert "structures" not in json.loads((networks[1] / "synthesis.json").read_text())
    with pytest.raises(TalError, match="--shift"):
        synthesize(networks[0] / "x", dataclasses.replace(TINY, shift="geometric"))


def test_keystone_magnifies_the_top_for_a_camera_above():
    img = np.zeros((64, 32, 3), np.uint8)
    img[2:6, 12:20] = 255   # a bar near the top
    img[58:62, 12:20] = 255  # one near the bottom
    width = lambda im, rows: int((im[rows, :, 0] > 128).any(0).sum())  # noqa: E731
    down = keystone(img, 0.4)
    assert width(down, slice(0, 10)) > 8 and width(down, slice(54, 64)) <= 8
    up = keystone(img, -0.4)
    assert width(up, slice(54, 64)) > 8 and width(up, slice(0, 10)) <= 8
    assert np.array_equal(keystone(img, 0.0), img)


def test_texture_touches_only_the_person_and_occluders_draw_something():
    rng = np.random.default_rng(0)
    img = np.full((40, 20, 3), 120, np.uint8)
    mask = np.zeros((40, 20), bool)
    mask[10:30, 5:15] = True
    for kind in ("grain", "speckle", "knit"):
        out = img.copy()
        apply_texture(out, mask, kind, 0.3, rng)
        assert np.array_equal(out[~mask], img[~mask]) and (out[mask] != 120).any()
    for kind in ("pole", "band", "box", "pedestrian"):
        out = img.copy()
        draw_occluder(out, kind, [(0, 0, 255)], rng,
                      lambda target, cx: target.__setitem__((slice(0, 40), int(cx) % 20), 7))
        assert (out != img).any(), kind


def test_domain_palette_and_view_prior_reach_people_and_cameras():
    upper = {sample_person(np.random.default_rng(i), Fashion(dark=0.0, bright=(3,))).upper
             for i in range(20)}
    b, g, r = (np.array(u) for u in zip(*upper))
    target = BRIGHT[3]  # RGB, jittered by at most ~25%
    assert np.all(np.abs(r - target[0]) <= 0.3 * target[0] + 2)
    assert np.all(np.abs(b - target[2]) <= 0.3 * target[2] + 2)
    structure = sample_structures(0, 4)[0]
    camera = restyle_camera(sample_camera_style(np.random.default_rng(1), 0), structure)
    assert sum(camera.views) == pytest.approx(1.0)
    assert np.argmax(camera.views) == np.argmax(np.asarray(structure.views)
                                                * np.asarray(sample_camera_style(
                                                    np.random.default_rng(1), 0).views))
    assert camera.shift == structure.shift
