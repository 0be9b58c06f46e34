from splitinfer.wire.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Cut(_message.Message):
    __slots__ = ("id", "name", "tensors", "head_nodes", "head_flops_fraction")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    HEAD_NODES_FIELD_NUMBER: _ClassVar[int]
    HEAD_FLOPS_FRACTION_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    tensors: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorSpec]
    head_nodes: int
    head_flops_fraction: float
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ..., tensors: _Optional[_Iterable[_Union[_tensor_pb2.TensorSpec, _Mapping]]] = ..., head_nodes: _Optional[int] = ..., head_flops_fraction: _Optional[float] = ...) -> None: ...

class CutInfo(_message.Message):
    __slots__ = ("cut", "tail_latency_s")
    CUT_FIELD_NUMBER: _ClassVar[int]
    TAIL_LATENCY_S_FIELD_NUMBER: _ClassVar[int]
    cut: Cut
    tail_latency_s: float
    def __init__(self, cut: _Optional[_Union[Cut, _Mapping]] = ..., tail_latency_s: _Optional[float] = ...) -> None: ...

class ModelInfoRequest(_message.Message):
    __slots__ = ("model", "version")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class ModelInfoResponse(_message.Message):
    __slots__ = ("model", "version", "versions", "fingerprint", "inputs", "outputs", "cuts", "queue_delay_s", "codecs")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    CUTS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DELAY_S_FIELD_NUMBER: _ClassVar[int]
    CODECS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    fingerprint: str
    inputs: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorSpec]
    cuts: _containers.RepeatedCompositeFieldContainer[CutInfo]
    queue_delay_s: float
    codecs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ..., fingerprint: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[_tensor_pb2.TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[_tensor_pb2.TensorSpec, _Mapping]]] = ..., cuts: _Optional[_Iterable[_Union[CutInfo, _Mapping]]] = ..., queue_delay_s: _Optional[float] = ..., codecs: _Optional[_Iterable[str]] = ...) -> None: ...
