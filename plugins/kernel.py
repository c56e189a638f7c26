"""The fused QAConvMatch Triton kernel (DESIGN.md section 2 "Key fact for speed", section 4).

One program owns one query p and a run of GALLERIES consecutive galleries. For each gallery g
it walks the similarity map S = Q_p G_g^T (HWq x HWg) in BLOCK_I x BLOCK_J tiles, each tile a
tensor-core `tl.dot` over the full channel dimension with fp32 accumulation, and folds every
tile straight into the two max-reductions; S never leaves registers. The epilogue projects the
two response vectors with wq / wg (or, in responses mode, stores them unprojected):

    out[p, g] = max_j(S)[i] @ wq + max_i(S)[j] @ wg

Loop order: gallery-location blocks (jb) outside, query-location blocks (ib) inside, both
unrolled at compile time (HW and C are compile-time constants: they are fixed by the model).
The column maxima max_i S[:, j] of a jb block are complete after its ib sweep and are projected
at once; the row maxima max_j S[i, :] need every jb block, so they are kept as running maxima
in a small [RM_ROWS, BLOCK_I] register table (one row per ib block, updated with a masked
`where`, since Triton cannot index registers dynamically) and projected after the last jb block.

Operand rows past HWq / HWg load as 0, and the similarities they produce are masked to -inf
before the maxima; the maxima at padded locations are then finite and meet zero rows of the
masked wq / wg loads. The last gallery run of a query is cut short at Ng. So any HW (not only
powers of two) and any Nq, Ng work. The grid is 1-D, query-fastest, so programs running at the
same time share one gallery run in L2.

The same source serves three launchers: `launch` (torch tensors: CUDA, or CPU under
TRITON_INTERPRET=1), `compile_ptx` (ahead-of-time PTX for the TensorRT plugin, plugins/trt.py),
and the autotuner. Its non-constexpr parameters are ordered (inputs, scalars, output) because
TensorRT's AOT plugin launcher passes them in that order.
"""
import functools

import triton
import triton.language as tl

from .triton_env import KERNEL_MAX_CHANNELS, interpreting

# tl.dot needs every tile dimension >= 16; the running row-max table is sized for the smallest
# BLOCK_I any config uses, so its shape does not depend on the config the autotuner picks.
MIN_BLOCK = 16
# Tile shapes offered to the autotuner; `prune_configs` keeps those that fit the shape.
TILE_SHAPES = ((16, 16), (32, 32), (64, 32), (32, 64), (64, 64), (128, 64), (64, 128))
WARPS_STAGES = ((4, 2), (4, 3), (8, 2))
GALLERIES_PER_PROGRAM = 8
# Under the interpreter every program runs in numpy: the smallest tiles keep tests quick.
INTERPRETER_CONFIG = {"BLOCK_I": 16, "BLOCK_J": 16, "GALLERIES": 2}


def qaconv_match_tile(q_ptr, g_ptr, wq_ptr, wg_ptr, n_q, n_g, out_ptr,
                      HWQ: tl.constexpr, HWG: tl.constexpr, C: tl.constexpr, P: tl.constexpr,
                      C_PAD: tl.constexpr, P_PAD: tl.constexpr, RM_ROWS: tl.constexpr,
                      RESPONSES: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                      BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, GALLERIES: tl.constexpr):
    NUM_IB: tl.constexpr = (HWQ + BLOCK_I - 1) // BLOCK_I
    NUM_JB: tl.constexpr = (HWG + BLOCK_J - 1) // BLOCK_J
    OUT_W: tl.constexpr = (HWQ + HWG) if RESPONSES else P

    pid = tl.program_id(0)
    p = pid % n_q
    g_first = (pid // n_q) * GALLERIES

    offs_i = tl.arange(0, BLOCK_I)
    offs_j = tl.arange(0, BLOCK_J)
    offs_c = tl.arange(0, C_PAD)
    offs_p = tl.arange(0, P_PAD)
    rows = tl.arange(0, RM_ROWS)
    mask_c = offs_c < C
    mask_p = offs_p < P
    q_base = q_ptr + p.to(tl.int64) * (HWQ * C)

    for k in range(tl.minimum(GALLERIES, n_g - g_first)):  # the last run may be short
        g = g_first + k
        g_base = g_ptr + g.to(tl.int64) * (HWG * C)
        out_base = out_ptr + (p.to(tl.int64) * n_g + g) * OUT_W
        row_max = tl.full([RM_ROWS, BLOCK_I], float("-inf"), tl.float32)
        acc = tl.zeros([P_PAD], tl.float32)
        for jb in tl.static_range(NUM_JB):
            j = jb * BLOCK_J + offs_j
            j_ok = j < HWG
            g_tile = tl.load(g_base + j[:, None] * C + offs_c[None, :],
                             mask=j_ok[:, None] & mask_c[None, :], other=0.0)
            if UPCAST:
                g_tile = g_tile.to(tl.float32)
            col_max = tl.full([BLOCK_J], float("-inf"), tl.float32)
            for ib in tl.static_range(NUM_IB):
                i = ib * BLOCK_I + offs_i
                i_ok = i < HWQ
                q_tile = tl.load(q_base + i[:, None] * C + offs_c[None, :],
                                 mask=i_ok[:, None] & mask_c[None, :], other=0.0)
                if UPCAST:
                    q_tile = q_tile.to(tl.float32)
                s = tl.dot(q_tile, tl.trans(g_tile), input_precision=PRECISION)
                col_max = tl.maximum(col_max, tl.max(tl.where(i_ok[:, None], s, float("-inf")), axis=0))
                tile_row_max = tl.max(tl.where(j_ok[None, :], s, float("-inf")), axis=1)
                row_max = tl.where((rows == ib)[:, None], tl.maximum(row_max, tile_row_max[None, :]), row_max)
            if RESPONSES:
                tl.store(out_base + HWQ + j, col_max, mask=j_ok)
            else:
                w = tl.load(wg_ptr + j[:, None] * P + offs_p[None, :],
                            mask=j_ok[:, None] & mask_p[None, :], other=0.0)
                acc += tl.sum(col_max[:, None] * w, axis=0)
        for ib in tl.static_range(NUM_IB):
            i = ib * BLOCK_I + offs_i
            i_ok = i < HWQ
            r = tl.max(tl.where((rows == ib)[:, None], row_max, float("-inf")), axis=0)
            if RESPONSES:
                tl.store(out_base + i, r, mask=i_ok)
            else:
                w = tl.load(wq_ptr + i[:, None] * P + offs_p[None, :],
                            mask=i_ok[:, None] & mask_p[None, :], other=0.0)
                acc += tl.sum(r[:, None] * w, axis=0)
        if not RESPONSES:
            tl.store(out_base + offs_p, acc, mask=mask_p)


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def shape_constants(hwq: int, hwg: int, c: int, p: int, dtype_name: str, responses: bool,
                    interpreter: bool = False) -> dict:
    """Compile-time constants of one kernel specialization (everything but the tile config)."""
    if c > KERNEL_MAX_CHANNELS:
        raise ValueError(f"QAConvMatch kernel supports C <= {KERNEL_MAX_CHANNELS} channels, got C = {c}")
    return {"HWQ": hwq, "HWG": hwg, "C": c, "P": p, "C_PAD": max(MIN_BLOCK, _pow2(c)),
            "P_PAD": _pow2(p), "RM_ROWS": _pow2(_cdiv(hwq, MIN_BLOCK)), "RESPONSES": responses,
            # fp32 inputs: three tf32 passes keep ~fp32 accuracy on tensor cores.
            "PRECISION": "tf32x3" if dtype_name == "fp32" else "tf32",
            # The interpreter's dot multiplies bf16 bit patterns as integers; it gets the exact
            # fp32 values instead (what the tensor cores multiply, so the result is the same).
            "UPCAST": dtype_name == "bf16" and interpreter}


def padding_waste(hwq: int, hwg: int, block_i: int, block_j: int) -> float:
    """Fraction of tensor-core work spent on masked (padded) tile rows and columns."""
    used = hwq * hwg
    return 1.0 - used / (_cdiv(hwq, block_i) * block_i * _cdiv(hwg, block_j) * block_j)


def tile_candidates(hwq: int, hwg: int) -> list[tuple[int, int]]:
    """Tile shapes worth timing for a map size: least padding, then no more than 4x smaller
    than the largest such tile (small tiles only lose operand reuse)."""
    fitting = [(bi, bj) for bi, bj in TILE_SHAPES if bi <= _pow2(hwq) and bj <= _pow2(hwg)]
    fitting = fitting or [(MIN_BLOCK, MIN_BLOCK)]
    least = min(padding_waste(hwq, hwg, bi, bj) for bi, bj in fitting)
    best = [t for t in fitting if padding_waste(hwq, hwg, *t) <= least + 1e-9]
    area = max(bi * bj for bi, bj in best)
    return [(bi, bj) for bi, bj in best if bi * bj * 4 >= area]


def prune_configs(configs, named_args, **kwargs):
    """Autotuner hook: keep the configs whose tile shape `tile_candidates` accepts."""
    args = {**named_args, **kwargs}
    keep = set(tile_candidates(args["HWQ"], args["HWG"]))
    return [cfg for cfg in configs if (cfg.kwargs["BLOCK_I"], cfg.kwargs["BLOCK_J"]) in keep]


def autotune_configs() -> list:
    return [triton.Config({"BLOCK_I": bi, "BLOCK_J": bj, "GALLERIES": GALLERIES_PER_PROGRAM},
                          num_warps=warps, num_stages=stages)
            for bi, bj in TILE_SHAPES for warps, stages in WARPS_STAGES]


@functools.cache
def _kernel():
    """The jitted kernel, built on first use. Under TRITON_INTERPRET=1 (which must be set before
    triton is first imported: Triton's own helpers are jitted at import) it runs in numpy with
    INTERPRETER_CONFIG, since autotuning there would only time numpy; compiled runs are
    autotuned per (HW, C, P, mode)."""
    jitted = triton.jit(qaconv_match_tile)
    if interpreting():
        return jitted
    return triton.autotune(configs=autotune_configs(), key=["HWQ", "HWG", "C", "P", "RESPONSES", "PRECISION"],
                           prune_configs_by={"early_config_prune": prune_configs})(jitted)


def grid_size(n_q, n_g, galleries: int, cdiv=_cdiv):
    """Programs to launch: one per (query, run of `galleries` galleries). Also evaluated on
    TensorRT's symbolic sizes, with TensorRT's `cdiv`."""
    return n_q * cdiv(n_g, galleries)


def launch(query, gallery, wq=None, wg=None, responses: bool = False):
    """Run the kernel on torch tensors -> fp32 [Nq, Ng, P] (or [Nq, Ng, HWq + HWg] responses).

    query/gallery: contiguous, same dtype (fp16/bf16/fp32), on CUDA or on CPU with
    TRITON_INTERPRET=1; wq/wg: contiguous fp32 on the same device (None for responses).
    """
    import torch

    n_q, hwq, c = query.shape
    n_g, hwg, _ = gallery.shape
    p = 1 if responses else wq.shape[1]
    out = torch.empty((n_q, n_g, hwq + hwg if responses else p), dtype=torch.float32,
                      device=query.device)
    if out.numel() == 0:
        return out
    if responses:  # the projection pointers are never read in responses mode
        wq = wg = out
    dtype_name = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[query.dtype]
    consts = shape_constants(hwq, hwg, c, p, dtype_name, responses, interpreting())
    kernel = _kernel()
    if interpreting():
        grid = (grid_size(n_q, n_g, INTERPRETER_CONFIG["GALLERIES"]),)
        kernel[grid](query, gallery, wq, wg, n_q, n_g, out, **consts, **INTERPRETER_CONFIG)
        return out
    with torch.cuda.device(query.device):  # Triton launches on the current device
        kernel[lambda meta: (grid_size(n_q, n_g, meta["GALLERIES"]),)](
            query, gallery, wq, wg, n_q, n_g, out, **consts)
    return out


# Without an opt-in attribute a launch may use at most 48 KiB of dynamic shared memory; an
# ahead-of-time kernel launched by another runtime (TensorRT) stays within it.
PORTABLE_SHARED_BYTES = 48 * 1024


def aot_configs(hwq: int, hwg: int) -> list[dict]:
    """Configs for an ahead-of-time build (no autotuner there), in order of preference: the
    least-padding tiles from largest to smallest, each pipelined (2 stages) then not."""
    tiles = sorted(tile_candidates(hwq, hwg), key=lambda t: -t[0] * t[1])
    return [{"BLOCK_I": bi, "BLOCK_J": bj, "GALLERIES": GALLERIES_PER_PROGRAM,
             "num_warps": 4, "num_stages": stages} for bi, bj in tiles for stages in (2, 1)]


def compile_ptx(dtype_name: str, hwq: int, hwg: int, c: int, p: int, arch: int = 90,
                responses: bool = False, max_shared: int = PORTABLE_SHARED_BYTES):
    """Ahead-of-time compile one specialization for sm_<arch> (no GPU needed: Triton ships
    ptxas) with the first of `aot_configs` that fits `max_shared` bytes of shared memory.

    Returns (compiled, config): compiled has `.metadata.name`, `.metadata.num_warps`,
    `.metadata.shared` and `.asm["ptx"]`; launch `grid_size(Nq, Ng, config["GALLERIES"])`
    programs of num_warps * 32 threads. Only Nq and Ng stay runtime arguments.
    """
    from triton.backends.compiler import GPUTarget
    from triton.runtime.jit import JITFunction

    fn = JITFunction(qaconv_match_tile)
    pointer = f"*{dtype_name}"
    signature = {"q_ptr": pointer, "g_ptr": pointer, "wq_ptr": "*fp32", "wg_ptr": "*fp32",
                 "n_q": "i32", "n_g": "i32", "out_ptr": "*fp32"}
    for config in aot_configs(hwq, hwg):
        consts = shape_constants(hwq, hwg, c, p, dtype_name, responses)
        consts.update({k: v for k, v in config.items() if k.isupper()})
        source = triton.compiler.ASTSource(
            fn=fn, signature={**signature, **{name: "constexpr" for name in consts}}, constexprs=consts)
        compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": config["num_warps"],
                                           "num_stages": config["num_stages"], "enable_fp_fusion": True})
        if compiled.metadata.shared <= max_shared:
            return compiled, config
    raise ValueError(f"no QAConvMatch kernel config for HW {hwq}x{hwg}, C {c}, {dtype_name} fits "
                     f"{max_shared} bytes of shared memory")
