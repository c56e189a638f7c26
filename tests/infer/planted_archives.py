"""Hostile variants of a torch.export archive (extractor.pt2), for the tests of the runtime's
reader: each plants code that would create a marker folder if anything ran it."""
from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn


class ToyExtractor(nn.Module):
    """Small, but with everything a program can hold: a parameter, a persistent and a
    non-persistent buffer, a lifted constant, a tensor created on a device inside the graph,
    multi-output and list-output ops, an option string, an in-place op and shape arithmetic."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4))
        self.register_buffer("b", torch.randn(4))
        self.register_buffer("nb", torch.randn(4), persistent=False)
        self.c = torch.randn(4)

    def forward(self, x):
        y = x * self.w + self.b + self.nb + self.c + torch.full((4,), 2.0, device=x.device)
        y = torch.div(y, 0.7, rounding_mode="floor").relu_() + y
        values, indices = y.max(dim=-1)
        a, b = torch.split(y, 2, dim=-1)
        return values, indices, a, b.reshape(x.shape[0] * 2, 1)


def save_toy(path: Path, seed: int = 0) -> tuple[ToyExtractor, Path]:
    """The toy exported and saved as tal-export saves extractor.pt2 (no example inputs)."""
    torch.manual_seed(seed)
    module = ToyExtractor().eval()
    program = torch.export.export(module, (torch.randn(3, 4),),
                                  dynamic_shapes=({0: torch.export.Dim("n")},))
    program.example_inputs = None
    torch.export.save(program, str(path))
    return module, path


class Plant:
    """Unpickling this creates the marker folder."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def rewrite(src: Path, dst: Path, edit: Callable[[str, dict[str, bytes]], None]) -> Path:
    """Copy an archive entry by entry (stored, as torch writes), letting ``edit`` change the
    entries dict (root folder name, {entry name: bytes}) first."""
    with zipfile.ZipFile(src) as z:
        entries = {i.filename: z.read(i) for i in z.infolist()}
    root = next(iter(entries)).split("/")[0]
    edit(root, entries)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return dst


def _edit_json(entries: dict[str, bytes], name: str, change: Callable[[dict], None]) -> None:
    data = json.loads(entries[name])
    change(data)
    entries[name] = json.dumps(data).encode()


def _pickled_payload(folder: str, kind: str, marker: Path):
    def edit(root, entries):
        config = f"{root}/data/{folder}/model_{folder}_config.json"

        def mark(data):
            fqn = next(iter(data["config"]))
            data["config"][fqn]["use_pickle"] = True
            entries[f"{root}/data/{folder}/{data['config'][fqn]['path_name']}"] = \
                pickle.dumps(Plant(marker))
        _edit_json(entries, config, mark)
    return edit


def _opaque_object(marker: Path):
    def edit(root, entries):
        entries[f"{root}/data/constants/opaque_obj_0"] = pickle.dumps(Plant(marker))
        _edit_json(entries, f"{root}/data/constants/model_constants_config.json",
                   lambda d: d["config"].update(planted={
                       "path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
                       "tensor_meta": None}))
    return edit


def _sample_inputs(marker: Path):
    def edit(root, entries):
        entries[f"{root}/data/sample_inputs/model.pt"] = pickle.dumps(Plant(marker))
    return edit


def _model_json(marker: Path, change: Callable[[dict, Path], None]):
    def edit(root, entries):
        _edit_json(entries, f"{root}/models/model.json", lambda m: change(m, marker))
    return edit


def _guard_code(model: dict, marker: Path) -> None:
    model["guards_code"] = [f"__import__('os').mkdir({str(marker)!r})"]


def _node_target(target: str, inputs: list[dict]):
    def change(model: dict, marker: Path) -> None:
        nodes = model["graph_module"]["graph"]["nodes"]
        for arg in inputs:
            if "as_string" in arg["arg"]:
                arg["arg"]["as_string"] = str(marker)
        nodes.insert(1, {"target": target, "inputs": inputs, "outputs": [], "metadata": {},
                         "name": "planted"})
    return change


def _library(marker: Path):
    def edit(root, entries):
        entries[f"{root}/data/aotinductor/model/planted.so"] = b"\x7fELF"
    return edit


SAVE_TO_MARKER = [{"name": "self", "arg": {"as_tensor": {"name": "x"}}, "kind": 1},
                  {"name": "filename", "arg": {"as_string": ""}, "kind": 1}]

# name -> (entries editor given the marker path)
PLANTS: dict[str, Callable[[Path], Callable]] = {
    "pickled weight": lambda m: _pickled_payload("weights", "weight", m),
    "pickled constant": lambda m: _pickled_payload("constants", "tensor", m),
    "opaque object": _opaque_object,
    "pickled sample inputs": _sample_inputs,
    "guard code": lambda m: _model_json(m, _guard_code),
    "aten::save node": lambda m: _model_json(m, _node_target("torch.ops.aten.save.default",
                                                             SAVE_TO_MARKER)),
    "torch function node": lambda m: _model_json(m, _node_target("torch.save",
                                                                 SAVE_TO_MARKER)),
    "compiled library": _library,
}


def planted(src: Path, dst: Path, plant: str, marker: Path) -> Path:
    return rewrite(src, dst, PLANTS[plant](marker))
