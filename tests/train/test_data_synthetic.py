"""The synthetic camera network and video: determinism, Market-format output that the loaders
parse, disjoint identities, evaluable queries, viewpoint-dependent appearance, MOT files."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from tal_infer.errors import TalError
from tal_infer.naming import parse_market_name
from tal_train.data import build_dataset
from tal_train.data.synthetic import SyntheticConfig, VideoConfig, synthesize, synthesize_video
from tal_train.data.synthetic.person import draw_person, sample_person

TINY = SyntheticConfig(identities=6, domains=2, cameras=3, images_per_id=(3, 5), size=(48, 24),
                       distractors=2, junk=2)
TINY_VIDEO = VideoConfig(cameras=2, identities=3, frames=12, frame_size=(96, 128))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def network(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    synthesize(out, TINY, progress=False)
    return out


def test_same_seed_same_bytes_other_seed_differs(network, tmp_path):
    synthesize(tmp_path / "again", TINY, progress=False)
    synthesize(tmp_path / "other", dataclasses.replace(TINY, seed=1), progress=False)
    first, again, other = _files(network), _files(tmp_path / "again"), _files(tmp_path / "other")
    assert first == again
    shared = set(first) & set(other)
    assert not shared or any(first[k] != other[k] for k in shared)
    images = [k for k in first if k.endswith(".jpg")]
    assert sorted(images) != sorted(k for k in other if k.endswith(".jpg"))


def test_output_is_market_format_parsed_by_loader(network):
    for name in ("domain-a", "domain-b"):
        ds = build_dataset("custom", network / name)
        assert ds.name == name
        s = ds.summary()
        assert s["train"]["ids"] == 3 and s["query"]["ids"] == 3
        assert s["gallery"]["ids"] == 3 + 1  # test identities + distractor pid 0
        assert sum(r.pid == 0 for r in ds.gallery) == 2
        assert all(1 <= r.pid for r in ds.train + ds.query)
        assert {r.camid for r in ds.train + ds.query + ds.gallery} <= {0, 1, 2}
        assert all(r.timestamp is not None for r in ds.train)
        img = cv2.imread(ds.train[0].path)
        assert img.shape == (48, 24, 3)
        junk = list((network / name / "bounding_box_test").glob("-1_*.jpg"))
        assert len(junk) == 2  # written like Market-1501's junk, dropped by the loader
        n_per_id = {}
        for r in ds.train + ds.query + ds.gallery:
            n_per_id[r.pid] = n_per_id.get(r.pid, 0) + 1
        assert all(3 <= n <= 5 for pid, n in n_per_id.items() if pid != 0)


def test_identities_disjoint_across_domains(network):
    pids = [{r.pid for r in ds.train + ds.query + ds.gallery if r.pid > 0}
            for ds in (build_dataset("custom", network / n) for n in ("domain-a", "domain-b"))]
    assert pids[0] and pids[1] and not pids[0] & pids[1]
    assert pids[0] == set(range(1, 7)) and pids[1] == set(range(7, 13))


def test_every_query_has_a_match_in_another_camera(network):
    for name in ("domain-a", "domain-b"):
        ds = build_dataset("custom", network / name)
        gallery = {(r.pid, r.camid) for r in ds.gallery}
        for q in ds.query:
            assert any(pid == q.pid and cam != q.camid for pid, cam in gallery), q.path
        # Market: at most one query per identity and camera
        assert len({(q.pid, q.camid) for q in ds.query}) == len(ds.query)


def test_file_names_carry_camera_and_frame(network):
    for p in (network / "domain-a" / "bounding_box_train").iterdir():
        parsed = parse_market_name(p.name)
        assert parsed is not None and parsed.sequence == 1 and parsed.frame is not None


def test_refuses_existing_output_and_bad_config(network, tmp_path):
    with pytest.raises(TalError, match="not empty"):
        synthesize(network, TINY, progress=False)
    with pytest.raises(TalError, match="--images-per-id"):
        synthesize(tmp_path, dataclasses.replace(TINY, images_per_id=(2, 4)), progress=False)
    with pytest.raises(TalError, match="--cameras"):
        synthesize(tmp_path, dataclasses.replace(TINY, cameras=1), progress=False)


def test_overwrite_replaces_images(tmp_path):
    synthesize(tmp_path, TINY, progress=False)
    synthesize(tmp_path, dataclasses.replace(TINY, seed=3), overwrite=True, progress=False)
    fresh = tmp_path / "fresh"
    synthesize(fresh, dataclasses.replace(TINY, seed=3), progress=False)
    rel = lambda root: {k: v for k, v in _files(root).items() if k.startswith("domain-")}  # noqa: E731
    assert rel(tmp_path) == rel(fresh)


def _render(spec, view):
    img = np.full((128, 64, 3), 128, np.uint8)
    draw_person(img, spec, view, 0.3, 32, 8, 112)
    return img


def test_logo_only_from_the_front():
    spec = sample_person(np.random.default_rng(5))
    logo = dataclasses.replace(spec, pattern="logo", upper2=(0, 0, 255))
    solid = dataclasses.replace(spec, pattern="solid", upper2=(0, 0, 255))
    assert (_render(logo, "front") != _render(solid, "front")).any()
    for view in ("back", "left", "right"):
        assert np.array_equal(_render(logo, view), _render(solid, view))


def test_backpack_mostly_seen_from_the_back():
    spec = sample_person(np.random.default_rng(6))
    bare = dataclasses.replace(spec, carry="none")
    pack = dataclasses.replace(spec, carry="backpack", carry_color=(255, 0, 255))
    changed = {v: int((_render(pack, v) != _render(bare, v)).any(-1).sum())
               for v in ("front", "back", "left")}
    assert 0 < changed["front"] < changed["back"]  # straps vs the pack itself
    assert changed["left"] > 0


def test_draw_person_box_bounds_the_drawing():
    spec = sample_person(np.random.default_rng(7))
    for view in ("front", "back", "left", "right"):
        for phase in (0.0, math.pi / 2):
            img = np.zeros((240, 320, 3), np.uint8)
            x0, y0, x1, y1 = draw_person(img, spec, view, phase, 160, 40, 150)
            ys, xs = np.nonzero(img.any(-1))
            assert xs.min() >= math.floor(x0) - 1 and xs.max() <= math.ceil(x1) + 1
            assert ys.min() >= math.floor(y0) - 1 and ys.max() <= math.ceil(y1) + 1
            assert 140 <= y1 - y0 <= 155  # the person is about `height` tall


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("video")
    synthesize_video(out, TINY_VIDEO, progress=False)
    return out


def _rows(path: Path) -> list[list[float]]:
    return [[float(v) for v in line.split(",")] for line in path.read_text().splitlines()]


def test_video_mot_layout(video):
    ids = []
    for cam in ("cam1", "cam2"):
        frames = sorted((video / cam / "img1").glob("*.jpg"))
        assert [f.name for f in frames] == [f"{i:06d}.jpg" for i in range(1, 13)]
        assert cv2.imread(str(frames[0])).shape == (96, 128, 3)
        gt, det = _rows(video / cam / "gt" / "gt.txt"), _rows(video / cam / "det" / "det.txt")
        assert gt and det
        for f, i, left, top, w, h, *rest in gt:
            assert rest[:2] == [1, 1] and 0.3 <= rest[2] <= 1
            assert 1 <= f <= 12 and 1 <= i <= 3 and w > 0 and h > 0
            assert left >= 0 and top >= 0 and left + w <= 128.05 and top + h <= 96.05
        for row in det:
            assert len(row) == 10 and row[1] == -1 and row[7:] == [-1, -1, -1]
            assert 0 < row[6] <= 1 and 1 <= row[0] <= 12
        ids.append({int(r[1]) for r in gt})
        assert "seqLength=12" in (video / cam / "seqinfo.ini").read_text()
    assert ids[0] == ids[1] == {1, 2, 3}  # the same people walk through both cameras


def test_video_deterministic(video, tmp_path):
    synthesize_video(tmp_path, TINY_VIDEO, progress=False)
    assert _files(video) == _files(tmp_path)


def test_video_cameras_have_their_own_style(video):
    means = [np.mean([cv2.imread(str(p)).reshape(-1, 3).mean(0)
                      for p in sorted((video / cam / "img1").glob("*.jpg"))], axis=0)
             for cam in ("cam1", "cam2")]
    assert np.abs(means[0] - means[1]).max() > 5.0
