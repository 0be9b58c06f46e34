"""Edge node configuration: command-line flags, each with a ``SPLITINFER_EDGE_*`` variable.

A flag given on the command line wins over its environment variable, which wins over the
default. ``--model-repository DIR`` becomes ``SPLITINFER_EDGE_MODEL_REPOSITORY``, and so on.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

ENV_PREFIX = "SPLITINFER_EDGE_"


@dataclass(frozen=True)
class EdgeConfig:
    """Everything the edge node needs to start; made by :func:`parse_config` or by hand."""

    model_repository: str
    listen: str = "0.0.0.0:50051"
    metrics_port: int = 9100
    workers: int = 2
    torch_threads: int = 0
    device: str = "cpu"
    max_batch_size: int = 8
    max_queue_delay_ms: float = 0.0
    max_queue: int = 256
    max_message_bytes: int = 64 << 20
    max_tensor_bytes: int = 256 << 20
    max_tensor_elements: int = 1 << 26
    max_probe_bytes: int = 16 << 20
    tail_cache_size: int = 64
    profile_tails: bool = True
    wait_for_profile: bool = True
    profile_repeats: int = 3
    rescan_interval_s: float = 0.0
    grace_period_s: float = 10.0
    health_port: int = 0
    max_connection_age_s: float = 0.0
    max_connection_age_grace_s: float = 30.0
    keepalive_time_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    output_codec: str = "fp32"
    token_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    log_level: str = "INFO"
    log_format: str = "json"

    def threads_per_worker(self) -> int:
        """``torch_threads``, or when 0 the cores this process may use / ``workers`` (>= 1).

        Workers run batches side by side; each one's OpenMP team should not outnumber its
        share of the cores (on a 2-core machine a 2-thread team in a worker thread, next to
        the event loop's thread, ran a conv tail ~3x slower than 1 thread). Under a
        container's CPU quota (not visible as affinity), set it explicitly.
        """
        if self.torch_threads:
            return self.torch_threads
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
            (os.cpu_count() or 1)
        return max(1, cores // self.workers)

    def __post_init__(self) -> None:
        problems = []
        if self.device not in ("cpu", "cuda"):
            problems.append(f"--device must be cpu or cuda, got {self.device!r}")
        for name in ("workers", "max_batch_size", "max_queue", "max_message_bytes",
                     "max_tensor_bytes", "max_tensor_elements", "tail_cache_size",
                     "profile_repeats"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be >= 1, got "
                                f"{getattr(self, name)}")
        for name in ("max_queue_delay_ms", "grace_period_s", "rescan_interval_s",
                     "torch_threads", "max_probe_bytes", "max_connection_age_s",
                     "max_connection_age_grace_s"):
            if getattr(self, name) < 0:
                problems.append(f"--{name.replace('_', '-')} must be >= 0, got "
                                f"{getattr(self, name)}")
        for name in ("metrics_port", "health_port"):
            if not 0 <= getattr(self, name) <= 65535:
                problems.append(f"--{name.replace('_', '-')} must be 0..65535 (0 = off), got "
                                f"{getattr(self, name)}")
        for name in ("keepalive_time_s", "keepalive_timeout_s"):
            if not getattr(self, name) > 0:
                problems.append(f"--{name.replace('_', '-')} must be > 0, got "
                                f"{getattr(self, name)}")
        if bool(self.tls_cert) != bool(self.tls_key):
            problems.append("--tls-cert and --tls-key go together: give both or neither")
        if self.tls_client_ca and not self.tls_cert:
            problems.append("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        host, sep, port = self.listen.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            problems.append(f"--listen must be HOST:PORT (e.g. 0.0.0.0:50051), got "
                            f"{self.listen!r}")
        if problems:
            raise ValueError("; ".join(problems))


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


# flag, type, help — dests and env names follow from the flag
_FLAGS: list[tuple[str, Callable[[str], Any], str]] = [
    ("--model-repository", str, "directory of bundles: <repo>/<name>/<version>/ (required)"),
    ("--listen", str, "gRPC address HOST:PORT (port 0 picks a free one)"),
    ("--metrics-port", int, "Prometheus /metrics port on all interfaces (0 = off)"),
    ("--workers", int, "compute worker threads (batches run in parallel on these)"),
    ("--torch-threads", int, "torch intra-op threads per worker (0 = the usable cores / "
                             "--workers, at least 1)"),
    ("--device", str, "torch device for the tails: cpu or cuda"),
    ("--max-batch-size", int, "stack up to this many requests into one batch (1 = off)"),
    ("--max-queue-delay-ms", float, "opt-in: hold a batch's first request up to this long "
                                    "for company (0 = never: an idle worker takes a request at "
                                    "once; batches form from what queues while all are busy)"),
    ("--max-queue", int, "requests waiting for compute; past it: RESOURCE_EXHAUSTED"),
    ("--max-message-bytes", int, "largest gRPC message accepted or sent"),
    ("--max-tensor-bytes", int, "largest decoded tensor (codec decode limit)"),
    ("--max-tensor-elements", int, "most elements in one decoded tensor"),
    ("--max-probe-bytes", int, "largest Probe answer"),
    ("--tail-cache-size", int, "tail modules kept built (LRU over model, version, cut)"),
    ("--profile-tails", _bool, "measure every cut's tail latency at load (true/false)"),
    ("--wait-for-profile", _bool, "report ready only once profiling is done (true/false)"),
    ("--profile-repeats", int, "runs per cut when profiling (median is reported)"),
    ("--rescan-interval-s", float, "look for new bundles this often (0 = only at start)"),
    ("--grace-period-s", float, "on SIGTERM, let in-flight requests finish this long"),
    ("--health-port", int, "a second, plaintext port serving only grpc.health.v1, for probes "
                           "that cannot speak TLS (Kubernetes' gRPC probes; 0 = off)"),
    ("--max-connection-age-s", float, "send GOAWAY to connections older than this, so clients "
                                      "re-resolve and reach new replicas (0 = never)"),
    ("--max-connection-age-grace-s", float, "after that GOAWAY, let the connection's calls "
                                            "finish this long"),
    ("--keepalive-time-s", float, "ping a connection idle this long (finds dead clients)"),
    ("--keepalive-timeout-s", float, "drop a connection whose ping is not acked this soon"),
    ("--output-codec", str, "codec for answers when the request names none"),
    ("--token-file", str, "file holding the bearer token every RPC but health must carry"),
    ("--tls-cert", str, "server certificate (PEM); enables TLS"),
    ("--tls-key", str, "server private key (PEM)"),
    ("--tls-client-ca", str, "CA (PEM) that client certificates must chain to: mutual TLS"),
    ("--log-level", str, "DEBUG, INFO, WARNING or ERROR"),
    ("--log-format", str, "json (one object per line) or text"),
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="splitinfer-edge",
        description="splitinfer edge node: serves model tails over gRPC. Every flag can also "
                    f"be set by an environment variable {ENV_PREFIX}<FLAG> (e.g. "
                    f"{ENV_PREFIX}MAX_BATCH_SIZE=16); a flag on the command line wins.")
    defaults = EdgeConfig.__dataclass_fields__
    for flag, kind, text in _FLAGS:
        dest = flag[2:].replace("-", "_")
        default = defaults[dest].default
        env = ENV_PREFIX + dest.upper()
        p.add_argument(flag, dest=dest, type=kind, default=None,
                       help=f"{text} [env {env}; default {default}]")
    return p


def parse_config(argv: Sequence[str] | None = None,
                 environ: Mapping[str, str] | None = None) -> EdgeConfig:
    """Flags, then ``SPLITINFER_EDGE_*`` variables, then defaults. Raises SystemExit(2) on error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    environ = os.environ if environ is None else environ
    values = {}
    for flag, kind, _ in _FLAGS:
        dest = flag[2:].replace("-", "_")
        value = getattr(args, dest)
        env = ENV_PREFIX + dest.upper()
        if value is None and environ.get(env, "") != "":
            try:
                value = kind(environ[env])
            except (ValueError, argparse.ArgumentTypeError) as exc:
                parser.error(f"{env}={environ[env]!r}: {exc}")
        if value is not None:
            values[dest] = value
    if "model_repository" not in values:
        parser.error("--model-repository (or SPLITINFER_EDGE_MODEL_REPOSITORY) is required")
    try:
        return EdgeConfig(**values)
    except ValueError as exc:
        parser.error(str(exc))
    raise AssertionError("unreachable")
