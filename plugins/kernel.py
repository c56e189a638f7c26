"""The fused QAConvMatch Triton kernel.

One program owns one query p and a run of GALLERIES (16) consecutive galleries. For each gallery
g it walks the similarity map S = Q_p G_g^T in gallery-location blocks of BLOCK_J columns; each
block is computed as one or two tensor-core `tl.dot`s (the query's *parts*, below), split over
the channels in BLOCK_C steps with fp32 accumulation, and folded at once into the two
max-reductions; S never leaves registers.

**Query parts, not a running-max table.** The row maxima max_j S[i, :] need every gallery block,
so they are running maxima across the block loop. Triton cannot index registers, so they are
held as at most two named vectors: the query's HWq locations are split into a power-of-two
part I1 (largest <= HWq, at most 256) and a rest I2 (padded to a power of two, 0 when HWq is
a power of two): HW 192 = 128 + 64, HW 48 = 32 + 16. Each part is one `tl.dot` per gallery
block (M = I1 or I2, N = BLOCK_J), which is also what lets Triton emit Hopper `wgmma` (it needs
M a multiple of 64 per warp group): no padding for the model's 24x8 maps. The column maxima of
a block are complete after its parts.

**Projection as a held-response `tl.dot`.** The response vectors of the run's 16 galleries are
held in [GALLERIES, blocks, 16] tables (a row written per gallery with a masked `where`), and
projected once per run: out[run, P-chunk] = responses @ weights as tensor-core dots of 16
response columns at a time against [16, BLOCK_P] weight tiles (`tf32x3`: near-fp32 accuracy).
Weights are read once per 16 galleries instead of once per gallery, and no [HW, P] weight tile
is ever held in registers. In responses mode the vectors are stored unprojected instead.

Masking: operand rows past HWq / HWg load as 0 and their similarities are masked to -inf
before the maxima; maxima at padded locations are then finite and meet zero weight rows.
Galleries past Ng are skipped (their rows are not stored), so any HW up to
`KERNEL_MAX_LOCATIONS` and any Nq, Ng work. The grid is 1-D, query-fastest, so programs
running at the same time share one gallery run in L2.

The same source serves three launchers: `launch` (torch tensors: CUDA, or CPU under
TRITON_INTERPRET=1), `compile_ptx` (ahead-of-time PTX for the TensorRT plugin, plugins/trt.py),
and the opt-in tuner (plugins/timing.py). Its non-constexpr parameters are ordered (inputs,
scalars, output) because TensorRT's AOT plugin launcher passes them in that order.

**Specializations.** Launch parameters come from the table of plugins/tuning.py, not from
`triton.autotune`, so a process compiles one kernel per (HW, C, P, dtype, mode) and times
nothing. Nq and Ng, which change from batch to batch, are run-time arguments excluded from
Triton's integer specialization (`do_not_specialize`: Triton would otherwise compile separate
variants for a value of 1 and for multiples of 16); compiled kernels persist in Triton's on-disk
cache (TRITON_CACHE_DIR) for later processes.
"""
import functools

import triton
import triton.language as tl

from . import tuning
from .errors import TalError
from .triton_env import KERNEL_MAX_CHANNELS, KERNEL_MAX_LOCATIONS, interpreting
from .tuning import GALLERIES_PER_PROGRAM, LaunchConfig, TuningKey, cdiv, pow2, query_parts

# Run-time integer arguments: never specialized on (they vary per call).
RUNTIME_SIZES = ("n_q", "n_g")
# Response columns per projection dot, and output columns per projection chunk (tl.dot needs
# every dimension >= 16).
EPILOGUE_BLOCK = tl.constexpr(16)


@triton.jit
def _similarity(q_base, g_base, i0, j0, HWQ: tl.constexpr, HWG: tl.constexpr, C: tl.constexpr,
                BM: tl.constexpr, BN: tl.constexpr, BLOCK_C: tl.constexpr,
                PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """S[i0:i0+BM, j0:j0+BN] = Q G^T over all C channels, BLOCK_C at a time (fp32)."""
    offs_i = i0 + tl.arange(0, BM)
    offs_j = j0 + tl.arange(0, BN)
    s = tl.zeros([BM, BN], tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        c_ok = offs_c < C
        q = tl.load(q_base + offs_i[:, None] * C + offs_c[None, :],
                    mask=(offs_i < HWQ)[:, None] & c_ok[None, :], other=0.0)
        g = tl.load(g_base + offs_j[:, None] * C + offs_c[None, :],
                    mask=(offs_j < HWG)[:, None] & c_ok[None, :], other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
            g = g.to(tl.float32)
        s = tl.dot(q, tl.trans(g), s, input_precision=PRECISION)
    return s


@triton.jit
def _project(acc, held, w_ptr, row0, HW: tl.constexpr, P: tl.constexpr, offs_p, p_ok,
             ROWS: tl.constexpr, BLOCKS: tl.constexpr, BLOCKS_PAD: tl.constexpr, EB: tl.constexpr):
    """acc [ROWS, 16] += held responses @ w[row0 + ..., offs_p] for the first BLOCKS blocks of
    the held [ROWS, BLOCKS_PAD, EB] table, 16 response columns per tensor-core dot."""
    eb: tl.constexpr = EPILOGUE_BLOCK
    held = tl.reshape(held, [ROWS, BLOCKS_PAD * EB // eb, eb])
    blocks = tl.arange(0, BLOCKS_PAD * EB // eb)
    offs_e = tl.arange(0, eb)
    for b in range(BLOCKS * EB // eb):
        a = tl.sum(tl.where((blocks == b)[None, :, None], held, 0.0), axis=1)
        r = row0 + b * eb + offs_e
        w = tl.load(w_ptr + r[:, None] * P + offs_p[None, :],
                    mask=(r < HW)[:, None] & p_ok[None, :], other=0.0)
        acc = tl.dot(a, w, acc, input_precision="tf32x3")
    return acc


def qaconv_match_tile(q_ptr, g_ptr, wq_ptr, wg_ptr, n_q, n_g, out_ptr,
                      HWQ: tl.constexpr, HWG: tl.constexpr, C: tl.constexpr, P: tl.constexpr,
                      I1: tl.constexpr, I2: tl.constexpr, JB_PAD: tl.constexpr,
                      RESPONSES: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
                      BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr, GALLERIES: tl.constexpr):
    NUM_JB: tl.constexpr = (HWG + BLOCK_J - 1) // BLOCK_J
    EB: tl.constexpr = EPILOGUE_BLOCK
    # Shapes must exist even where a part does not (I2 = 0): the code using them is then skipped.
    I2_SHAPE: tl.constexpr = I2 if I2 > 0 else EB
    OUT_W: tl.constexpr = (HWQ + HWG) if RESPONSES else P

    pid = tl.program_id(0)
    p = pid % n_q
    g_first = (pid // n_q) * GALLERIES
    q_base = q_ptr + p.to(tl.int64) * (HWQ * C)
    offs_j = tl.arange(0, BLOCK_J)
    offs_i1 = tl.arange(0, I1)
    offs_i2 = I1 + tl.arange(0, I2_SHAPE)
    rows = tl.arange(0, GALLERIES)
    blocks = tl.arange(0, JB_PAD)
    held_q1 = tl.zeros([GALLERIES, I1 // EB, EB], tl.float32)
    held_q2 = tl.zeros([GALLERIES, I2_SHAPE // EB, EB], tl.float32)
    held_g = tl.zeros([GALLERIES, JB_PAD, BLOCK_J], tl.float32)
    for k in range(GALLERIES):
        g = g_first + k
        if g < n_g:
            g_base = g_ptr + g.to(tl.int64) * (HWG * C)
            out_base = out_ptr + (p.to(tl.int64) * n_g + g) * OUT_W
            row_max1 = tl.full([I1], float("-inf"), tl.float32)
            row_max2 = tl.full([I2_SHAPE], float("-inf"), tl.float32)
            for jb in range(NUM_JB):
                j = jb * BLOCK_J + offs_j
                j_ok = j < HWG
                s = _similarity(q_base, g_base, 0, jb * BLOCK_J, HWQ, HWG, C, I1, BLOCK_J,
                                BLOCK_C, PRECISION, UPCAST)
                col_max = tl.max(tl.where((offs_i1 < HWQ)[:, None], s, float("-inf")), axis=0)
                row_max1 = tl.maximum(row_max1,
                                      tl.max(tl.where(j_ok[None, :], s, float("-inf")), axis=1))
                if I2 > 0:
                    s = _similarity(q_base, g_base, I1, jb * BLOCK_J, HWQ, HWG, C, I2_SHAPE,
                                    BLOCK_J, BLOCK_C, PRECISION, UPCAST)
                    col_max = tl.maximum(col_max, tl.max(
                        tl.where((offs_i2 < HWQ)[:, None], s, float("-inf")), axis=0))
                    row_max2 = tl.maximum(row_max2, tl.max(
                        tl.where(j_ok[None, :], s, float("-inf")), axis=1))
                if RESPONSES:
                    tl.store(out_base + HWQ + j, col_max, mask=j_ok)
                else:
                    here = (rows == k)[:, None, None] & (blocks == jb)[None, :, None]
                    held_g = tl.where(here, col_max[None, None, :], held_g)
            if RESPONSES:
                tl.store(out_base + offs_i1, row_max1, mask=offs_i1 < HWQ)
                if I2 > 0:
                    tl.store(out_base + offs_i2, row_max2, mask=offs_i2 < HWQ)
            else:
                mine = (rows == k)[:, None, None]
                held_q1 = tl.where(mine, tl.reshape(row_max1, [I1 // EB, EB])[None, :, :], held_q1)
                if I2 > 0:
                    held_q2 = tl.where(mine, tl.reshape(row_max2, [I2_SHAPE // EB, EB])[None, :, :],
                                       held_q2)
    if not RESPONSES:
        gallery = g_first + rows
        for p0 in range(0, P, EB):
            offs_p = p0 + tl.arange(0, EB)
            p_ok = offs_p < P
            acc = tl.zeros([GALLERIES, EB], tl.float32)
            acc = _project(acc, held_q1, wq_ptr, 0, HWQ, P, offs_p, p_ok, GALLERIES, I1 // EB,
                           I1 // EB, EB)
            if I2 > 0:
                acc = _project(acc, held_q2, wq_ptr, I1, HWQ, P, offs_p, p_ok, GALLERIES,
                               I2_SHAPE // EB, I2_SHAPE // EB, EB)
            acc = _project(acc, held_g, wg_ptr, 0, HWG, P, offs_p, p_ok, GALLERIES, NUM_JB,
                           JB_PAD, BLOCK_J)
            tl.store(out_ptr + (p.to(tl.int64) * n_g + gallery[:, None]) * P + offs_p[None, :],
                     acc, mask=(gallery < n_g)[:, None] & p_ok[None, :])


def check_kernel_sizes(hwq: int, hwg: int, c: int) -> None:
    """TalError unless the kernel takes these sizes (C <= 256, HW <= 512 on each side)."""
    if c > KERNEL_MAX_CHANNELS or max(hwq, hwg) > KERNEL_MAX_LOCATIONS:
        raise TalError(f"the QAConvMatch kernel takes C <= {KERNEL_MAX_CHANNELS} channels and at "
                       f"most {KERNEL_MAX_LOCATIONS} locations per map, got C = {c}, HW = "
                       f"{hwq} x {hwg}; use the torch backend")


def shape_constants(hwq: int, hwg: int, c: int, p: int, dtype_name: str, responses: bool,
                    block_j: int, interpreter: bool = False) -> dict:
    """Compile-time constants of one kernel specialization with gallery blocks of `block_j`."""
    check_kernel_sizes(hwq, hwg, c)
    i1, i2 = query_parts(hwq)
    return {"HWQ": hwq, "HWG": hwg, "C": c, "P": p, "I1": i1, "I2": i2,
            "JB_PAD": pow2(cdiv(hwg, block_j)), "RESPONSES": responses,
            # fp32 inputs: three tf32 passes keep ~fp32 accuracy on tensor cores.
            "PRECISION": "tf32x3" if dtype_name == "fp32" else "tf32",
            # The interpreter's dot multiplies bf16 bit patterns as integers; it gets the exact
            # fp32 values instead (what the tensor cores multiply, so the result is the same).
            "UPCAST": dtype_name == "bf16" and interpreter,
            "GALLERIES": GALLERIES_PER_PROGRAM}


def kernel_constants(key: TuningKey, config: LaunchConfig, interpreter: bool = False) -> dict:
    """Every compile-time constant and compile option of `key` launched with `config`."""
    return {**shape_constants(key.hwq, key.hwg, key.channels, key.p, key.dtype, key.responses,
                              config.block_j, interpreter), **config.kernel_args()}


@functools.cache
def _kernel():
    """The jitted kernel, built on first use (under TRITON_INTERPRET=1, which must be set before
    triton is first imported, it runs in numpy)."""
    return triton.jit(qaconv_match_tile, do_not_specialize=RUNTIME_SIZES)


def grid_size(n_q, n_g, cdiv=cdiv):
    """Programs to launch: one per (query, run of GALLERIES galleries). Also evaluated on
    TensorRT's symbolic sizes, with TensorRT's `cdiv`."""
    return n_q * cdiv(n_g, GALLERIES_PER_PROGRAM)


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


# Per process: the config each (device, key) launches with.
_CHOSEN: dict[tuple[int, TuningKey], LaunchConfig] = {}


def _config_for(key: TuningKey, index: int) -> LaunchConfig:
    """The tuning cache's config, else the table's (logged once, with its source); with
    TAL_QACONV_AUTOTUNE set, a specialization the cache lacks is tuned now and cached."""
    name, _ = device_identity(index)
    config, source = tuning.choose(key, name)
    if source != "cache" and tuning.autotune_requested():
        from .timing import tune_key

        config, source = tune_key(key, index).best, "tuned now"
    tuning.log.info("QAConvMatch %s on %s: launch config %s (%s)", key.text(), name, config,
                    source)
    return config


def launch(query, gallery, wq=None, wg=None, responses: bool = False,
           config: LaunchConfig | None = None):
    """Run the kernel on torch tensors -> fp32 [Nq, Ng, P] (or [Nq, Ng, HWq + HWg] responses).

    query/gallery: contiguous, same dtype (fp16/bf16/fp32), on CUDA or on CPU with
    TRITON_INTERPRET=1; wq/wg: contiguous fp32 on the same device (None for responses).
    config: launch parameters, used as given; None looks them up once per process and
    specialization (`tuning.choose`; the interpreter uses `tuning.INTERPRETER_CONFIG`). There is
    no fallback: a config the GPU cannot run is an error naming it.
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
        wq = wq_g = out
    else:
        wq_g = wg
    args = (query, gallery, wq, wq_g, n_q, n_g, out)
    if interpreting():
        key = TuningKey("interpreter", hwq, hwg, c, p, kernel_dtype(query.dtype), responses)
        _run(config or tuning.INTERPRETER_CONFIG, key, args, interpreter=True)
        return out
    index = query.device.index if query.device.index is not None else torch.cuda.current_device()
    key = TuningKey(device_identity(index)[1], hwq, hwg, c, p, kernel_dtype(query.dtype), responses)
    if config is not None:  # an explicit config (the tuner times each): Triton's own errors
        with torch.cuda.device(index):  # Triton launches on the current device
            _run(config, key, args)
        return out
    config = _CHOSEN.get((index, key)) or _config_for(key, index)
    _CHOSEN[(index, key)] = config
    from triton.runtime.errors import OutOfResources

    with torch.cuda.device(index):
        try:
            _run(config, key, args)
        except OutOfResources as err:
            raise RuntimeError(f"QAConvMatch launch config {config} does not fit this GPU for "
                               f"{key.text()} ({err})") from None
    return out


def _run(config: LaunchConfig, key: TuningKey, args: tuple, interpreter: bool = False) -> None:
    n_q, n_g = args[4], args[5]
    _kernel()[(grid_size(n_q, n_g),)](*args, **kernel_constants(key, config, interpreter))


# Without an opt-in attribute a launch may use at most 48 KiB of dynamic shared memory, and
# TensorRT's AOT plugin launch has none (plugins/README.md): the plan's kernels stay within it.
PORTABLE_SHARED_BYTES = 48 * 1024


def compile_ptx(dtype_name: str, hwq: int, hwg: int, c: int, p: int, arch: int = 90,
                responses: bool = False, max_shared: int = PORTABLE_SHARED_BYTES):
    """Ahead-of-time compile one specialization for sm_<arch> (no GPU needed: Triton ships
    ptxas) with the launch table's config for it (`tuning.table_config`: the config the
    run-time launcher uses on that architecture without a tuning cache).

    Returns (compiled, config): compiled has `.metadata.name`, `.metadata.num_warps`,
    `.metadata.shared` and `.asm["ptx"]`; launch `grid_size(Nq, Ng)` programs of
    num_warps * 32 threads. Only Nq and Ng stay runtime arguments. A kernel needing more than
    `max_shared` bytes of shared memory is an error (no smaller config is tried silently).
    """
    from triton.backends.compiler import GPUTarget
    from triton.runtime.jit import JITFunction

    key = TuningKey(f"sm{arch}", hwq, hwg, c, p, dtype_name, responses)
    config = tuning.table_config(key)
    consts = kernel_constants(key, config)
    options = {name: consts.pop(name) for name in list(consts) if name.islower()}
    pointer = f"*{dtype_name}"
    signature = {"q_ptr": pointer, "g_ptr": pointer, "wq_ptr": "*fp32", "wg_ptr": "*fp32",
                 "n_q": "i32", "n_g": "i32", "out_ptr": "*fp32",
                 **{name: "constexpr" for name in consts}}
    source = triton.compiler.ASTSource(fn=JITFunction(qaconv_match_tile), signature=signature,
                                       constexprs=consts)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32),
                              options={**options, "enable_fp_fusion": True})
    if compiled.metadata.shared > max_shared:
        raise TalError(f"the QAConvMatch kernel for {key.text()} with {config} needs "
                       f"{compiled.metadata.shared} bytes of shared memory, over the "
                       f"{max_shared} a TensorRT plugin launch allows")
    return compiled, config
