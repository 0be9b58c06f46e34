"""KServe 0.21's ModelServer serving a bundle's ONNX tails, for the e2e tests that talk to it.

``deploy/kserve/splitinfer_tails.py`` runs in the peer benchmark's venv (``.bench/kserve-venv``,
made once by ``benchmarks.peer.ensure_peer_venv``: ~1.5 min and ~5.5 GB); ``serve`` starts it on free
ports and waits (up to 180 s) until every named model is ready. SPLITINFER_SKIP_PEER=1 skips
the tests that use it. ``photo`` gives real inputs (scikit-learn's sample photos), ``set_params`` the
tensor parameters tritonclient has no public setter for.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from splitinfer.tools.edgeproc import free_port
from splitinfer.tools.frames import batch, normalized
from splitinfer.wire.oip_convert import set_parameter

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "kserve" / "splitinfer_tails.py"


def photo(size: int, n: int = 1) -> torch.Tensor:
    """``n`` real frames (scikit-learn's sample photos, china.jpg first), ``size`` pixels square,
    normalized as ImageNet models expect: float32 NCHW."""
    return torch.from_numpy(normalized(batch(n, size)))


def set_params(inp: Any, params: dict[str, Any]) -> None:
    """Tensor parameters on a tritonclient ``InferInput``."""
    for key, value in params.items():
        set_parameter(inp._get_tensor().parameters, key, value)


@contextlib.contextmanager
def serve(bundle: Path, models: list[str], *args: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """splitinfer_tails.py serving ``bundle`` (extra ``args`` passed on) until every name in
    ``models`` is ready (``benchmarks.peer.Proc``: it fails with the log if the server exits);
    yields its gRPC target and process, and stops it after."""
    if os.environ.get("SPLITINFER_SKIP_PEER") == "1":
        pytest.skip("SPLITINFER_SKIP_PEER=1: the KServe venv (~5.5 GB) is not made or used")
    import tritonclient.grpc as tc

    from benchmarks.peer import DEFAULT_PEER_VENV, Proc, ensure_peer_venv

    python = ensure_peer_venv(DEFAULT_PEER_VENV)
    grpc_port, http_port = free_port(), free_port()
    target = f"127.0.0.1:{grpc_port}"
    client = tc.InferenceServerClient(target)

    def ready() -> bool:
        try:
            return bool(client.is_server_ready() and all(client.is_model_ready(m)
                                                         for m in models))
        except Exception:  # not listening yet
            return False

    try:
        server = Proc("splitinfer_tails.py", [str(python), str(SCRIPT), str(bundle),
                                              "--grpc-port", str(grpc_port), "--http-port",
                                              str(http_port), *args],
                      target, bundle.parent / f"kserve-{grpc_port}.log", ready)
        try:
            yield target, server.proc
        finally:
            server.stop()
    finally:
        client.close()
