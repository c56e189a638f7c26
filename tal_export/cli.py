"""tal-export: a training checkpoint -> an export bundle (thin wrapper around export_bundle)."""
from __future__ import annotations

from pathlib import Path

import click

from tal_infer import console
from tal_infer.cli_common import SizeType, friendly_errors, verbosity_options

EPILOG = """\b
Examples:
  tal-export runs/p2-market1501/ckpt.pth                  # -> export/p2-market1501/
  tal-export runs/demo/ckpt.pth --fp16 --out export/demo-fp16
  tal-export ckpt.pth --verify-images data/market1501/query
  tal-export ckpt.pth --trt --max-batch 128               # TensorRT engines (needs TensorRT 10)
  tal-export ckpt.pth --triton-repo /models               # + a Triton model repository
"""


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path),
              help="Bundle folder [default: export/<run-name>]. An existing folder is replaced "
                   "only if it is empty or an earlier bundle.")
@click.option("--fp16", is_flag=True, help="fp16 weights and activations where safe.")
@click.option("--opset", default=18, show_default=True, type=int, help="ONNX opset.")
@click.option("--image-size", type=SizeType(example="384x128"),
              help="Input size [default: the training size]; must give the same feature maps.")
@click.option("--max-batch", default=64, show_default=True, type=int,
              help="Largest extractor batch (TensorRT profile, Triton max_batch_size).")
@click.option("--trt", is_flag=True, help="Also build TensorRT engines (fp16; implies --fp16).")
@click.option("--ptx-isa", metavar="X.Y",
              help="With --trt: newest PTX ISA the plugin kernel may use, for servers with older "
                   "drivers (e.g. 8.4 for CUDA 12.4) [default: what this machine's driver "
                   "supports].")
@click.option("--triton-repo", type=click.Path(file_okay=False, path_type=Path),
              help="Also write the extractor and matcher into this Triton model repository.")
@click.option("--verify-images", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of person crops for the parity check [default: generated crops].")
@click.option("--no-verify", is_flag=True, help="Skip the parity check (not recommended).")
@verbosity_options
@friendly_errors
def main(checkpoint: Path, out_dir: Path | None, fp16: bool, opset: int,
         image_size: tuple[int, int] | None, max_batch: int, trt: bool, ptx_isa: str | None,
         triton_repo: Path | None, verify_images: Path | None, no_verify: bool) -> None:
    """Fold a TAL checkpoint into an export bundle: extractor.onnx, matcher.onnx,
    matcher_trt.onnx, heads.npz, extractor.safetensors and manifest.json with the parity report
    (ONNX Runtime vs PyTorch). The export fails, leaving no bundle, when the parity check fails.
    """
    from . import export_bundle

    if no_verify and verify_images is not None:
        raise click.UsageError("--verify-images and --no-verify contradict each other")
    if ptx_isa is not None and not trt:
        raise click.UsageError("--ptx-isa applies to the TensorRT engines: add --trt")
    out = export_bundle(checkpoint, out_dir, fp16=fp16, opset=opset, image_size=image_size,
                        max_batch=max_batch, verify=not no_verify, verify_images=verify_images,
                        trt=trt, triton_repo=triton_repo, ptx_isa=ptx_isa,
                        progress=console.bars_enabled())
    click.echo(_summary(out))


def _summary(out: Path) -> str:
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    parity = manifest["parity"]
    if parity.get("skipped"):
        check = "parity check skipped"
    else:
        check = (f"parity on {parity['count']} {parity['images']} images: scores max_rel "
                 f"{parity['scores']['max_rel']:.1e}, top-1 agreement "
                 f"{parity['top1_agreement']:.3f}")
        if manifest["dtype"] == "float16":
            check += f" ({parity['top1_agreement_beyond_ties']:.3f} beyond fp16 ties)"
    return f"bundle written to {out} ({manifest['dtype']}; {check})"
