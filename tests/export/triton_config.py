"""Triton's ModelConfig message, built at test time from the schema fixture
data/triton_model_config.textproto (protobuf alone: no protoc, no tritonclient), and the
load-time rules of Triton's model configuration docs that the generated configs must meet."""
from __future__ import annotations

from functools import cache
from pathlib import Path

FIXTURE = Path(__file__).parent / "data" / "triton_model_config.textproto"
PLATFORMS = {"tensorrt_plan", "onnxruntime_onnx"}


@cache
def model_config_class():
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

    schema = text_format.Parse(FIXTURE.read_text(), descriptor_pb2.FileDescriptorProto())
    pool = descriptor_pool.DescriptorPool()
    pool.Add(schema)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def parse_config(text: str):
    """config.pbtxt text -> ModelConfig; google.protobuf.text_format.ParseError on any field,
    value or enum name Triton's schema does not have."""
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_class()())


def check_model_folder(folder: Path):
    """Parse `folder`/config.pbtxt and apply the load rules Triton documents for it; returns
    the ModelConfig."""
    config = parse_config((folder / "config.pbtxt").read_text())
    assert config.name == folder.name, "Triton requires name == the model folder's name"
    assert config.platform in PLATFORMS
    model_file = {"tensorrt_plan": "model.plan", "onnxruntime_onnx": "model.onnx"}
    assert (folder / "1" / model_file[config.platform]).is_file()
    for tensor in (*config.input, *config.output):
        assert tensor.data_type != 0 and tensor.dims, tensor.name
        assert all(d > 0 or d == -1 for d in tensor.dims), tensor.name
    names = [t.name for t in (*config.input, *config.output)]
    assert len(names) == len(set(names))
    if config.HasField("dynamic_batching"):
        assert config.max_batch_size > 0, "dynamic batching needs max_batch_size > 0"
        assert all(0 < b <= config.max_batch_size
                   for b in config.dynamic_batching.preferred_batch_size)
    return config
