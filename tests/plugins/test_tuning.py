"""The kernel's launch-config table, the per-GPU tuning cache file, and the absence of per-batch
kernel specializations (plugins/tuning.py, plugins/kernel.py). CPU only."""
from __future__ import annotations

import json
import logging

import pytest

from tal_plugins import tuning
from tal_plugins.tuning import LaunchConfig, TuningKey

H200_PICK = LaunchConfig(64, 64, galleries=8, num_warps=4, num_stages=2)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder through TAL_CACHE_DIR, and no file read yet by this process."""
    monkeypatch.setenv(tuning.CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(tuning, "_READ", {})
    return tmp_path / "cache"


def key(arch="sm90", hw=192, c=128, p=1, dtype="fp16", responses=False) -> TuningKey:
    return TuningKey(arch, hw, hw, c, p, dtype, responses)


def test_key_names_the_p_range_that_compiles_alike():
    assert key(p=1).text() == "sm90/hw192x192/c128/p1/fp16/match"
    assert key(p=65).text() == "sm90/hw192x192/c128/p65-128/fp16/match"
    assert key(p=128).p_range == key(p=65).p_range == (65, 128)
    assert key(p=3).text().split("/")[3] == "p3-4"
    assert key(responses=True).text().endswith("/responses")


def test_table_gives_the_measured_h200_config_for_the_paper_maps(cache):
    for p in (1, 65):
        assert tuning.choose(key(p=p), "NVIDIA H200") == (H200_PICK, "table")
    # Other architectures, dtypes and sizes fall to the default rule.
    for other in (key(arch="sm80"), key(dtype="bf16"), key(hw=32), key(responses=True)):
        config, source = tuning.choose(other, "NVIDIA A100")
        assert source == "default" and config == tuning.default_config(other)


def test_default_rule_is_the_measured_pick_for_fp16_and_smaller_for_wide_operands():
    assert tuning.default_config(key(dtype="bf16")) == H200_PICK
    # fp32 operand tiles are twice as large: 32-row tiles keep each within 16 KiB.
    fp32 = tuning.default_config(key(dtype="fp32"))
    assert (fp32.block_i, fp32.block_j) == (32, 32)
    odd = tuning.default_config(TuningKey("sm80", 20, 35, 24, 3, "fp16"))
    assert (odd.block_i, odd.block_j) == (16, 16)
    for k in (key(), key(dtype="fp32"), key(hw=48, c=256)):
        configs = tuning.default_configs(k)
        assert configs[-1].block_i == configs[-1].block_j == tuning.MIN_BLOCK  # always a fallback
        assert all(c.galleries == 8 and c.num_warps == 4 for c in configs)


def test_launch_candidates_start_with_the_choice_and_fall_back_without_repeats():
    chosen = LaunchConfig(32, 64, 8, 8, 3)
    candidates = tuning.launch_candidates(chosen, key())
    assert candidates[0] == chosen and len(candidates) == len(set(candidates))
    assert set(tuning.default_configs(key())) <= set(candidates)


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
    tuned = LaunchConfig(64, 32, 8, 8, 3)
    tuning.write_cache(path, "NVIDIA H200", {key(p=65).text(): (tuned, 4.7)}, "3.6.0")
    tuning.write_cache(path, "NVIDIA H200", {key(dtype="fp32").text(): (H200_PICK, 9.0)})
    assert sorted(p.name for p in cache.iterdir()) == [path.name]  # no temporary file left
    data = json.loads(path.read_text())
    assert data["format"] == tuning.CACHE_FORMAT and data["device"] == "NVIDIA H200"
    assert data["configs"][key(p=65).text()] == {**tuned.kernel_args(), "ms": 4.7}
    assert len(data["configs"]) == 2  # the second write merged, not replaced
    assert tuning.choose(key(p=65), "NVIDIA H200") == (tuned, "cache")
    tuning._READ.clear()  # a new process reads the file
    assert tuning.choose(key(p=100), "NVIDIA H200") == (tuned, "cache")  # same P range
    assert tuning.choose(key(dtype="fp32"), "NVIDIA H200") == (H200_PICK, "cache")
    assert tuning.choose(key(p=1), "NVIDIA H200") == (H200_PICK, "table")
    # Another GPU model has its own file.
    assert tuning.choose(key(p=65), "NVIDIA H100 80GB HBM3")[1] == "table"


@pytest.mark.parametrize("content", [
    "{not json", "", '["a list"]', '{"format": "other/1", "configs": {}}',
    json.dumps({"format": tuning.CACHE_FORMAT, "configs": {"k": {"BLOCK_I": 48, "BLOCK_J": 64,
                "GALLERIES": 8, "num_warps": 4, "num_stages": 2}}}),
    json.dumps({"format": tuning.CACHE_FORMAT, "configs": {"k": {"BLOCK_I": "64"}}}),
], ids=["bad-json", "empty", "list", "other-format", "block-48", "string-field"])
def test_corrupt_cache_is_ignored_with_one_warning(cache, caplog, content):
    path = tuning.cache_file("NVIDIA H200", "sm90")
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="tal_plugins"):
        for p in (1, 65, 1):
            assert tuning.choose(key(p=p), "NVIDIA H200") == (H200_PICK, "table")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage()
    # Tuning again replaces the bad file with a good one.
    tuning.write_cache(path, "NVIDIA H200", {key().text(): (LaunchConfig(32, 32), 1.0)})
    tuning._READ.clear()
    assert tuning.choose(key(), "NVIDIA H200") == (LaunchConfig(32, 32), "cache")


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
    consts = {**kernel.shape_constants(192, 192, 128, 1, "fp16", False), **H200_PICK.kernel_args()}
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
