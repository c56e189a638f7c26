"""The runtime's reader of extractor.pt2 (tal_infer.torch_program): it computes what the eager
module computes, places every tensor on the target device, and refuses every archive that
would run planted code, which torch.export.load runs (the controls below)."""
from __future__ import annotations

import json
import logging
import zipfile

import pytest

torch = pytest.importorskip("torch")

from planted_archives import PLANTS, _edit_json, planted, rewrite, save_toy  # noqa: E402

from tal_infer.errors import BundleError, UnsafeBundleError  # noqa: E402
from tal_infer.torch_program import load_program  # noqa: E402


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return save_toy(tmp_path_factory.mktemp("toy") / "extractor.pt2")


def test_program_equals_the_eager_module(toy):
    module, path = toy
    program = load_program(path)
    for batch in (1, 5):  # the batch dimension stays dynamic
        x = torch.randn(batch, 4)
        got, want = program(x), module(x)
        assert len(got) == len(want)
        for g, w in zip(got, want):  # the same ATen calls: bit-identical
            assert g.dtype == w.dtype and torch.equal(g, w)


def test_device_move_places_every_tensor_on_the_target(toy):
    """Issue 12 item 3 on a CPU machine: parameters, buffers (persistent or not) and lifted
    constants are created on the target device, and so is the tensor the graph itself creates
    (torch.full(..., device=...)); on meta, a single CPU tensor left behind fails the run."""
    module, path = toy
    program = load_program(path, "meta")
    assert set(program.tensors) == {"w", "b", "nb", "c"}
    assert {t.device.type for t in program.tensors.values()} == {"meta"}
    outputs = program(torch.empty(3, 4, device="meta"))
    assert [o.device.type for o in outputs] == ["meta"] * 4
    assert [tuple(o.shape) for o in outputs] == [(3,), (3,), (3, 2), (6, 1)]
    cpu = load_program(path, "cpu")
    with pytest.raises(RuntimeError):  # the check can fail: a device mix-up raises
        cpu(torch.empty(3, 4, device="meta"))


def test_dry_run_reports_output_shapes_without_arithmetic(toy):
    _, path = toy
    assert load_program(path).dry_run((7, 4)) == [(7,), (7,), (7, 2), (14, 1)]


def _torch_export_load(path) -> None:
    """torch.export.load, whatever it raises once the payload ran (and it logs that)."""
    logging.disable(logging.CRITICAL)
    try:
        torch.export.load(str(path))
    except Exception:  # noqa: BLE001 - what matters is whether the code ran
        pass
    finally:
        logging.disable(logging.NOTSET)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("plant", ["pickled weight", "pickled constant", "opaque object",
                                   "pickled sample inputs"])
def test_control_torch_export_load_runs_the_planted_payload(toy, tmp_path, plant):
    """The hostile inputs are live: torch.export.load creates the marker for each of them."""
    marker = tmp_path / "ran"
    path = planted(toy[1], tmp_path / "extractor.pt2", plant, marker)
    _torch_export_load(path)
    assert marker.is_dir()


@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_planted_code_is_refused_and_never_runs(toy, tmp_path, plant):
    marker = tmp_path / "ran"
    path = planted(toy[1], tmp_path / "extractor.pt2", plant, marker)
    with pytest.raises(UnsafeBundleError) as err:
        load_program(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert not marker.exists()


def _plant_strings(src, dst, code: str, stack_traces: bool):
    def change(model):
        graph = model["graph_module"]["graph"]
        for value in graph["sym_int_values"].values():
            value["as_expr"]["expr_str"] = f"{code} or Symbol('s0')"
        for node in graph["nodes"] if stack_traces else ():
            node["metadata"]["stack_trace"] = f"x\n{code}\n"
    return rewrite(src, dst, lambda root, e: _edit_json(e, f"{root}/models/model.json", change))


def test_strings_in_the_graph_are_never_evaluated(toy, tmp_path):
    """Shape expressions (which torch.export.load passes to sympify, i.e. eval: the control),
    node names and stack traces (which FX turns into Python source) are inert data here."""
    marker = tmp_path / "ran"
    code = f"__import__('os').mkdir({str(marker)!r})"
    control = _plant_strings(toy[1], tmp_path / "control.pt2", code, stack_traces=False)
    _torch_export_load(control)
    assert marker.is_dir()
    marker.rmdir()
    for path in (control, _plant_strings(toy[1], tmp_path / "both.pt2", code, True)):
        program = load_program(path)
        x = torch.randn(2, 4)
        assert all(torch.equal(g, w) for g, w in zip(program(x), toy[0](x)))
    assert not marker.exists()


def _truncate_weight(root, entries):
    name = f"{root}/data/weights/weight_0"
    entries[name] = entries[name][:-4]


def _undefined_value(root, entries):
    def change(model):
        node = model["graph_module"]["graph"]["nodes"][1]
        node["inputs"][0]["arg"] = {"as_tensor": {"name": "nowhere"}}
    _edit_json(entries, f"{root}/models/model.json", change)


def _unknown_operator(root, entries):
    def change(model):
        model["graph_module"]["graph"]["nodes"][1]["target"] = "torch.ops.aten.no_such_op.default"
    _edit_json(entries, f"{root}/models/model.json", change)


def _future_schema(root, entries):
    _edit_json(entries, f"{root}/models/model.json",
               lambda m: m["schema_version"].update(major=99))


@pytest.mark.parametrize("edit, words", [
    (_truncate_weight, "the archive is damaged"),
    (_undefined_value, "uses 'nowhere' before it is defined"),
    (_unknown_operator, "unknown operator 'torch.ops.aten.no_such_op.default'"),
    (_future_schema, "schema 99."),
])
def test_damaged_archives_are_named_one_line_errors(toy, tmp_path, edit, words):
    path = rewrite(toy[1], tmp_path / "extractor.pt2", edit)
    with pytest.raises(BundleError, match=words) as err:
        load_program(path)
    assert not isinstance(err.value, UnsafeBundleError) and "\n" not in str(err.value)


def test_not_an_archive(tmp_path):
    path = tmp_path / "extractor.pt2"
    path.write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="not a readable torch.export archive"):
        load_program(path)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("extractor/models/model.json", json.dumps({}))
    with pytest.raises(BundleError, match="is compressed"):
        load_program(path)


def test_operator_arguments_that_name_files_are_refused():
    """The rule behind the 'aten::save node' plant, on the operators it is meant to stop;
    option strings (rounding_mode, ...) stay allowed."""
    from tal_infer.torch_program import _Planner

    planner = _Planner(set())
    for op in ("save.default", "from_file.default", "_print.default", "warn.default"):
        with pytest.raises(UnsafeBundleError, match="string argument"):
            planner._aten(f"torch.ops.aten.{op}")
    assert planner._aten("torch.ops.aten.div.Tensor_mode") is torch.ops.aten.div.Tensor_mode


def test_cuda_device_gets_its_index(monkeypatch):
    """On CUDA the graph's device arguments name cuda:<current>, the device its tensors are on
    (torch builds that compare devices strictly reject a bare "cuda")."""
    from tal_infer.torch_program import target_device

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert target_device("cuda") == torch.device("cuda", 3)
    assert target_device("cuda:1") == torch.device("cuda", 1)
    assert target_device("cpu") == torch.device("cpu")
