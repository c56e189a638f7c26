"""The kernel's launch-config table, the per-GPU tuning cache file, and the absence of per-batch
kernel specializations (plugins/tuning.py, plugins/kernel.py). CPU only."""
from __future__ import annotations

import json
import logging

import pytest

from tal_plugins import tuning
from tal_plugins.tuning import LaunchConfig, TuningKey

# The table's config for the paper maps (24x8, C 128, fp16) on Hopper.
SM90_FP16 = LaunchConfig(64, 32, num_warps=8, num_stages=1, maxnreg=128)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder through TAL_CACHE_DIR, and no file read yet by this process."""
    monkeypatch.setenv(tuning.CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(tuning, "_READ", {})
    return tmp_path / "cache"


def key(arch="sm90", hw=192, c=128, p=1, dtype="fp16", responses=False) -> TuningKey:
    return TuningKey(arch, hw, hw, c, p, dtype, responses)


def test_key_names_the_p_range_that_shares_a_config():
    assert key(p=1).text() == "sm90/hw192x192/c128/p1/fp16/match"
    assert key(p=65).text() == "sm90/hw192x192/c128/p65-128/fp16/match"
    assert key(p=128).p_range == key(p=65).p_range == (65, 128)
    assert key(p=3).text().split("/")[3] == "p3-4"
    assert key(responses=True).text().endswith("/responses")


@pytest.mark.parametrize("arch, hw, c, p, dtype, expected, shape_class", [
    # Hopper, maps whose query parts are multiples of 64 rows: wgmma, 2 programs per SM.
    ("sm90", 192, 128, 1, "fp16", SM90_FP16, "wgmma"),
    ("sm90", 192, 256, 65, "bf16", SM90_FP16, "wgmma"),
    ("sm90", 192, 128, 65, "fp32", LaunchConfig(64, 32, 8, 1, None), "wgmma"),
    ("sm90", 48, 128, 65, "fp16", LaunchConfig(16, 32, 8, 1, 128), "small"),
    ("sm90", 48, 256, 1, "fp32", LaunchConfig(16, 32, 8, 1, 128), "small"),
    # Every other architecture: mma.sync, whose register fragments need ptxas's own count at HW 192.
    ("sm80", 192, 128, 65, "fp16", LaunchConfig(64, 32, 8, 1, None), "wgmma"),
    ("sm86", 192, 256, 1, "fp32", LaunchConfig(64, 32, 8, 1, None), "wgmma"),
    ("sm80", 48, 128, 1, "fp16", LaunchConfig(16, 32, 8, 1, 128), "small"),
])
def test_table_pins_one_config_per_arch_shape_class_and_dtype(cache, arch, hw, c, p, dtype,
                                                              expected, shape_class):
    k = key(arch, hw, c, p, dtype)
    assert k.shape_class == shape_class
    # The run-time launcher (no tuning cache) and the TensorRT plan take the same config.
    assert tuning.choose(k, "NVIDIA GPU") == (expected, "table")
    assert tuning.table_config(k) == expected


def test_query_parts_and_gallery_blocks_pad_the_model_maps_not_at_all():
    assert tuning.query_parts(192) == (128, 64) and tuning.query_parts(48) == (32, 16)
    assert tuning.query_parts(256) == (256, 0) and tuning.query_parts(20) == (16, 16)
    assert tuning.query_parts(512) == (256, 256) and tuning.query_parts(9) == (16, 0)
    assert [tuning.gallery_block(hw) for hw in (192, 48, 32, 130, 9)] == [64, 16, 32, 16, 16]
    assert key(hw=256).shape_class == "wgmma" and key(hw=160).shape_class == "small"


def test_tuner_candidates_start_with_the_table_config_without_repeats():
    candidates = tuning.tuning_candidates(key())
    assert candidates[0] == SM90_FP16 and len(candidates) == len(set(candidates))
    assert {c.block_j for c in candidates} == {64}


def test_cache_folder_is_configurable(monkeypatch, tmp_path):
    monkeypatch.setenv(tuning.CACHE_DIR_ENV, str(tmp_path / "mine"))
    assert tuning.cache_file("NVIDIA H200", "sm90") == \
        tmp_path / "mine" / "qaconv-launch-nvidia-h200-sm90.json"
    monkeypatch.delenv(tuning.CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert tuning.cache_dir() == tmp_path / "xdg" / "tal-reid"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert tuning.cache_dir() == tmp_path / "home" / ".cache" / "tal-reid"


def test_tuned_configs_are_written_and_read_back_by_a_later_process(cache):
    path = tuning.cache_file("NVIDIA H200", "sm90")
    tuned = LaunchConfig(32, 64, 4, 2, None)
    tuning.write_cache(path, "NVIDIA H200", {key(p=65).text(): (tuned, 4.7)}, "3.6.0")
    tuning.write_cache(path, "NVIDIA H200", {key(dtype="fp32").text(): (SM90_FP16, 9.0)})
    assert sorted(p.name for p in cache.iterdir()) == [path.name]  # no temporary file left
    data = json.loads(path.read_text())
    assert data["format"] == tuning.CACHE_FORMAT and data["device"] == "NVIDIA H200"
    assert data["configs"][key(p=65).text()] == {**tuned.kernel_args(), "ms": 4.7}
    assert len(data["configs"]) == 2  # the second write merged, not replaced
    assert tuning.choose(key(p=65), "NVIDIA H200") == (tuned, "cache")
    tuning._READ.clear()  # a new process reads the file
    assert tuning.choose(key(p=100), "NVIDIA H200") == (tuned, "cache")  # same P range
    assert tuning.choose(key(dtype="fp32"), "NVIDIA H200") == (SM90_FP16, "cache")
    assert tuning.choose(key(p=1), "NVIDIA H200") == (SM90_FP16, "table")
    # Another GPU model has its own file.
    assert tuning.choose(key(p=65), "NVIDIA H100 80GB HBM3")[1] == "table"


@pytest.mark.parametrize("content", [
    "{not json", "", '["a list"]', '{"format": "other/1", "configs": {}}',
    json.dumps({"format": tuning.CACHE_FORMAT, "configs": {"k": {"BLOCK_J": 48, "BLOCK_C": 32,
                "num_warps": 8, "num_stages": 1}}}),
    json.dumps({"format": tuning.CACHE_FORMAT, "configs": {"k": {"BLOCK_J": "64"}}}),
    json.dumps({"format": "tal-reid/qaconv-launch/1", "configs": {"k": {
        "BLOCK_I": 64, "BLOCK_J": 64, "GALLERIES": 8, "num_warps": 4, "num_stages": 2}}}),
], ids=["bad-json", "empty", "list", "other-format", "block-48", "string-field",
        "previous-kernel"])
def test_corrupt_cache_is_ignored_with_one_warning(cache, caplog, content):
    path = tuning.cache_file("NVIDIA H200", "sm90")
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="tal_plugins"):
        for p in (1, 65, 1):
            assert tuning.choose(key(p=p), "NVIDIA H200") == (SM90_FP16, "table")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage()
    # Tuning again replaces the bad file with a good one.
    tuning.write_cache(path, "NVIDIA H200", {key().text(): (LaunchConfig(32, 16), 1.0)})
    tuning._READ.clear()
    assert tuning.choose(key(), "NVIDIA H200") == (LaunchConfig(32, 16), "cache")


def test_autotuning_is_opt_in(monkeypatch):
    monkeypatch.delenv(tuning.AUTOTUNE_ENV, raising=False)
    assert not tuning.autotune_requested()
    for value, wanted in (("1", True), ("yes", True), ("0", False), ("", False)):
        monkeypatch.setenv(tuning.AUTOTUNE_ENV, value)
        assert tuning.autotune_requested() is wanted


def test_batch_sizes_do_not_create_kernel_specializations():
    """Nq and Ng change per batch: the specialization Triton keys its compile cache on must not
    depend on them (it would for a value of 1 and for multiples of 16 without do_not_specialize)."""
    pytest.importorskip("triton")
    torch = pytest.importorskip("torch")
    try:
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend
        from triton.runtime.jit import JITFunction, create_function_from_signature
    except ImportError as err:  # Triton internals this check reads (3.3 to 3.9 have them)
        pytest.skip(f"this triton lacks {err.name}")
    from tal_plugins import kernel

    backend = make_backend(GPUTarget("cuda", 90, 32))
    consts = kernel.kernel_constants(key(), SM90_FP16)
    maps, out = torch.zeros(4, 192, 128, dtype=torch.float16), torch.zeros(8)

    def keys(fn) -> set:
        bind = create_function_from_signature(fn.signature, fn.params, backend)
        return {str(bind(maps, maps, out, out, n, n + 7, out, **consts)[1])
                for n in (1, 2, 16, 17, 64, 3368)}

    assert set(kernel.RUNTIME_SIZES) == {"n_q", "n_g"}
    assert len(keys(kernel._kernel())) == 1
    assert len(keys(JITFunction(kernel.qaconv_match_tile))) > 1  # the check can fail


def test_tune_cli_names_one_key_per_compiled_kernel_and_refuses_without_a_gpu(monkeypatch):
    torch = pytest.importorskip("torch")
    from click.testing import CliRunner

    from tal_plugins.tune import main, requested_keys

    keys = requested_keys("sm90", [(24, 8), (12, 4)], 128, [1, 65, 100], ["fp16", "bf16"], False)
    assert len(keys) == 2 * 2 * 2  # P 65 and 100 share the range 65-128
    assert {k.text() for k in requested_keys("sm90", [(24, 8)], 128, [1, 65], ["fp16"], True)} == \
        {"sm90/hw192x192/c128/p1/fp16/responses"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    res = CliRunner().invoke(main, ["--show"])
    assert res.exit_code == 2 and res.output.strip() == \
        "error: python -m tal_plugins.tune needs a CUDA GPU (torch.cuda.is_available() is False)"


def test_launcher_logs_its_config_once_and_never_falls_back(cache, monkeypatch, caplog):
    """The run-time path: the config is looked up once per (device, key), logged with its
    source, and a config the GPU cannot run is an error naming it (no smaller config is tried)."""
    pytest.importorskip("triton")
    torch = pytest.importorskip("torch")
    from contextlib import nullcontext

    from triton.runtime.errors import OutOfResources

    from tal_plugins import kernel

    tried = []

    def run(config, key, args, interpreter=False):
        tried.append(config)
        raise OutOfResources(99_999, 49_152, "shared memory")

    monkeypatch.setattr(kernel, "interpreting", lambda: False)
    monkeypatch.setattr(kernel, "device_identity", lambda index: ("NVIDIA H200", "sm90"))
    monkeypatch.setattr(kernel, "_CHOSEN", {})
    monkeypatch.setattr(kernel, "_run", run)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", lambda index: nullcontext())
    q = torch.zeros(2, 192, 128, dtype=torch.float16)
    w = torch.zeros(192, 1)
    with caplog.at_level(logging.INFO, logger="tal_plugins"):
        for _ in range(2):
            with pytest.raises(RuntimeError, match=r"launch config \(gallery block 64, channel "
                                                   r"step 32, 8 warps, 1 stage, <= 128 registers\)"
                                                   r" does not fit this GPU"):
                kernel.launch(q, q, w, w)
    assert tried == [SM90_FP16, SM90_FP16]
    logged = [r.getMessage() for r in caplog.records]
    assert logged == ["QAConvMatch sm90/hw192x192/c128/p1/fp16/match on NVIDIA H200: launch "
                      f"config {SM90_FP16} (table)"]
