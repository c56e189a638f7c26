"""The blocked CPU paths (torch tensors, numpy arrays) against the plain reference."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tal_plugins
from tal_infer.errors import TalError
from tal_plugins import cpu, qaconv_match_reference_numpy

ROOT = Path(__file__).resolve().parents[2]

# (Nq, Ng, HWq, HWg, C, P): HW not a power of two, HWq != HWg, Nq / Ng not multiples of the
# block (e.g. HW 200 -> 3 maps per block, HW 90 -> 8), P = 1 and P > 1.
SIZES = [(5, 7, 20, 35, 24, 1), (10, 17, 200, 90, 16, 3), (1, 1, 5, 5, 4, 2), (3, 9, 192, 192, 32, 65)]


def responses_reference(q: np.ndarray, g: np.ndarray) -> np.ndarray:
    s = np.einsum("pic,gjc->pgij", q.astype(np.float64), g.astype(np.float64))
    return np.concatenate([s.max(axis=3), s.max(axis=2)], axis=-1)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("library", ["torch", "numpy"])
def test_blocked_match_equals_reference(inputs, size, library):
    n_q, n_g, hwq, hwg, c, p = size
    q, g = inputs.maps(n_q, hwq, c), inputs.maps(n_g, hwg, c)
    wq, wg = inputs.weights(hwq, p), inputs.weights(hwg, p)
    expected = qaconv_match_reference_numpy(q, g, wq, wg)
    if library == "torch":
        out = tal_plugins.qaconv_match(*map(torch.from_numpy, (q, g, wq, wg)))
        assert out.dtype == torch.float32
        out = out.numpy()
    else:
        out = tal_plugins.qaconv_match(q, g, wq, wg)
    assert out.shape == (n_q, n_g, p) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0, atol=inputs.tolerance(expected))


@pytest.mark.parametrize("library", ["torch", "numpy"])
@pytest.mark.parametrize("sign", [0.0, 1.0])
def test_blocked_responses_equal_reference(inputs, library, sign):
    q, g = inputs.maps(4, 21, 12, sign), inputs.maps(9, 34, 12, -sign)
    expected = responses_reference(q, g)
    if library == "torch":
        out = tal_plugins.qaconv_responses(torch.from_numpy(q), torch.from_numpy(g)).numpy()
    else:
        out = tal_plugins.qaconv_responses(q, g)
    assert out.shape == (4, 9, 21 + 34)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


# Unit roundoff of the input dtype: with unit-length C-vectors |S| <= 1, so rounding the inputs
# moves each similarity, and hence each response, by at most about 2u.
ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_accumulate_in_fp32(inputs, dtype):
    q, g = inputs.maps(6, 33, 40), inputs.maps(5, 18, 40)
    wq, wg = inputs.weights(33, 4), inputs.weights(18, 4)
    q_half, g_half = torch.from_numpy(q).to(dtype), torch.from_numpy(g).to(dtype)
    out = tal_plugins.qaconv_match(q_half, g_half, torch.from_numpy(wq), torch.from_numpy(wg))
    assert out.dtype == torch.float32
    # Against the reference on the same rounded inputs: only accumulation order differs.
    same_inputs = qaconv_match_reference_numpy(q_half.float().numpy(), g_half.float().numpy(), wq, wg)
    np.testing.assert_allclose(out.numpy(), same_inputs, rtol=0, atol=inputs.tolerance(same_inputs))
    # Against the unrounded fp32 features: responses within 4u, projections within 4u * sum|w|.
    responses = tal_plugins.qaconv_responses(q_half, g_half).numpy()
    np.testing.assert_allclose(responses, responses_reference(q, g), rtol=0, atol=4 * ROUNDOFF[dtype])


def test_numpy_half_precision_arrays(inputs):
    q, g = inputs.maps(3, 10, 8).astype(np.float16), inputs.maps(4, 14, 8).astype(np.float16)
    wq, wg = inputs.weights(10, 2), inputs.weights(14, 2)
    out = tal_plugins.qaconv_match(q, g, wq, wg)
    expected = qaconv_match_reference_numpy(q, g, wq, wg)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0, atol=inputs.tolerance(expected))


@pytest.mark.parametrize("hwq, hwg", [(192, 192), (48, 48), (200, 90), (1000, 30)])
def test_similarity_blocks_stay_within_the_memory_bound(inputs, hwq, hwg):
    """Every S block the forward pass forms is at most max(BLOCK_ROWS, HWq) x max(BLOCK_ROWS,
    HWg) floats, whatever Nq and Ng are."""
    n_q, n_g = 2 * cpu.BLOCK_ROWS // hwq + 3, 2 * cpu.BLOCK_ROWS // hwg + 5
    q, g = inputs.maps(n_q, hwq, 4), inputs.maps(n_g, hwg, 4)
    largest = max(s.size for *_, s in cpu.similarity_blocks(q, g, cpu.NUMPY_OPS))
    assert largest <= max(cpu.BLOCK_ROWS, hwq) * max(cpu.BLOCK_ROWS, hwg)
    assert largest < n_q * hwq * n_g * hwg / 4  # really blocked, not one S for all pairs


@pytest.mark.parametrize("shapes, message", [
    (((2, 10, 8), (3, 10, 6), (10, 1), (10, 1)), "channels"),
    (((2, 10, 8), (3, 12, 8), (11, 1), (12, 1)), "HWq = 10"),
    (((2, 10, 8), (3, 12, 8), (10, 2), (12, 3)), "P = 2"),
    (((2, 10, 8), (3, 12, 8, 1), (10, 1), (12, 1)), "[N, HW, C]"),
])
@pytest.mark.parametrize("library", ["torch", "numpy"])
def test_mismatched_shapes_give_one_line_errors(shapes, message, library):
    arrays = [np.zeros(s, np.float32) for s in shapes]
    if library == "torch":
        arrays = [torch.from_numpy(a) for a in arrays]
    with pytest.raises(TalError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        tal_plugins.qaconv_match(*arrays)
    assert "\n" not in str(err.value)


def test_numpy_arrays_reject_torch_backends_and_mixed_inputs():
    q, g, w = np.zeros((1, 4, 2), np.float32), np.zeros((1, 4, 2), np.float32), np.zeros((4, 1), np.float32)
    with pytest.raises(TalError, match="backend 'triton' takes torch tensors"):
        tal_plugins.qaconv_match(q, g, w, w, backend="triton")
    with pytest.raises(TalError, match="all as torch tensors"):
        tal_plugins.qaconv_match(q, torch.from_numpy(g), w, w)


def test_numpy_path_runs_without_torch():
    """The runtime without torch: `import torch` fails, the numpy path still matches."""
    code = """
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import numpy as np
import tal_plugins
rng = np.random.default_rng(1)
q, g = rng.standard_normal((3, 13, 6), np.float32), rng.standard_normal((4, 7, 6), np.float32)
wq, wg = rng.standard_normal((13, 2), np.float32), rng.standard_normal((7, 2), np.float32)
out = tal_plugins.qaconv_match(q, g, wq, wg)
ref = tal_plugins.qaconv_match_reference_numpy(q, g, wq, wg)
assert out.shape == (3, 4, 2), out.shape
assert np.abs(out - ref).max() <= 1e-5 * (1 + np.abs(ref).max()), np.abs(out - ref).max()
assert "torch" not in [m.split(".")[0] for m in sys.modules if sys.modules[m] is not None]
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "ok"
