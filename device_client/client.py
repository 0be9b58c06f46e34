"""``SplitClient``: the device client for synchronous code (an ``AsyncSplitClient`` on a
private event-loop thread).

::

    from device_client import SplitClient

    with SplitClient("bundle/", edges=["edge-a:50051", "edge-b:50051"], deadline_s=0.2) as client:
        y = client.infer(x)                 # one input (a tuple of outputs for several)
        for y in client.stream(frames):     # many, pipelined, in order
            ...
        print(client.plan.describe(), client.stats)

The arguments are ``ClientArgs``'s (the same as ``AsyncSplitClient``'s); the constructor
connects (checks the edges, measures the link, plans) and raises on a wrong token or a bundle
the edges do not serve.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    AsyncIterator,
    Coroutine,
    Iterable,
    Iterator,
    Sequence,
    TypeVar,
)

from .aio import AsyncSplitClient, InferOutcome
from .options import ClientArgs, ClientOptions, EdgeSpec

if TYPE_CHECKING:
    from splitinfer.core.link import Link
    from splitinfer.core.profiles import DeviceProfile, EdgeProfile
    from splitinfer.model.manifest import Manifest

    from .edges import EdgeState
    from .planning import ClientPlan
    from .runners import Runner
    from .stats import ClientStats

__all__ = ["SplitClient"]

T = TypeVar("T")


class SplitClient(ClientArgs):
    """Blocking twin of ``AsyncSplitClient``; safe to call from several threads."""

    def _configure(self, bundle: Path, edges: list[EdgeSpec], options: ClientOptions) -> None:
        self._client = AsyncSplitClient.from_options(bundle, edges, options)
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

    def infer_result(self, *inputs: Any, request_id: str | None = None,
                     cut: int | str | None = None, codec: str | None = None) -> InferOutcome:
        """See ``AsyncSplitClient.infer_result``."""
        return self._call(self._client.infer_result(*inputs, request_id=request_id, cut=cut,
                                                    codec=codec))

    def stream(self, frames: Iterable[Any]) -> Iterator[Any]:
        """Outputs for ``frames``, in order, pipelined (``window`` frames in flight)."""
        agen = self._client.stream(frames)
        try:
            while True:
                try:
                    item: Any = self._call(_next(agen))
                except StopAsyncIteration:
                    return
                yield item
        finally:
            if not self._closed:
                self._call(_close(agen))

    def measure_link(self, rounds: int = 3, sizes: Sequence[int] | None = None
                     ) -> tuple[Link, list[tuple[int, float]]]:
        """See ``AsyncSplitClient.measure_link``."""
        return self._call(self._client.measure_link(rounds, sizes))

    @property
    def options(self) -> ClientOptions:
        return self._client.options

    @property
    def plan(self) -> ClientPlan:
        return self._client.plan

    @property
    def stats(self) -> ClientStats:
        return self._client.stats

    @property
    def device_speed(self) -> float:
        return self._client.device_speed

    @property
    def edges(self) -> list[EdgeState]:
        return self._client.edges

    @property
    def runner(self) -> Runner:
        return self._client.runner

    @property
    def manifest(self) -> Manifest:
        return self._client.manifest

    @property
    def device_profile(self) -> DeviceProfile | None:
        return self._client.device_profile

    @property
    def edge_profile(self) -> EdgeProfile | None:
        return self._client.edge_profile

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


async def _next(agen: AsyncIterator[Any]) -> Any:
    return await agen.__anext__()


async def _close(agen: AsyncIterator[Any]) -> None:
    aclose = getattr(agen, "aclose", None)  # an async generator's; other iterators have none
    if aclose is not None:
        await aclose()
