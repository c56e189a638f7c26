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
masked wq / wg loads. In the last gallery run of a query, runs past Ng redo gallery Ng - 1.
So any HW (not only powers of two) and any Nq, Ng work. The grid is 1-D, query-fastest, so
programs running at the same time share one gallery run in L2.

The same source serves three launchers: `launch` (torch tensors: CUDA, or CPU under
TRITON_INTERPRET=1), `compile_ptx` (ahead-of-time PTX for the TensorRT plugin, plugins/trt.py),
and the opt-in tuner (plugins/tune.py). Its non-constexpr parameters are ordered (inputs, scalars,
output) because TensorRT's AOT plugin launcher passes them in that order.

**Specializations.** Launch parameters come from the table of plugins/tuning.py, not from
`triton.autotune`, so a process compiles one kernel per (HW, C, P range, dtype, mode) and times
nothing. Nq and Ng, which change from batch to batch, are run-time arguments excluded from
Triton's integer specialization (`do_not_specialize`: Triton would otherwise compile separate
variants for a value of 1 and for multiples of 16); compiled kernels persist in Triton's on-disk
cache (TRITON_CACHE_DIR) for later processes.
"""
import functools

import triton
import triton.language as tl

from . import tuning
from .triton_env import KERNEL_MAX_CHANNELS, interpreting
from .tuning import MIN_BLOCK, LaunchConfig, TuningKey, cdiv, pow2

# Run-time integer arguments: never specialized on (they vary per call).
RUNTIME_SIZES = ("n_q", "n_g")


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

    for k in range(GALLERIES):
        # A short last run repeats its last gallery (same values stored again): a loop of
        # constant length, and no scalar loop bound (Triton 3.3-3.6 interpreters cannot take one).
        g = tl.minimum(g_first + k, n_g - 1)
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


def shape_constants(hwq: int, hwg: int, c: int, p: int, dtype_name: str, responses: bool,
                    interpreter: bool = False) -> dict:
    """Compile-time constants of one kernel specialization (everything but the tile config)."""
    if c > KERNEL_MAX_CHANNELS:
        raise ValueError(f"QAConvMatch kernel supports C <= {KERNEL_MAX_CHANNELS} channels, got C = {c}")
    # RM_ROWS: the running row-max table is sized for the smallest BLOCK_I any config uses, so
    # its shape does not depend on the launch config.
    return {"HWQ": hwq, "HWG": hwg, "C": c, "P": p, "C_PAD": max(MIN_BLOCK, pow2(c)),
            "P_PAD": pow2(p), "RM_ROWS": pow2(cdiv(hwq, MIN_BLOCK)), "RESPONSES": responses,
            # fp32 inputs: three tf32 passes keep ~fp32 accuracy on tensor cores.
            "PRECISION": "tf32x3" if dtype_name == "fp32" else "tf32",
            # The interpreter's dot multiplies bf16 bit patterns as integers; it gets the exact
            # fp32 values instead (what the tensor cores multiply, so the result is the same).
            "UPCAST": dtype_name == "bf16" and interpreter}


@functools.cache
def _kernel():
    """The jitted kernel, built on first use (under TRITON_INTERPRET=1, which must be set before
    triton is first imported, it runs in numpy)."""
    return triton.jit(qaconv_match_tile, do_not_specialize=RUNTIME_SIZES)


def grid_size(n_q, n_g, galleries: int, cdiv=cdiv):
    """Programs to launch: one per (query, run of `galleries` galleries). Also evaluated on
    TensorRT's symbolic sizes, with TensorRT's `cdiv`."""
    return n_q * cdiv(n_g, galleries)


def kernel_dtype(dtype) -> str:
    """fp16 / bf16 / fp32 for a torch dtype the kernel takes."""
    import torch

    return {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[dtype]


@functools.cache
def device_identity(index: int) -> tuple[str, str]:
    """(GPU model name, architecture such as "sm90") of a CUDA device."""
    import torch

    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), f"sm{major}{minor}"


# Per process: the config each (device, key) launched with, after any fallback.
_CHOSEN: dict[tuple[int, TuningKey], LaunchConfig] = {}


def _config_for(key: TuningKey, index: int) -> LaunchConfig:
    """The table's (or tuning cache's) config; with TAL_QACONV_AUTOTUNE set, a specialization
    the cache lacks is tuned now and written to the cache."""
    name, _ = device_identity(index)
    config, source = tuning.choose(key, name)
    if source != "cache" and tuning.autotune_requested():
        from .tune import tune_key

        config = tune_key(key, index).best
    return config


def launch(query, gallery, wq=None, wg=None, responses: bool = False,
           config: LaunchConfig | None = None):
    """Run the kernel on torch tensors -> fp32 [Nq, Ng, P] (or [Nq, Ng, HWq + HWg] responses).

    query/gallery: contiguous, same dtype (fp16/bf16/fp32), on CUDA or on CPU with
    TRITON_INTERPRET=1; wq/wg: contiguous fp32 on the same device (None for responses).
    config: launch parameters, used as given; None looks them up (`tuning.choose`, once per
    process and specialization; the interpreter uses `tuning.INTERPRETER_CONFIG`), and a
    looked-up config needing more shared memory than the GPU has falls back to the next of
    `tuning.launch_candidates`.
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
    dtype = kernel_dtype(query.dtype)
    consts = shape_constants(hwq, hwg, c, p, dtype, responses, interpreting())
    args = (query, gallery, wq, wg, n_q, n_g, out)
    if interpreting():
        _run(config or tuning.INTERPRETER_CONFIG, args, consts)
        return out
    from triton.runtime.errors import OutOfResources

    index = query.device.index if query.device.index is not None else torch.cuda.current_device()
    key = TuningKey(device_identity(index)[1], hwq, hwg, c, p, dtype, responses)
    if config is not None:  # an explicit config (the tuner times each): no fallback
        with torch.cuda.device(index):  # Triton launches on the current device
            _run(config, args, consts)
        return out
    chosen = _CHOSEN.get((index, key)) or _config_for(key, index)
    with torch.cuda.device(index):
        for candidate in tuning.launch_candidates(chosen, key):
            try:
                _run(candidate, args, consts)
            except OutOfResources as err:
                tuning.log.warning("warning: QAConvMatch launch config %s does not fit this GPU "
                                   "(%s); trying the next", candidate, err)
                continue
            _CHOSEN[(index, key)] = candidate
            return out
    raise RuntimeError(f"no QAConvMatch launch config fits this GPU for {key.text()}")


def _run(config: LaunchConfig, args: tuple, consts: dict) -> None:
    n_q, n_g = args[4], args[5]
    _kernel()[(grid_size(n_q, n_g, config.galleries),)](*args, **consts, **config.kernel_args())


# Without an opt-in attribute a launch may use at most 48 KiB of dynamic shared memory; an
# ahead-of-time kernel launched by another runtime (TensorRT) stays within it.
PORTABLE_SHARED_BYTES = 48 * 1024


def compile_ptx(dtype_name: str, hwq: int, hwg: int, c: int, p: int, arch: int = 90,
                responses: bool = False, max_shared: int = PORTABLE_SHARED_BYTES):
    """Ahead-of-time compile one specialization for sm_<arch> (no GPU needed: Triton ships
    ptxas) with the first config that fits `max_shared` bytes of shared memory: the launch
    table's for this key (`tuning.table_config`, else the default rule), then its fallbacks.

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
    key = TuningKey(f"sm{arch}", hwq, hwg, c, p, dtype_name, responses)
    first = tuning.table_config(key) or tuning.default_config(key)
    for config in map(LaunchConfig.kernel_args, tuning.launch_candidates(first, key)):
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
