"""`export_bundle`: checkpoint -> export bundle folder (docs/bundle.md, docs/export.md).

Steps: resolve the bundle's precision once (`tal_infer.precision`: float16 for ``fp16`` or
``trt``, else float32), which every later step takes; load and check the checkpoint; fold the
model in that precision (`tal_train.models.folded`), with the distilled global descriptor as
an extra output when the checkpoint has one (`tal-distill`); save the folded weights as
extractor.safetensors (data only: the torch backend rebuilds the network from the package's
own model code and the manifest's ``model_config``) and convert the folded network through
torch.export to extractor.onnx; build matcher.onnx / matcher_trt.onnx and heads.npz from the
projection form; run the parity check in ONNX Runtime (parity.py) with the precision's
criterion; optionally build TensorRT engines; write manifest.json (the shared schema,
`tal_infer.bundle_schema`) last.

Where it writes: ``--out``, or ``export/<run name>`` with the checkpoint's run name turned into
one plain folder name (a checkpoint is untrusted data: ``../x`` or ``/etc`` must not choose the
folder). An existing target is replaced only when it is empty or an earlier bundle holding
nothing its manifest does not list; a file, a symlink or a folder with other files is refused,
so a user's files are never deleted.

Atomicity: everything is written into a hidden sibling folder (``.<name>.partial-*``, modes
from the umask) that is renamed to the bundle folder only after the parity check passed and
the manifest was written; a failure at any step removes it. An earlier bundle is swapped out in
one step (Linux ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames) and then deleted.
"""
from __future__ import annotations

import ctypes
import dataclasses
import errno
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
from tqdm import tqdm

from tal_infer.atomic import make_sibling_dir
from tal_infer.bundle_schema import EXTRACTOR, HEADS, MANIFEST, MATCHER, MATCHER_TRT, WEIGHTS
from tal_infer.errors import TalError
from tal_infer.hashing import file_sha256
from tal_infer.precision import FLOAT16, FLOAT32, Precision
from tal_train.checkpoint import CheckpointError, load_checkpoint
from tal_train.distill import load_descriptor
from tal_train.models import TALConfig, TALModel, build_model
from tal_train.models.descriptor import DescriptorHead
from tal_train.models.folded import folded_extractor

from . import manifest as mf
from .extractor_export import export_program, onnx_graph, save_weights
from .matcher import build_matcher
from .parity import folder_images, generated_images, judge, parity_report

MIN_OPSET, MAX_OPSET = 17, 21
TRT_MAX_GALLERY = 1024
STEPS = ("load", "fold + weights", "extractor.onnx", "matchers", "parity", "tensorrt",
         "manifest")


def load_model(checkpoint: Path, image_size: tuple[int, int] | None = None) -> tuple[TALModel, dict]:
    """The eval-mode model of a checkpoint (optionally at another input size) and the checkpoint."""
    ckpt = load_checkpoint(checkpoint)
    try:
        config = TALConfig.from_dict(dict(ckpt["config"]))
    except (TalError, TypeError) as err:
        raise CheckpointError(f"{checkpoint}: its model config is not valid ({err})") from None
    model = build_model(config)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, AttributeError) as err:
        first = str(err).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else (first[0] if first else "")
        raise CheckpointError(f"{checkpoint}: the weights do not fit the model its config "
                              f"describes ({detail})") from None
    if image_size is not None and tuple(image_size) != config.image_size:
        model = _resized(model, tuple(image_size))
    return model.eval(), ckpt


def _resized(model: TALModel, image_size: tuple[int, int]) -> TALModel:
    """The same weights at another input size; only sizes that keep every feature map's h x w
    are possible, because the QAConv heads' weights are tied to the map locations."""
    config = dataclasses.replace(model.config, image_size=image_size)
    if config.scale_sizes() != model.config.scale_sizes():
        trained = "x".join(map(str, model.config.image_size))
        raise TalError(f"--image-size {image_size[0]}x{image_size[1]} gives feature maps "
                       f"{config.scale_sizes()} but the QAConv heads were trained for "
                       f"{model.config.scale_sizes()} (input {trained}); choose a size with the "
                       "same feature map sizes")
    resized = build_model(config)
    resized.load_state_dict(model.state_dict())
    return resized


def _check_options(opset: int, max_batch: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise TalError(f"--opset {opset} is not supported; choose {MIN_OPSET}..{MAX_OPSET}")
    if max_batch < 1:
        raise TalError(f"--max-batch must be at least 1, got {max_batch}")


def folder_name(run_name: str) -> str:
    """A checkpoint's run name as one plain folder name: runs of characters other than
    letters, digits, ``.``, ``_`` and ``-`` (path separators included) become ``-``; leading
    and trailing dots and dashes go, so ``/srv/x`` -> ``srv-x`` and ``../../x`` -> ``x``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", run_name).strip(".-")[:100] or "model"


def _check_target(out: Path) -> None:
    """Refuse a target that is not new, empty or an earlier bundle (see module doc)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise TalError(f"{out}: exists and is not a folder; refusing to replace it (choose "
                       "another --out)")
    entries = {p.name for p in out.iterdir()} if out.is_dir() else set()
    if entries and MANIFEST not in entries:
        raise TalError(f"{out}: folder exists, is not empty and is not an export bundle; "
                       "refusing to overwrite it (choose another --out)")
    foreign = sorted(entries - {MANIFEST} - _listed_files(out))
    if foreign:
        raise TalError(f"{out}: holds {foreign[0]!r}, which its manifest does not list; "
                       "refusing to replace the folder (move that file away or choose another "
                       "--out)")


def _listed_files(bundle: Path) -> set[str]:
    """Names the ``files`` section of an earlier bundle's manifest lists (none if unreadable)."""
    try:
        files = json.loads((bundle / MANIFEST).read_text(encoding="utf-8")).get("files")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return set()
    return {name for name in files if isinstance(name, str)} if isinstance(files, dict) \
        else set()


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder to `out` (absent or empty), or swap it with the earlier
    bundle there and delete that one."""
    try:
        os.replace(tmp, out)
        return
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    _exchange(tmp, out)
    shutil.rmtree(tmp, ignore_errors=True)


def _exchange(a: Path, b: Path) -> None:
    """Swap two folders: atomically where the OS can, else by two renames (then a reader can
    find ``b`` missing for a moment; a crash leaves the old bundle in ``a``)."""
    if _swap_atomically(a, b):
        return
    aside = make_sibling_dir(b, "old")
    os.replace(b, aside / b.name)
    os.replace(a, b)
    os.replace(aside / b.name, a)
    aside.rmdir()


def _swap_atomically(a: Path, b: Path) -> bool:
    """Linux ``renameat2(..., RENAME_EXCHANGE)``; False where the C library or the file system
    lacks it."""
    at_fdcwd, rename_exchange = -100, 2
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, TypeError, AttributeError):
        return False
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _save_onnx(model: onnx.ModelProto, path: Path) -> None:
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path))


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _write_graphs(model: TALModel, folder: Path, precision: Precision, opset: int,
                  max_batch: int, bar: tqdm, head: DescriptorHead | None = None) -> dict:
    """extractor.safetensors, extractor.onnx, matcher.onnx, matcher_trt.onnx in ``precision``,
    heads.npz; returns the projection form (manifest ``matching`` + heads arrays)."""
    size = model.config.image_size
    bar.set_postfix_str(STEPS[1])
    extractor = folded_extractor(model, head, precision)
    save_weights(extractor, folder / WEIGHTS)
    program = export_program(extractor, size, max_batch)
    bar.update()
    bar.set_postfix_str(STEPS[2])
    _save_onnx(onnx_graph(program, extractor.names, opset), folder / EXTRACTOR)
    bar.update()
    bar.set_postfix_str(STEPS[3])
    form = model.projection_form()
    features = {n: f.to_json() for n, f in mf.feature_sections(model).items()}
    _save_onnx(build_matcher(form, features, precision, opset), folder / MATCHER)
    # The custom domain has no schema in onnx, so the full (shape-inferring) check cannot run.
    trt_graph = build_matcher(form, features, precision, opset, custom_op=True)
    onnx.checker.check_model(trt_graph)
    onnx.save_model(trt_graph, str(folder / MATCHER_TRT))
    np.savez(folder / HEADS, **form["arrays"])
    bar.update()
    return form


def _parity(model: TALModel, folder: Path, precision: Precision, verify: bool,
            verify_images: str | os.PathLike | None, max_batch: int,
            head: DescriptorHead | None = None) -> dict:
    if not verify:
        return {"skipped": True, "passed": None}
    size = model.config.image_size
    images, source = (folder_images(verify_images, size) if verify_images is not None
                      else generated_images(size))
    report = parity_report(model, _session(folder / EXTRACTOR),
                           _session(folder / MATCHER), images, source, max_batch, head)
    return judge(report, precision)


def export_bundle(checkpoint: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                  fp16: bool = False, opset: int = 18, image_size: tuple[int, int] | None = None,
                  max_batch: int = 64, verify: bool = True,
                  verify_images: str | os.PathLike | None = None, trt: bool = False,
                  triton_repo: str | os.PathLike | None = None, ptx_isa: str | None = None,
                  progress: bool = True) -> Path:
    """Export a training checkpoint to a bundle folder (default ``export/<run-name>``) and
    return the folder. ``trt`` builds fp16 TensorRT engines and therefore implies ``fp16``;
    ``ptx_isa`` ("8.4") caps the plugin kernel's PTX ISA (default: this machine's driver).
    Raises TalError (CheckpointError, ParityError, ...) with one readable line on bad input."""
    checkpoint = Path(checkpoint)
    _check_options(opset, max_batch)
    if trt:
        from .tensorrt_build import check_trt_options

        check_trt_options(ptx_isa)  # fail before any work where TensorRT is absent
    precision = FLOAT16 if fp16 or trt else FLOAT32
    with tqdm(total=len(STEPS), desc="tal-export", unit="step", disable=not progress) as bar:
        bar.set_postfix_str(STEPS[0])
        model, ckpt = load_model(checkpoint, image_size)
        head = load_descriptor(ckpt, model)
        run_name = folder_name(str(ckpt.get("run_name") or checkpoint.stem))
        out = Path(out_dir) if out_dir is not None else Path("export") / run_name
        _check_target(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        bar.update()
        tmp = make_sibling_dir(out, "partial")
        try:
            form = _write_graphs(model, tmp, precision, opset, max_batch, bar, head)
            bar.set_postfix_str(STEPS[4])
            parity = _parity(model, tmp, precision, verify, verify_images, max_batch, head)
            bar.update()
            manifest = mf.build_manifest(
                config=model.config, run_name=run_name, checkpoint=checkpoint,
                checkpoint_sha256=file_sha256(checkpoint), epoch=int(ckpt["epoch"]),
                model=model, matching=form["matching"], precision=precision, opset=opset,
                parity=parity, descriptor=None if head is None else mf.descriptor_section(
                    head, ckpt["descriptor"].get("distillation", {})))
            if trt:
                bar.set_postfix_str(STEPS[5])
                from .tensorrt_build import build_engines

                manifest = dataclasses.replace(manifest, tensorrt=build_engines(
                    tmp, tmp / EXTRACTOR, tmp / MATCHER_TRT, manifest.to_json(), max_batch,
                    TRT_MAX_GALLERY, ptx_isa))
            bar.update()
            bar.set_postfix_str(STEPS[6])
            manifest = dataclasses.replace(manifest, files=mf.file_entries(tmp))
            mf.write_manifest(tmp, manifest)
            _move_into_place(tmp, out)
            bar.update()
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if triton_repo is not None:
        from .triton_repo import write_triton_repo

        write_triton_repo(Path(triton_repo), out, manifest.to_json(), max_batch)
    return out
