"""The only place that knows protobuf: generated code for the wire contract and its converters.

``splitinfer.wire.v1`` holds the code generated from ``proto/splitinfer/v1/*.proto`` by
``scripts/gen_proto.py`` (do not edit it by hand). ``splitinfer.wire.convert`` turns messages into
core values and back; it imports protobuf but never grpc or torch. Only ``v1/*_pb2_grpc.py``
imports grpc, for the edge node and the device client.
"""
