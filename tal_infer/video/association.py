"""Cross-camera association: per-camera tracklets linked into global identities.

Two tracklets are the same person when their tracklet score (`tracklets.tracklet_scores`) is
high and nothing rules it out:

- **hard constraint**: two tracklets of one camera that overlap in time are different people;
- **transition windows** (optional, `TransitionWindows`): for a camera pair, the seconds from
  the end of a person's tracklet in one camera to the start of the next (negative where fields
  of view overlap) must lie in ``[low, high]``. They are checked between the *consecutive*
  tracklets of an identity (a person goes 1 -> 2 -> 3; the 1 -> 3 gap is not a transition);
- **open set**: an identity is joined only at a score of at least ``threshold``; below it the
  tracklet is a new person. The threshold is calibrated on training data
  (`tal_infer.video.calibration`).

`associate_offline` links all tracklets at once: agglomerative clustering with average linkage
(the score of two identities is the mean score of their tracklet pairs), merging the best pair
first while it reaches the threshold and breaks no constraint. `OnlineAssociator` gives each
tracklet, as it closes, a global id at once: the best identity seen within ``horizon`` seconds
(average score over the identity's last ``keep`` tracklets, constraints checked against them),
or a new one; the work per tracklet is bounded by the identities in the horizon x ``keep`` x
the crop sample squared.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from ..errors import TalError
from .tracklets import (DEFAULT_AGGREGATE, ScoreFn, TrackletFeatures, tracklet_scores)


@dataclass(frozen=True)
class TransitionWindows:
    """Allowed transition times ``{(camera a, camera b): (low, high)}`` in seconds, a -> b
    (unordered: a window for (a, b) also holds for b -> a); pairs without one are free."""
    windows: dict[tuple[int, int], tuple[float, float]] = field(default_factory=dict)

    def allows(self, earlier: TrackletFeatures, later: TrackletFeatures) -> bool:
        window = (self.windows.get((earlier.camera, later.camera))
                  or self.windows.get((later.camera, earlier.camera)))
        if window is None:
            return True
        gap = later.start - earlier.end
        return window[0] <= gap <= window[1]

    def __bool__(self) -> bool:
        return bool(self.windows)


def conflicts(a: TrackletFeatures, b: TrackletFeatures) -> bool:
    """The hard constraint: same camera, overlapping in time."""
    return a.camera == b.camera and a.overlaps(b)


def chain_allowed(members: Iterable[TrackletFeatures], windows: TransitionWindows) -> bool:
    """Every consecutive pair (by start time) of an identity's tracklets passes the windows."""
    ordered = sorted(members, key=lambda t: (t.start, t.end))
    return all(windows.allows(a, b) for a, b in zip(ordered, ordered[1:]))


def associate_offline(tracklets: Sequence[TrackletFeatures], scores: np.ndarray,
                      threshold: float, windows: TransitionWindows = TransitionWindows()
                      ) -> list[int]:
    """Global id (0, 1, ...) per tracklet from the ``[n, n]`` tracklet score matrix
    (symmetrized here): constrained average-linkage clustering stopped at ``threshold``."""
    n = len(tracklets)
    if scores.shape != (n, n):
        raise TalError(f"associate_offline: scores {scores.shape} for {n} tracklets")
    sim = (scores.astype(np.float64) + scores.T) / 2
    blocked = np.array([[conflicts(a, b) for b in tracklets] for a in tracklets],
                       dtype=bool).reshape(n, n)
    np.fill_diagonal(blocked, True)
    size = np.ones(n)
    alive = np.ones(n, dtype=bool)
    members: list[list[int]] = [[i] for i in range(n)]
    while True:
        masked = np.where(blocked | ~alive[:, None] | ~alive[None, :], -np.inf, sim)
        a, b = np.unravel_index(int(np.argmax(masked)), masked.shape)
        if not np.isfinite(masked[a, b]) or masked[a, b] < threshold:
            break
        if windows and not chain_allowed([tracklets[i] for i in members[a] + members[b]],
                                         windows):
            blocked[a, b] = blocked[b, a] = True
            continue
        # Lance-Williams update for average linkage: a absorbs b.
        sim[a] = sim[:, a] = (size[a] * sim[a] + size[b] * sim[b]) / (size[a] + size[b])
        blocked[a] = blocked[:, a] = blocked[a] | blocked[b]
        size[a] += size[b]
        members[a] += members[b]
        alive[b] = False
        blocked[a, a] = True
    ids = np.empty(len(tracklets), np.int64)
    for gid, root in enumerate(sorted((r for r in np.flatnonzero(alive)),
                                      key=lambda r: min(members[r]))):
        ids[members[root]] = gid
    return ids.tolist()


@dataclass
class _Identity:
    gid: int
    members: list[TrackletFeatures]
    last_end: float


class OnlineAssociator:
    """Global ids for tracklets as they close (module doc); ``assign`` returns the id."""

    def __init__(self, score_fn: ScoreFn, threshold: float,
                 windows: TransitionWindows = TransitionWindows(),
                 horizon: float | None = None, keep: int = 4,
                 aggregate: str = DEFAULT_AGGREGATE):
        self.score_fn, self.threshold, self.windows = score_fn, threshold, windows
        self.horizon, self.keep, self.aggregate = horizon, keep, aggregate
        self.identities: list[_Identity] = []

    def assign(self, tracklet: TrackletFeatures) -> int:
        pool = [ident for ident in self.identities
                if self.horizon is None or ident.last_end >= tracklet.start - self.horizon]
        # Tracklets arrive in closing order, so an identity's last `keep` are the ones that can
        # overlap the new tracklet or precede it in a chain.
        pool = [ident for ident in pool
                if not any(conflicts(tracklet, m) for m in ident.members[-self.keep:])
                and (not self.windows
                     or chain_allowed([*ident.members[-self.keep:], tracklet], self.windows))]
        best, best_score = None, -np.inf
        if pool:
            recent = [ident.members[-self.keep:] for ident in pool]
            flat = [m for ms in recent for m in ms]
            row = tracklet_scores(self.score_fn, [tracklet], flat, self.aggregate)[0]
            start = 0
            for ident, ms in zip(pool, recent):
                score = float(row[start:start + len(ms)].mean())
                start += len(ms)
                if score > best_score:
                    best, best_score = ident, score
        if best is None or best_score < self.threshold:
            best = _Identity(len(self.identities), [], -np.inf)
            self.identities.append(best)
        best.members.append(tracklet)
        best.last_end = max(best.last_end, tracklet.end)
        return best.gid
