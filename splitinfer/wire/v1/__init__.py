"""Generated protobuf and gRPC code for splitinfer.v1; regenerate with scripts/gen_proto.py."""
