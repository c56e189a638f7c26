"""The open-set threshold: when is a tracklet a new person? Calibrated on training data.

Training images in the Market-1501 layout (identity and camera in each name) stand in for
tracklets: the images of one identity in one camera form one pseudo-tracklet (its first
``sample_size`` images by name, as a tracklet's crop sample), and every two pseudo-tracklets
are scored as `tracklet_scores` scores real ones. Pairs of the same identity in different
cameras are the positives, pairs of different identities the negatives (identities of
different folders are different people). The threshold is the **equal error rate** point:
the score at which the share of positives below it equals the share of negatives at or above
it, a rule that does not depend on how many people a network has. Every pair is scored, so
the cost grows with the square of the pseudo-tracklets: at most ``max_tracklets`` (default
400, at most 3,200 crops) are used, whole identities drawn at random (seeded) so each keeps
all its cameras.

The result is written as a small JSON file beside the bundle (``<bundle>.track-calibration.json``,
never inside it: the bundle's files are hashed in its manifest), tied to the bundle by its
fingerprint; `load_calibration` refuses one written for another model. One threshold per
scoring function (``tal`` and, for bundles with the global descriptor, ``descriptor``).
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..atomic import atomic_file
from ..errors import DataError, TalError
from ..features import DESCRIPTOR, num_items
from ..images import list_images
from ..naming import parse_market_name
from ..user_files import UserFileError, read_regular
from .tracklets import (DEFAULT_AGGREGATE, DEFAULT_SAMPLE, TrackletFeatures, descriptor_scores,
                        tracklet_scores)

FORMAT = "tal-reid-track-calibration"
SUFFIX = ".track-calibration.json"
MAX_TRACKLETS = 400


@dataclass
class Calibration:
    fingerprint: str
    aggregate: str
    sample_size: int
    thresholds: dict[str, float]
    equal_error_rate: dict[str, float]
    pairs: dict[str, int]
    images: list[str]

    def threshold(self, scoring: str) -> float:
        if scoring not in self.thresholds:
            raise TalError(f"the calibration has no threshold for {scoring!r} scores (it has "
                           f"{', '.join(sorted(self.thresholds))})")
        return self.thresholds[scoring]


def default_path(bundle_path: str | os.PathLike) -> Path:
    """Where the calibration of a bundle lives: beside its folder."""
    path = Path(bundle_path).resolve()
    return path.with_name(path.name + SUFFIX)


def equal_error_threshold(positive: np.ndarray, negative: np.ndarray) -> tuple[float, float]:
    """(threshold, error rate) where the positives' miss rate (< threshold) meets the
    negatives' false-accept rate (>= threshold)."""
    if not len(positive) or not len(negative):
        raise DataError("calibration needs identities seen by two cameras and at least two "
                        "identities")
    candidates = np.unique(np.concatenate([positive, negative]))
    pos, neg = np.sort(positive), np.sort(negative)
    miss = np.searchsorted(pos, candidates, side="left") / len(pos)
    false_accept = 1 - np.searchsorted(neg, candidates, side="left") / len(neg)
    best = int(np.argmin(np.abs(miss - false_accept)))
    return float(candidates[best]), float((miss[best] + false_accept[best]) / 2)


def pseudo_tracklets(folders: Sequence[str | os.PathLike], sample_size: int,
                     max_tracklets: int = MAX_TRACKLETS, seed: int = 0
                     ) -> tuple[list[list[Path]], list[tuple[int, int]]]:
    """(image paths per pseudo-tracklet, (person, camera) of each): at most ``max_tracklets``,
    from whole identities drawn at random."""
    groups: dict[tuple[int, int, int], list[Path]] = {}
    for f, folder in enumerate(folders):
        for path in list_images(folder):
            name = parse_market_name(path.name)
            if name is not None and name.pid > 0:
                groups.setdefault((f, name.pid, name.camid), []).append(path)
    cameras = Counter(key[:2] for key in groups)  # pseudo-tracklets per identity
    identities, chosen, count = sorted(cameras), set(), 0
    for i in np.random.default_rng(seed).permutation(len(identities)):
        identity = identities[i]
        if count + cameras[identity] <= max_tracklets:
            chosen.add(identity)
            count += cameras[identity]
    groups = {k: v for k, v in groups.items() if k[:2] in chosen}
    people = {key[:2]: i for i, key in enumerate(sorted({k[:2] for k in groups}))}
    keys = sorted(groups)
    return [groups[k][:sample_size] for k in keys], [(people[k[:2]], k[2]) for k in keys]


def calibrate(engine: Any, folders: Sequence[str | os.PathLike],
              sample_size: int = DEFAULT_SAMPLE, aggregate: str = DEFAULT_AGGREGATE,
              max_tracklets: int = MAX_TRACKLETS) -> Calibration:
    """Thresholds for ``engine``'s bundle from Market-layout image folders (module doc)."""
    groups, owners = pseudo_tracklets(folders, sample_size, max_tracklets)
    embedded = engine.embed_files([p for g in groups for p in g], desc="calibrating")
    tracklets, start = [], 0
    for (person, camera), paths in zip(owners, groups):
        rows = np.arange(start, start + len(paths))
        start += len(paths)
        tracklets.append(TrackletFeatures((person, camera), camera, 0.0, 0.0,
                                          {k: v[rows] for k, v in embedded.features.items()}))
    person = np.array([o[0] for o in owners])
    camera = np.array([o[1] for o in owners])
    upper = np.triu(np.ones((len(owners), len(owners)), dtype=bool), 1)
    pos = upper & (person[:, None] == person[None]) & (camera[:, None] != camera[None])
    neg = upper & (person[:, None] != person[None])
    scorings = {"tal": engine.scores}
    if DESCRIPTOR in embedded.features and num_items(embedded.features):
        scorings["descriptor"] = descriptor_scores
    thresholds, errors = {}, {}
    for name, fn in scorings.items():
        scores = tracklet_scores(fn, tracklets, tracklets, aggregate)
        scores = (scores + scores.T) / 2
        thresholds[name], errors[name] = equal_error_threshold(scores[pos], scores[neg])
    return Calibration(engine.bundle.fingerprint, aggregate, sample_size, thresholds, errors,
                       {"positive": int(pos.sum()), "negative": int(neg.sum())},
                       [str(Path(f).resolve()) for f in folders])


def save_calibration(calibration: Calibration, path: str | os.PathLike) -> None:
    with atomic_file(path, "w") as f:
        json.dump({"format": FORMAT, "format_version": 1, **asdict(calibration)}, f, indent=1)


def load_calibration(path: str | os.PathLike, fingerprint: str) -> Calibration:
    """The calibration in ``path`` for the bundle with ``fingerprint``; `TalError` otherwise."""
    try:
        raw = json.loads(read_regular(path, 1024 * 1024))
        if raw.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file")
        cal = Calibration(**{k: raw[k] for k in Calibration.__dataclass_fields__})
    except UserFileError as err:
        raise TalError(f"{err} (write it with: tal-track calibrate)") from None
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise TalError(f"{path}: not a usable calibration file ({err})") from None
    if cal.fingerprint != fingerprint:
        raise TalError(f"{path}: calibrated for another model (fingerprint "
                       f"{cal.fingerprint[:12]}, the bundle's is {fingerprint[:12]}); run "
                       "tal-track calibrate again")
    return cal
