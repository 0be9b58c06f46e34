"""``splitinfer-edge`` / ``python -m edge_node``: parse flags, start the node, handle signals.

SIGTERM or SIGINT → health NOT_SERVING, stop accepting, finish in-flight work within
``--grace-period-s``, exit 0. A model repository that cannot be loaded at start is fatal:
one clear line on stderr and exit 1.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from .config import EdgeConfig, parse_config
from .logs import configure_logging

log = logging.getLogger("edge_node")


async def serve(config: EdgeConfig) -> int:
    import torch

    from .server import EdgeNode, StartupError

    torch.set_num_threads(config.threads_per_worker())
    node = EdgeNode(config)
    try:
        await node.start()
    except StartupError as exc:
        print(f"splitinfer-edge: error: {exc}", file=sys.stderr)
        await node.stop(0)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # one parseable line for scripts and tests that started us with --listen HOST:0
    print(f"splitinfer-edge: listening on port {node.port}"
          + (f", metrics on port {node.metrics_port}" if node.metrics_port else "")
          + (f", health on port {node.health_port}" if node.health_port else ""), flush=True)
    await stop.wait()
    log.info("signal received: draining for up to %.1fs", config.grace_period_s)
    await node.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    configure_logging(config.log_level, config.log_format)
    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
