"""``SplitClient``: the device client for synchronous code (an ``AsyncSplitClient`` on a
private event-loop thread).

::

    from device_client import SplitClient

    with SplitClient("bundle/", edges=["edge-a:50051", "edge-b:50051"], deadline_s=0.2) as client:
        y = client.infer(x)                 # one input (a tuple of outputs for several)
        for y in client.stream(frames):     # many, pipelined, in order
            ...
        print(client.plan.describe(), client.stats)

Every argument is ``AsyncSplitClient``'s; the constructor connects (checks the edges, measures
the link, plans) and raises on a wrong token or a bundle the edges do not serve.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any, Coroutine, Iterable, Iterator, Sequence, TypeVar

from .aio import AsyncSplitClient, InferOutcome
from .planning import ClientPlan
from .stats import ClientStats

__all__ = ["SplitClient"]

T = TypeVar("T")


class SplitClient:
    """Blocking twin of ``AsyncSplitClient``; safe to call from several threads."""

    def __init__(self, bundle: str | Path, edges: Sequence[str] | str, **options: Any) -> None:
        self._client = AsyncSplitClient(bundle, edges, **options)  # argument errors raise here
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="splitinfer-client")
        self._thread.start()
        self._closed = False
        try:
            self._call(self._client.connect())
        except BaseException:
            self.close()
            raise

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("this client is closed; make a new one")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def infer(self, *inputs: Any, request_id: str | None = None) -> Any:
        """The model's output(s) for ``inputs``; see ``AsyncSplitClient.infer``."""
        return self._call(self._client.infer(*inputs, request_id=request_id))

    def infer_result(self, *inputs: Any, request_id: str | None = None) -> InferOutcome:
        return self._call(self._client.infer_result(*inputs, request_id=request_id))

    def stream(self, frames: Iterable[Any]) -> Iterator[Any]:
        """Outputs for ``frames``, in order, pipelined (``window`` frames in flight)."""
        agen = self._client.stream(frames)
        try:
            while True:
                try:
                    item = self._call(agen.__anext__())
                except StopAsyncIteration:
                    return
                yield item
        finally:
            if not self._closed:
                self._call(agen.aclose())

    @property
    def plan(self) -> ClientPlan:
        return self._client.plan

    @property
    def stats(self) -> ClientStats:
        return self._client.stats

    @property
    def edges(self) -> list[Any]:
        return self._client.edges

    @property
    def runner(self) -> Any:
        return self._client.runner

    def close(self) -> None:
        if self._closed:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._client.close(), self._loop).result(timeout=10)
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def __enter__(self) -> SplitClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
