"""Every Prometheus metric of the edge node, in one registry, recorded around the stages.

Names follow Prometheus conventions (``_total`` counters, ``_seconds``/``_bytes`` units). The
servicer calls :meth:`EdgeMetrics.observe_request` once per request with the stage times it
measured; compute code never touches metrics.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from splitinfer.core.timing import StageTiming

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0,
                    5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class EdgeMetrics:
    """The metric objects, bound to their own registry (tests make as many as they like)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "splitinfer_edge_requests_total", "Inference requests by outcome",
            ["model", "version", "cut", "status"], registry=r)
        self.stage_seconds = Histogram(
            "splitinfer_edge_stage_seconds", "Server-side time per stage of a request",
            ["model", "stage"], buckets=_LATENCY_BUCKETS, registry=r)
        self.request_seconds = Histogram(
            "splitinfer_edge_request_seconds", "Server-side time of a whole request",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.bytes_in = Counter(
            "splitinfer_edge_received_bytes_total", "Tensor payload bytes received, by codec",
            ["codec"], registry=r)
        self.bytes_out = Counter(
            "splitinfer_edge_sent_bytes_total", "Tensor payload bytes sent, by codec",
            ["codec"], registry=r)
        self.batch_size = Histogram(
            "splitinfer_edge_batch_size", "Rows per executed batch", ["model"],
            buckets=_BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge(
            "splitinfer_edge_queue_depth", "Requests waiting for a worker", registry=r)
        self.in_flight = Gauge(
            "splitinfer_edge_in_flight_requests", "Requests being handled right now",
            registry=r)
        self.model_load_seconds = Gauge(
            "splitinfer_edge_model_load_seconds", "Time to load a bundle",
            ["model", "version"], registry=r)
        self.models_loaded = Gauge(
            "splitinfer_edge_models_loaded", "Model versions being served", registry=r)
        self.probe_bytes = Counter(
            "splitinfer_edge_probe_bytes_total", "Bytes echoed by Probe", registry=r)

    def observe_request(self, model: str, version: str, cut: int, status: str,
                        timing: StageTiming | None = None) -> None:
        self.requests.labels(model, version, str(cut), status).inc()
        if timing is not None:
            for stage in ("queue", "decode", "compute", "encode"):
                self.stage_seconds.labels(model, stage).observe(getattr(timing, f"{stage}_s"))
            self.request_seconds.labels(model).observe(timing.total_s)

    def observe_batch(self, model: str, rows: int) -> None:
        self.batch_size.labels(model).observe(rows)

    def serve(self, port: int, addr: str = "0.0.0.0") -> tuple[object, int]:
        """Expose ``/metrics`` on ``port`` (0 picks a free one) from a daemon thread.

        Returns the HTTP server (call ``shutdown()`` to stop it) and the port it listens on.
        """
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return server, server.server_port
