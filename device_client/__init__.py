"""The device client SDK: run a split model's head here, its tail on an edge node, always answer.

::

    from device_client import SplitClient
    client = SplitClient("bundle/", edges=["edge:50051"], cut="auto", codec="auto",
                         deadline_s=0.2, fallback="local")
    y = client.infer(x)

``SplitClient`` (blocking) and ``AsyncSplitClient`` (asyncio) share one implementation and one
signature (``ClientArgs``). Importing this package does not import torch: with ``head="onnx"``
the head runs on ONNX Runtime. Every call to an edge goes through the ``Edge`` seam
(``GrpcEdge`` over gRPC; pass any object with its methods in ``edges=`` to test without a
network).
"""

from __future__ import annotations

from splitinfer.transport import TLS

from .aio import AsyncSplitClient, InferOutcome
from .breaker import BreakerPolicy
from .client import SplitClient
from .edges import Edge, EdgeStream, GrpcEdge
from .options import ClientOptions
from .planning import ClientPlan
from .stats import ClientStats, EdgeStats, ShadowStats

__all__ = ["SplitClient", "AsyncSplitClient", "ClientOptions", "InferOutcome", "BreakerPolicy",
           "TLS", "ClientPlan", "ClientStats", "EdgeStats", "ShadowStats", "Edge",
           "EdgeStream", "GrpcEdge"]
