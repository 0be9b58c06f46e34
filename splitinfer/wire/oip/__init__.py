"""Generated protobuf and gRPC code for the Open Inference Protocol (package `inference`), in a
descriptor pool of its own; regenerate with scripts/gen_proto.py."""
