from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ProbeRequest(_message.Message):
    __slots__ = ("probe_id", "payload", "response_bytes")
    PROBE_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_BYTES_FIELD_NUMBER: _ClassVar[int]
    probe_id: str
    payload: bytes
    response_bytes: int
    def __init__(self, probe_id: _Optional[str] = ..., payload: _Optional[bytes] = ..., response_bytes: _Optional[int] = ...) -> None: ...

class ProbeResponse(_message.Message):
    __slots__ = ("probe_id", "payload", "received_bytes", "server_s")
    PROBE_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    SERVER_S_FIELD_NUMBER: _ClassVar[int]
    probe_id: str
    payload: bytes
    received_bytes: int
    server_s: float
    def __init__(self, probe_id: _Optional[str] = ..., payload: _Optional[bytes] = ..., received_bytes: _Optional[int] = ..., server_s: _Optional[float] = ...) -> None: ...
