"""``splitinfer-edge`` / ``python -m edge_node``: the edge node's entry point.

The gRPC server itself is not built yet; until it is, this entry point says so and exits 2
instead of pretending to serve.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("splitinfer-edge: the edge node server is not implemented yet in this version; "
          "bundles made with `splitinfer export` will be served by it", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
