from splitinfer.wire.v1 import inference_pb2 as _inference_pb2
from splitinfer.wire.v1 import model_pb2 as _model_pb2
from splitinfer.wire.v1 import probe_pb2 as _probe_pb2
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor
