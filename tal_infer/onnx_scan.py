"""Refusing ONNX graphs that would make a runtime read files besides themselves.

An ONNX tensor may keep its data in an "external data" file named by a relative path inside
the graph. Whether a runtime lets that path climb out of the model's folder depends on its
version (ONNX Runtime 1.17 opens ``../../outside/secret.bin``), so the runtime checks the
graph itself before handing it to any runtime. The toolkit's bundles never use external data
(every graph is far below protobuf's 2 GB limit), so any tensor with external data is refused,
wherever it sits: initializers, sparse initializers, Constant-node attributes, the subgraphs of
If/Loop/Scan nodes, model-local functions and training graphs.

The walk reads the protobuf wire format directly (the runtime core does not depend on the
``onnx`` package): only the message fields that can hold tensors or graphs are entered; raw
tensor bytes are skipped by their length, so a 100 MB graph is scanned in milliseconds.
"""
from __future__ import annotations

from typing import Iterator

# (message, field number) -> message type of that field, for the fields that lead to tensors.
_MESSAGE_FIELDS = {
    ("model", 7): "graph", ("model", 25): "function", ("model", 20): "training",
    ("training", 1): "graph", ("training", 2): "graph",
    ("graph", 1): "node", ("graph", 5): "tensor", ("graph", 15): "sparse",
    ("function", 7): "node",
    ("node", 5): "attribute",
    ("attribute", 5): "tensor", ("attribute", 6): "graph", ("attribute", 10): "tensor",
    ("attribute", 11): "graph", ("attribute", 22): "sparse", ("attribute", 23): "sparse",
    ("sparse", 1): "tensor", ("sparse", 2): "tensor",
}
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _EXTERNAL = 13, 14, 1
MAX_DEPTH = 64  # graphs nested deeper than this are not a model we wrote


class OnnxScanError(ValueError):
    """The file is not a well-formed ONNX protobuf, or it refers to external data."""


def check_no_external_data(data: bytes) -> None:
    """`OnnxScanError` when the serialized ModelProto ``data`` is malformed or any tensor in
    it keeps its data outside the file."""
    _scan(memoryview(data), "model", 0)


def _scan(buf: memoryview, message: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise OnnxScanError(f"graphs nested more than {MAX_DEPTH} deep")
    for field, wire, value in _fields(buf):
        if message == "tensor" and (field == _TENSOR_EXTERNAL_DATA or (
                field == _TENSOR_DATA_LOCATION and wire == 0 and value == _EXTERNAL)):
            raise OnnxScanError("a tensor keeps its data in an external file (bundles hold "
                                "every weight inside the graph file)")
        child = _MESSAGE_FIELDS.get((message, field))
        if child is not None:
            if wire != 2:
                raise OnnxScanError(f"field {field} of a {message} is not a message")
            _scan(value, child, depth + 1)


def _fields(buf: memoryview) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value) of one message: ints for varints, memoryviews for
    length-delimited fields, None for fixed-width ones."""
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield field, wire, value
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise OnnxScanError("truncated protobuf field")
            yield field, wire, buf[pos:pos + length]
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > end:
                raise OnnxScanError("truncated protobuf field")
            yield field, wire, None
        else:
            raise OnnxScanError(f"not an ONNX protobuf (wire type {wire})")


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise OnnxScanError("truncated or overlong protobuf varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
