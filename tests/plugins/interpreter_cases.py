"""Kernel-vs-reference cases for the Triton kernel under TRITON_INTERPRET=1.

Triton reads TRITON_INTERPRET when it is first imported, so test_kernel_interpreter.py runs
this file in a fresh interpreter with the variable set (`python interpreter_cases.py NAME...`);
each case prints one JSON line {name: {"err", "tol", "seed"}}. Sizes are tiny and odd: the
interpreter runs every program in numpy, and odd sizes exercise the masks (HW not a power of
two, HWq != HWg, two query parts, several gallery blocks, Ng not a multiple of the 16 galleries
per program).
The "negative" cases make every similarity negative (query features >= 0, gallery <= 0), so a
padded tile row or column read as 0 instead of -inf would win a max and show.

`CONFIG_CASES` run the kernel with the launch configs a GPU gets from the table
(plugins/tuning.py) at the model's map sizes, instead of the interpreter's small blocks.
"""
from __future__ import annotations

import json
import os
import sys
import zlib

from tal_plugins import tuning

# name: (Nq, Ng, HWq, HWg, C, P, dtype, mode, negative); mode: match | responses | grad
CASES = {
    "fp32_p1_odd_sizes": (3, 5, 20, 35, 24, 1, "float32", "match", False),
    "fp32_p5_one_tile": (2, 3, 9, 13, 16, 5, "float32", "match", False),
    "fp32_p4_negative": (2, 3, 20, 35, 16, 4, "float32", "match", True),
    "fp16_p3": (3, 4, 18, 33, 40, 3, "float16", "match", False),
    "bf16_p2_negative": (2, 5, 17, 20, 16, 2, "bfloat16", "match", True),
    "fp32_responses_negative": (3, 3, 20, 35, 24, 0, "float32", "responses", True),
    "fp16_responses": (2, 5, 33, 17, 8, 0, "float16", "responses", False),
    "fp32_gradients": (2, 3, 18, 20, 16, 3, "float32", "grad", False),
}

DTYPE_NAMES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def _config_cases() -> dict[str, tuple]:
    """name: CASES fields + the launch config a GPU gets from the table (plugins/tuning.py) at
    the model's map sizes; Ng = 9 leaves a short last run of galleries."""
    cases = {}
    for name, (hw, c, p, dtype, mode) in {
            "table_hw192_fp16_p65_negative": (192, 128, 65, "fp16", "match"),
            "table_hw192_fp16_responses": (192, 128, 0, "fp16", "responses"),
            "table_hw192_c256_fp32_p1_negative": (192, 256, 1, "fp32", "match"),
            "table_hw48_fp16_p65_negative": (48, 128, 65, "fp16", "match"),
            "table_hw130x70_fp16_p3_negative": ((130, 70), 40, 3, "fp16", "match")}.items():
        hwq, hwg = hw if isinstance(hw, tuple) else (hw, hw)
        key = tuning.TuningKey("sm90", hwq, hwg, c, max(p, 1), dtype, mode == "responses")
        cases[name] = (1, 9, hwq, hwg, c, p, DTYPE_NAMES[dtype], mode, name.endswith("negative"),
                       tuning.table_config(key))
    return cases


CONFIG_CASES = _config_cases()


def features(n: int, hw: int, c: int, gen, sign: float = 0.0):
    """L2-normalized random maps; sign +1 / -1 makes every entry >= 0 / <= 0."""
    import torch

    x = torch.randn(n, hw, c, generator=gen)
    return torch.nn.functional.normalize(x.abs() * sign if sign else x, dim=2)


def _kernel_call(config):
    """The op through the custom op (interpreter config), or `kernel.launch` with `config`."""
    import torch

    import tal_plugins
    from tal_plugins import kernel

    if config is None:
        return (lambda q, g, wq, wg: tal_plugins.qaconv_match(q, g, wq, wg, backend="triton"),
                lambda q, g: tal_plugins.qaconv_responses(q, g, backend="triton"))
    return (lambda q, g, wq, wg: kernel.launch(q, g, wq.to(torch.float32), wg.to(torch.float32),
                                               config=config),
            lambda q, g: kernel.launch(q, g, responses=True, config=config))


def run_case(name: str) -> dict:
    import torch

    import tal_plugins
    from tal_plugins import qaconv_match_reference

    n_q, n_g, hwq, hwg, c, p, dtype, mode, negative, *config = {**CASES, **CONFIG_CASES}[name]
    match, responses = _kernel_call(config[0] if config else None)
    seed = zlib.crc32(name.encode())  # the same draw every run
    gen = torch.Generator().manual_seed(seed)
    # Rounded to the input dtype first, so kernel and reference see the same values.
    q = features(n_q, hwq, c, gen, 1.0 if negative else 0.0).to(getattr(torch, dtype))
    g = features(n_g, hwg, c, gen, -1.0 if negative else 0.0).to(getattr(torch, dtype))
    if mode == "responses":
        s = torch.einsum("pic,gjc->pgij", q.double(), g.double())
        expected = torch.cat([s.amax(3), s.amax(2)], dim=-1)
        actual = responses(q, g).double()
        err = (actual - expected).abs().max().item()
        return {"err": err, "tol": 1e-5, "seed": seed}
    wq, wg = torch.randn(hwq, p, generator=gen), torch.randn(hwg, p, generator=gen)
    if mode == "match":
        expected = qaconv_match_reference(q.double(), g.double(), wq.double(), wg.double())
        actual = match(q, g, wq, wg).double()
        scale = 1.0 + expected.abs().max().item()
        return {"err": (actual - expected).abs().max().item(), "tol": 1e-5 * scale, "seed": seed}
    # grad: the kernel's forward with the op's backward against autograd through the reference.
    inputs = [t.clone().requires_grad_() for t in (q, g, wq, wg)]
    grad_out = torch.randn(n_q, n_g, p, generator=gen)
    ours = torch.autograd.grad(tal_plugins.qaconv_match(*inputs, backend="triton"), inputs, grad_out)
    ref = torch.autograd.grad(qaconv_match_reference(*inputs), inputs, grad_out)
    err = max(((a - b).abs().max() / (1.0 + b.abs().max())).item() for a, b in zip(ours, ref))
    return {"err": err, "tol": 1e-5, "seed": seed}


if __name__ == "__main__":
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    for case in sys.argv[1:] or {**CASES, **CONFIG_CASES}:
        print(json.dumps({case: run_case(case)}), flush=True)
    from tal_plugins import kernel

    assert kernel._kernel.cache_info().currsize == 1, "the kernel never ran"
