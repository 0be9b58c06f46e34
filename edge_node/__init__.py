"""The splitinfer edge node: a gRPC server that runs model tails (see issue: edge node)."""
