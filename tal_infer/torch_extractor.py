"""The ``torch`` extractor backend: the folded network rebuilt from this package's own model
code, the bundle's ``model_config`` and its weights in extractor.safetensors (docs/bundle.md).

No code travels with a bundle, and no private torch format is read (as with Hugging Face /
timm hub weights): the network is the registered model (`tal_train.models`, folded by
`tal_train.models.folded` exactly as the export folded it, in the bundle's precision), built
on the ``meta`` device (no memory, no arithmetic), and the weights file is only data. The
safetensors header (names, dtypes, shapes) is compared with what the config implies before a
byte of weights is read, so a planted file can neither run code nor make the runtime allocate
more than the weights the config describes, bounded by the file's real size; the config itself
must agree with the manifest's input size, feature outputs and descriptor.

This is the one runtime module besides the training package that imports torch model code: the
runtime core (ONNX Runtime, TensorRT, numpy paths) never imports `tal_train`.

The network runs in the bundle's precision on every device, as the ONNX graph does (fp16
bundles hold fp16 weights; the parts `tal_infer.precision.FP32_PARTS` names stay fp32).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .bundle import Bundle
from .bundle_schema import WEIGHTS
from .errors import BundleError, TalError
from .precision import Precision


class TorchExtractor:
    """The folded extractor of a bundle (format version 3) on a torch device."""

    def __init__(self, bundle: Bundle, device: str, precision: Precision | None = None):
        try:
            import torch
            from safetensors import safe_open  # noqa: F401
        except ImportError as err:
            raise TalError(f"the torch backend needs torch and safetensors installed ({err})"
                           ) from None
        path = bundle.file(WEIGHTS)
        if not bundle.has(WEIGHTS):
            raise TalError(f"{path} is not in the bundle (bundles exported before format "
                           "version 3 have no weights for the torch backend: re-export the "
                           "model with this toolkit version, or use --backend onnxruntime)")
        self.precision, self.device = precision or bundle.precision, device
        self.network = _rebuild(bundle, bundle.precision)
        _load_weights(self.network, bundle, torch.device(device))
        self.names = list(bundle.output_shapes)  # graph order: maps, then the descriptor
        self.name = f"torch[{bundle.precision.short_name}]"

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        with torch.inference_mode():
            out = self.network(x)
        dtype = self.precision.torch_dtype
        return {k: v.to(dtype).cpu().numpy() for k, v in zip(self.names, out)}


def _rebuild(bundle: Bundle, precision: Precision) -> Any:
    """The folded network the manifest describes, on the meta device; `BundleError` when the
    config is not valid or disagrees with the manifest."""
    import torch

    from tal_train.models import TALConfig, build_model
    from tal_train.models.descriptor import DescriptorHead
    from tal_train.models.folded import folded_extractor

    where = f"{bundle.path}/manifest.json: model_config"
    if bundle.manifest.model_config is None:
        raise BundleError(f"{where} is missing; re-export the model with this toolkit version")
    try:
        config = TALConfig.from_dict(dict(bundle.manifest.model_config))
    except (TalError, TypeError, ValueError) as err:
        raise BundleError(f"{where} is not a valid model config ({err})") from None
    if tuple(config.image_size) != (bundle.height, bundle.width):
        raise BundleError(f"{where}: image_size {list(config.image_size)} differs from the "
                          f"input {bundle.height}x{bundle.width}")
    head = None
    with torch.device("meta"):
        model = build_model(config)
        shapes = _feature_shapes(model)
        if shapes != {n: f.shape for n, f in bundle.features.items()}:
            raise BundleError(f"{where} gives feature maps {shapes}, the manifest lists "
                              f"{ {n: f.shape for n, f in bundle.features.items()} }")
        if bundle.descriptor is not None:
            try:
                head = DescriptorHead.from_spec(bundle.descriptor.spec["head"])
            except (KeyError, TypeError, ValueError) as err:
                raise BundleError(f"{bundle.path}/manifest.json: descriptor.head is not a "
                                  f"valid descriptor head ({err})") from None
            if head.inputs != shapes or head.dim != bundle.descriptor_dim:
                raise BundleError(f"{bundle.path}/manifest.json: descriptor.head does not fit "
                                  "the model's feature maps and descriptor width")
        return folded_extractor(model, head, precision).eval()


def _feature_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """Per-item extractor output shapes of a model: DS (K, C, h, w), DI (C, h, w)."""
    cfg = model.config
    return {name: (*([cfg.num_domains] if name.startswith("ds_") else []), cfg.neck_channels,
                   h, w) for name, (h, w) in model.feature_shapes().items()}


def _load_weights(network: Any, bundle: Bundle, device: Any) -> None:
    """Fill the meta-device ``network`` with extractor.safetensors on ``device``, after
    checking the file's tensor names, shapes and dtypes against the network's own."""
    import torch
    from safetensors import SafetensorError, safe_open

    path = bundle.file(WEIGHTS)
    bundle.check_file(WEIGHTS)
    wanted = network.state_dict()
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            names = set(f.keys())
            if names != set(wanted):
                extra, missing = sorted(names - set(wanted)), sorted(set(wanted) - names)
                raise BundleError(f"{path}: tensors do not fit the model config (missing "
                                  f"{missing[:3]}, unexpected {extra[:3]})")
            for name, tensor in wanted.items():
                part = f.get_slice(name)
                shape, dtype = tuple(part.get_shape()), part.get_dtype()
                if shape != tuple(tensor.shape) or dtype != _safetensors_dtype(tensor.dtype):
                    raise BundleError(f"{path}: tensor {name!r} is {dtype} {list(shape)}, the "
                                      f"model needs {_safetensors_dtype(tensor.dtype)} "
                                      f"{list(tensor.shape)}")
            state = {name: f.get_tensor(name) for name in wanted}
    except (SafetensorError, OSError, ValueError) as err:
        raise BundleError(f"{path}: not a readable safetensors file ({str(err)[:200]})") from None
    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise BundleError(f"{path}: tensor {name!r} holds NaN or infinite values; the "
                              "bundle is damaged")
    network.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True,
                            assign=True)


def _safetensors_dtype(dtype: Any) -> str:
    """safetensors' name of a torch dtype (F32, F16, ...)."""
    import torch

    return {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
            torch.float64: "F64", torch.int64: "I64", torch.int32: "I32",
            torch.bool: "BOOL"}.get(dtype, str(dtype))
