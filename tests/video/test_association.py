"""Cross-camera association on a tiny synthetic network of tracklets (three people, two cameras,
one re-entry) recovers the ground-truth ids, offline and online; constraints hold; the open-set
threshold is the equal-error-rate point of a hand-checked case and travels beside the bundle."""
from __future__ import annotations

import json

import numpy as np
import pytest

from runtime_fixtures import write_crops
from tal_infer.errors import TalError
from tal_infer.features import DESCRIPTOR
from tal_infer.video.association import (OnlineAssociator, TransitionWindows, associate_offline,
                                         chain_allowed)
from tal_infer.video.calibration import (calibrate, default_path, equal_error_threshold,
                                         load_calibration, pseudo_tracklets, save_calibration)
from tal_infer.video.tracklets import TrackletFeatures, descriptor_scores, tracklet_scores

# (person, camera, start s, end s)
NETWORK = [(0, 0, 0, 2), (1, 0, 1, 3), (2, 0, 2, 4), (0, 1, 5, 7), (1, 1, 6, 8), (2, 1, 7, 9),
           (0, 0, 10, 12)]


def _tracklets(network=NETWORK, seed=0, noise=0.3):
    rng = np.random.default_rng(seed)
    base = np.eye(8, dtype=np.float32)
    out = []
    for i, (person, camera, start, end) in enumerate(network):
        v = base[person] + noise * rng.standard_normal((4, 8)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        out.append(TrackletFeatures(i, camera, float(start), float(end), {DESCRIPTOR: v}))
    return out


def _same_partition(ids, truth) -> bool:
    return all((ids[i] == ids[j]) == (truth[i] == truth[j])
               for i in range(len(ids)) for j in range(len(ids)))


def test_offline_recovers_ground_truth_ids():
    tracklets = _tracklets()
    scores = tracklet_scores(descriptor_scores, tracklets, tracklets)
    ids = associate_offline(tracklets, scores, threshold=0.5)
    assert _same_partition(ids, [p for p, *_ in NETWORK]) and sorted(set(ids)) == [0, 1, 2]


def test_online_recovers_ground_truth_ids_in_closing_order():
    tracklets = _tracklets()
    online = OnlineAssociator(descriptor_scores, threshold=0.5, horizon=20)
    ids = [online.assign(t) for t in sorted(tracklets, key=lambda t: t.end)]
    order = sorted(range(len(tracklets)), key=lambda i: tracklets[i].end)
    assert _same_partition(ids, [NETWORK[i][0] for i in order])


def test_open_set_threshold_makes_new_people():
    tracklets = _tracklets()
    scores = tracklet_scores(descriptor_scores, tracklets, tracklets)
    assert len(set(associate_offline(tracklets, scores, threshold=1.01))) == len(tracklets)


def test_same_camera_overlap_is_never_one_person():
    twins = _tracklets([(0, 0, 0, 5), (0, 0, 3, 8), (0, 1, 10, 12)], noise=0.0)
    scores = tracklet_scores(descriptor_scores, twins, twins)
    ids = associate_offline(twins, scores, threshold=0.5)
    assert ids[0] != ids[1] and len(set(ids)) == 2
    online = OnlineAssociator(descriptor_scores, threshold=0.5)
    online_ids = [online.assign(t) for t in twins]
    assert online_ids[0] != online_ids[1]


def test_transition_windows_check_consecutive_tracklets():
    # person 0: camera 0 (0-2 s), camera 1 (5-7 s), camera 2 (20-22 s)
    a, b, c = _tracklets([(0, 0, 0, 2), (0, 1, 5, 7), (0, 2, 20, 22)], noise=0.0)
    windows = TransitionWindows({(0, 1): (1.0, 4.0), (1, 2): (10.0, 15.0)})
    assert chain_allowed([c, a, b], windows)         # gaps 3 s and 13 s; 0 -> 2 not checked
    assert not chain_allowed([a, b], TransitionWindows({(1, 0): (0.0, 2.0)}))  # either order
    scores = tracklet_scores(descriptor_scores, [a, b, c], [a, b, c])
    assert len(set(associate_offline([a, b, c], scores, 0.5, windows))) == 1
    tight = TransitionWindows({(0, 1): (0.0, 1.0)})
    ids = associate_offline([a, b, c], scores, 0.5, tight)
    assert ids[0] != ids[1]


def test_equal_error_threshold_hand_case():
    # at 0.5: positives below = [0.4] -> 1/3; negatives at or above = [0.5] -> 1/4
    threshold, error = equal_error_threshold(np.array([0.9, 0.8, 0.4]),
                                             np.array([0.1, 0.2, 0.5, 0.3]))
    assert threshold == 0.5 and error == pytest.approx((1 / 3 + 1 / 4) / 2)


def test_calibration_is_written_beside_the_bundle_and_tied_to_it(engine, tmp_path):
    names = [f"{pid:04d}_c{cam}s1_{pid * 10 + j:06d}_00.jpg"
             for pid in (1, 2, 3, 4) for cam in (1, 2) for j in range(2)]
    write_crops(tmp_path / "train", names)
    cal = calibrate(engine, [tmp_path / "train"], sample_size=2)
    assert cal.pairs == {"positive": 4, "negative": 24}  # 8 pseudo-tracklets of 4 people
    assert set(cal.thresholds) == {"tal", "descriptor"}
    path = default_path(engine.bundle.path)
    assert path.parent == engine.bundle.path.resolve().parent
    save_calibration(cal, tmp_path / "cal.json")
    assert json.loads((tmp_path / "cal.json").read_text())["format"] == \
        "tal-reid-track-calibration"
    loaded = load_calibration(tmp_path / "cal.json", engine.bundle.fingerprint)
    assert loaded.threshold("tal") == cal.thresholds["tal"]
    with pytest.raises(TalError, match="calibrated for another model"):
        load_calibration(tmp_path / "cal.json", "0" * 64)
    with pytest.raises(TalError, match="tal-track calibrate"):
        load_calibration(tmp_path / "missing.json", engine.bundle.fingerprint)


def test_calibration_uses_a_bounded_number_of_whole_identities(tmp_path):
    # identity i has i % 3 + 1 cameras: 10 identities, 20 pseudo-tracklets
    names = [f"{pid:04d}_c{cam}s1_{pid * 10 + cam:06d}_00.jpg"
             for pid in range(1, 11) for cam in range(1, pid % 3 + 2)]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    groups, owners = pseudo_tracklets([tmp_path], sample_size=8, max_tracklets=7)
    assert 5 <= len(groups) <= 7                    # bounded, and filled up to the bound
    chosen = [int(paths[0].name[:4]) for paths in groups]    # identity of each group
    for pid in set(chosen):                                  # whole identities only
        assert chosen.count(pid) == pid % 3 + 1
    assert pseudo_tracklets([tmp_path], 8, 7) == (groups, owners)   # seeded
    assert len(pseudo_tracklets([tmp_path], 8)[0]) == 20            # all under the default
