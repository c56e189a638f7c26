"""The export parity check: the exported graphs in ONNX Runtime vs the PyTorch model.

On a set of person crops (a folder of real images, or a small generated set from
tal_train.data.synthetic), features come from ``extractor.onnx`` and from ``TALModel.extract``
(the unfolded model), scores from ``matcher.onnx`` on the ONNX features and from
``TALModel.match`` on the PyTorch features, every crop against every other crop. Reported:

* ``features`` / ``scores``: ``max_abs`` = max |onnx - torch|; ``max_rel`` = max_abs / max |torch|
  (relative to the scale of the values: element-wise ratios are meaningless near zero);
* ``top1_agreement``: fraction of crops whose best match (itself excluded) is the same;
  ``top10_agreement``: mean overlap of the two top-10 lists (top min(10, N-1)), as a fraction;
* ``top1_agreement_beyond_ties``: fraction of crops whose exported best match scores, in the
  PyTorch model, within ``tie_tolerance`` (TIE_REL x the largest PyTorch score) of the PyTorch
  best. **Why:** fp16 resolves scores to about 1e-3 of their scale, so two gallery crops whose
  fp32 scores differ by less are a tie at fp16 precision, and which of them comes first is
  noise, not a ranking change. Measured on the demo model (domain-d, 49 queries): one strict
  top-1 flip, between two crops 0.0025 apart on scores of about 15 (gap 2e-4 relative), and the
  same mAP to 0.01 points. With a few dozen crops one such near-tie is 2% of the queries.

* ``descriptor`` (bundles with the global descriptor): ``max_abs`` of the ONNX output against
  the distilled head run on the PyTorch model's maps (unit vectors, so absolute error).

Tolerances (the export fails past them) belong to the export's precision
(`tal_infer.precision`: ``Precision.parity``): fp32, scores ``max_rel < 1e-4``; fp16,
``top1_agreement_beyond_ties >= 0.99``; with the descriptor also ``Precision.descriptor_parity``
(``descriptor.max_abs`` below 1e-5 for fp32, 5e-3 for fp16).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from tal_infer.features import DESCRIPTOR
from tal_infer.errors import TalError
from tal_infer.features import matcher_input
from tal_infer.heads import GALLERY_BUDGET_BYTES
from tal_infer.images import list_images, read_image, resize_batch
from tal_infer.precision import Precision
from tal_train.models import TALModel

TIE_REL = 1e-3              # fp16 score resolution, relative to the score scale
GENERATED_IDENTITIES = 32   # x 3 images each: one flip is ~1% of the queries
MAX_FOLDER_IMAGES = 256


class ParityError(TalError):
    """The exported graphs disagree with the PyTorch model beyond tolerance."""


def generated_images(image_size: tuple[int, int]) -> tuple[np.ndarray, str]:
    """A few identities (3 crops each, two cameras) from the synthetic generator, BGR uint8."""
    from tal_train.data.synthetic import SyntheticConfig, synthesize

    config = SyntheticConfig(identities=GENERATED_IDENTITIES, domains=1, cameras=2,
                             images_per_id=(3, 3), size=tuple(image_size), distractors=0, junk=0)
    with tempfile.TemporaryDirectory(prefix="tal-parity-") as folder:
        synthesize(folder, config, progress=False)
        images = [read_image(p) for p in list_images(folder)]
    return resize_batch(images, *image_size), "generated"


def folder_images(folder: str | Path, image_size: tuple[int, int]) -> tuple[np.ndarray, str]:
    """Up to MAX_FOLDER_IMAGES crops of `folder` (sorted paths), resized as the runtime does."""
    paths = list_images(folder)[:MAX_FOLDER_IMAGES]
    if len(paths) < 2:
        raise TalError(f"{folder}: the parity check needs at least 2 images, found {len(paths)}")
    return resize_batch([read_image(p) for p in paths], *image_size), str(folder)


def reference_input(images: np.ndarray, mean: tuple, std: tuple,
                    device: str | torch.device = "cpu") -> torch.Tensor:
    """uint8 BGR [N, H, W, 3] -> the model's input: float RGB [N, 3, H, W], mean/std normalized,
    computed on `device` (the uint8 batch is what crosses to it)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).flip(-1)
    x = x.permute(0, 3, 1, 2).float() / 255
    mean, std = (torch.tensor(v, device=device)[:, None, None] for v in (mean, std))
    return (x - mean) / std


def run_extractor(session, images: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    """ONNX Runtime extractor outputs for `images`, in batches of `batch`."""
    names = [o.name for o in session.get_outputs()]
    parts = [session.run(names, {"images": images[i:i + batch]})
             for i in range(0, len(images), batch)]
    return {n: np.concatenate([p[j] for p in parts]) for j, n in enumerate(names)}


def run_matcher(session, query: dict[str, np.ndarray], gallery: dict[str, np.ndarray],
                budget_bytes: int = GALLERY_BUDGET_BYTES) -> np.ndarray:
    """matcher.onnx scores [Nq, Ng], over query chunks that keep its similarity maps
    (sum over inputs of K * nq * Ng * HW^2 fp32 values) within `budget_bytes`."""
    num_gallery = next(iter(gallery.values())).shape[0]
    per_query = max(4 * num_gallery * (x.shape[1] if x.ndim == 5 else 1) * (x.shape[-2] * x.shape[-1]) ** 2
                    for x in gallery.values())
    chunk = max(1, budget_bytes // per_query)
    num_query = next(iter(query.values())).shape[0]
    rows = []
    for start in range(0, num_query, chunk):
        feed = {matcher_input("query", k): v[start:start + chunk] for k, v in query.items()}
        feed.update({matcher_input("gallery", k): v for k, v in gallery.items()})
        rows.append(session.run(["scores"], feed)[0])
    return np.concatenate(rows)


def _errors(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    max_abs = max(float(np.abs(a.astype(np.float64) - b).max()) for a, b in pairs)
    scale = max(float(np.abs(b).max()) for _, b in pairs)
    return {"max_abs": max_abs, "max_rel": max_abs / max(scale, 1e-12)}


def ranking_agreement(scores: np.ndarray, reference: np.ndarray, k: int = 10) -> tuple[float, float]:
    """(top-1, top-k) agreement of all-vs-all rankings with each crop's own entry excluded."""
    n = scores.shape[0]
    k = min(k, n - 1)
    a, b = _ranked(scores)[:, :k], _ranked(reference)[:, :k]
    top1 = float(np.mean(a[:, 0] == b[:, 0]))
    topk = float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)]))
    return top1, topk


def top1_beyond_ties(scores: np.ndarray, reference: np.ndarray, tolerance: float) -> float:
    """Fraction of crops whose best match under `scores` is, under `reference`, within
    `tolerance` of the reference best (each crop's own entry excluded)."""
    rows = np.arange(scores.shape[0])
    best = reference[rows, _ranked(reference)[:, 0]]
    picked = reference[rows, _ranked(scores)[:, 0]]
    return float(np.mean(best - picked <= tolerance))


def _ranked(scores: np.ndarray) -> np.ndarray:
    mask = np.eye(scores.shape[0], dtype=bool)
    return np.argsort(-np.where(mask, -np.inf, scores), axis=1, kind="stable")


def parity_report(model: TALModel, extractor, matcher, images: np.ndarray, source: str,
                  batch: int, descriptor_head: torch.nn.Module | None = None) -> dict:
    """The manifest's ``parity`` section (without ``passed``) for ONNX Runtime sessions
    `extractor` and `matcher` against the eval-mode `model` (and its descriptor head)."""
    cfg = model.config
    onnx_feats = run_extractor(extractor, images, batch)
    ref_feats = {}
    for start in range(0, len(images), batch):
        part = model.extract(reference_input(images[start:start + batch], cfg.mean, cfg.std))
        for name, value in part.items():
            ref_feats.setdefault(name, []).append(value)
    ref_feats = {n: torch.cat(v) for n, v in ref_feats.items()}
    ref_scores = model.match(ref_feats, ref_feats).double().numpy()
    maps = {n: v for n, v in onnx_feats.items() if n != DESCRIPTOR}
    scores = run_matcher(matcher, maps, maps)
    top1, top10 = ranking_agreement(scores, ref_scores)
    tolerance = TIE_REL * float(np.abs(ref_scores).max())
    report = {"images": source, "count": int(len(images)),
              "features": _errors([(onnx_feats[n], ref_feats[n].double().numpy())
                                   for n in ref_feats]),
              "scores": _errors([(scores, ref_scores)]),
              "top1_agreement": top1, "top10_agreement": top10,
              "top1_agreement_beyond_ties": top1_beyond_ties(scores, ref_scores, tolerance),
              "tie_tolerance": tolerance}
    if descriptor_head is not None:
        with torch.no_grad():
            ref = descriptor_head(ref_feats).double().numpy()
        report["descriptor"] = _errors([(onnx_feats[DESCRIPTOR], ref)])
    return report


def judge(report: dict, precision: Precision) -> dict:
    """`report` with ``passed`` and ``criterion`` (``precision.parity``, and
    ``precision.descriptor_parity`` when the report has a descriptor) set; raises ParityError
    when it fails."""
    criteria = [precision.parity] + ([precision.descriptor_parity] if "descriptor" in report
                                     else [])
    passed = all(c.passed(report) for c in criteria)
    criterion = " and ".join(map(str, criteria))
    report = {**report, "criterion": criterion, "passed": passed}
    if not passed:
        raise ParityError(
            f"parity check failed ({precision.short_name}: needs {criterion}) on "
            f"{report['count']} {report['images']} images: scores max_rel "
            f"{report['scores']['max_rel']:.2e}, features max_abs "
            f"{report['features']['max_abs']:.2e}, top-1 agreement {report['top1_agreement']:.3f} "
            f"({report['top1_agreement_beyond_ties']:.3f} beyond ties of "
            f"{report['tie_tolerance']:.2g}){_descriptor_error(report)}; no bundle was "
            "written")
    return report


def _descriptor_error(report: dict) -> str:
    if "descriptor" not in report:
        return ""
    return f", descriptor max_abs {report['descriptor']['max_abs']:.2e}"
