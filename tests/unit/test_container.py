"""Deployment files agree with each other and with the code: compose, Dockerfile, Prometheus.

No Docker engine here: the image is not built. What is checked is what a build or
``docker compose up`` would trip over first: the edge's command line is one the real
``parse_config`` accepts, the volume is where that command looks for models, Prometheus scrapes
the port the edge serves metrics on, every COPY source exists and is not dockerignored, and the
container health probe (``python -m edge_node.healthcheck``) answers right against a real gRPC
health service.
"""

from __future__ import annotations

import fnmatch
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge_node.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "edge_node" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
PROMETHEUS_YML = ROOT / "deploy" / "prometheus" / "prometheus.yml"
FIXED_FLAGS = ["--model-repository", "--listen", "--metrics-port", "--token-file", "--tls-cert",
               "--tls-key", "--tls-client-ca", "--device", "--max-batch-size",
               "--max-queue-delay-ms", "--max-queue"]


# ---------------------------------------------------------------------------- file readers

def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction; continuations joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return out


def _words(args: str) -> list[str]:
    """Exec form (JSON list) or shell form, as a list of words."""
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def _instructions(name: str) -> list[str]:
    return [args for word, args in _dockerfile() if word == name]


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _edge() -> dict:
    return _compose()["services"]["edge"]


def _edge_argv() -> list[str]:
    """The edge container's full command line: entrypoint (compose's, else the image's) + command."""
    edge = _edge()
    entrypoint = edge.get("entrypoint")
    if entrypoint is None:
        entrypoint = _words(_instructions("ENTRYPOINT")[-1])
    command = edge.get("command")
    if command is None:
        command = _words(_instructions("CMD")[-1])
    def as_list(v):
        return (shlex.split(v) if isinstance(v, str) else [str(w) for w in v])
    return as_list(entrypoint) + as_list(command)


def _edge_environ() -> dict[str, str]:
    env = _edge().get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _volumes(service: dict) -> dict[str, str]:
    """Short-syntax volumes, target -> source."""
    out = {}
    for v in service.get("volumes", []):
        parts = v.split(":")
        out[parts[1]] = parts[0]
    return out


def _edge_config():
    argv = _edge_argv()
    assert argv[0] == "splitinfer-edge", argv
    return parse_config(argv[1:], environ=_edge_environ())


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


# ---------------------------------------------------------------------------- compose

def test_compose_has_edge_and_prometheus():
    services = _compose()["services"]
    assert {"edge", "prometheus"} <= set(services)
    build = services["edge"]["build"]
    assert (ROOT / build["context"] / build["dockerfile"]) == DOCKERFILE
    assert "edge" in services["prometheus"].get("depends_on", [])


def test_edge_command_runs_the_console_script_once():
    # the image's ENTRYPOINT is splitinfer-edge: a command naming it again would pass
    # "splitinfer-edge" as a stray argument unless compose empties the entrypoint
    argv = _edge_argv()
    assert argv[0] == "splitinfer-edge" and "splitinfer-edge" not in argv[1:], argv
    assert "splitinfer-edge = edge_node.__main__:main" in (ROOT / "setup.cfg").read_text()


def test_edge_command_and_environment_are_accepted_by_parse_config():
    config = _edge_config()
    env = _edge_environ()
    if "SPLITINFER_EDGE_MAX_BATCH_SIZE" in env:
        assert config.max_batch_size == int(env["SPLITINFER_EDGE_MAX_BATCH_SIZE"])
    volumes = _volumes(_edge())
    assert config.model_repository in volumes, (
        f"--model-repository {config.model_repository} is not a mounted volume: {volumes}")


def test_edge_publishes_grpc_and_metrics_ports_and_probes_health():
    config = _edge_config()
    published = {int(str(p).split(":")[-1]) for p in _edge()["ports"]}
    assert {_port(config.listen), config.metrics_port} <= published
    test = _edge()["healthcheck"]["test"]
    words = test[1:] if test[0] in ("CMD", "CMD-SHELL") else test
    words = shlex.split(words[0]) if len(words) == 1 else words
    assert words[:3] == ["python", "-m", "edge_node.healthcheck"], words
    assert _port(words[words.index("--address") + 1]) == _port(config.listen)


def test_prometheus_mounts_the_scrape_config_and_scrapes_the_metrics_port():
    prom = _compose()["services"]["prometheus"]
    assert prom["image"].startswith("prom/prometheus")
    volumes = _volumes(prom)
    source = volumes.get("/etc/prometheus/prometheus.yml")
    assert source is not None, volumes
    assert (ROOT / source).resolve() == PROMETHEUS_YML

    scrape = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert scrape["global"]["scrape_interval"] == "5s"
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    targets = [t for sc in jobs["splitinfer-edge"]["static_configs"] for t in sc["targets"]]
    assert targets, "job splitinfer-edge has no targets"
    for target in targets:
        host, _, port = target.rpartition(":")
        assert host == "edge", f"{target}: scrape the compose service 'edge'"
        assert int(port) == _edge_config().metrics_port, (
            f"{target}: the edge serves metrics on --metrics-port {_edge_config().metrics_port}")


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (Debian package 'prometheus'; .ci/run "
                           "installs it when root with apt-get)")
def test_promtool_accepts_the_scrape_config():
    out = subprocess.run(["promtool", "check", "config", str(PROMETHEUS_YML)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------------------- entry point

def test_entry_point_help_lists_every_fixed_flag():
    out = subprocess.run([sys.executable, "-m", "edge_node", "--help"], capture_output=True,
                         text=True, cwd=ROOT, timeout=180)
    assert out.returncode == 0, out.stderr
    missing = [flag for flag in FIXED_FLAGS if flag not in out.stdout]
    assert not missing, f"`python -m edge_node --help` does not mention {missing}"


# ---------------------------------------------------------------------------- Dockerfile

def test_dockerfile_base_user_ports_healthcheck():
    base = _instructions("FROM")
    assert base and "slim" in base[0].split()[0], base
    users = _instructions("USER")
    assert users, "no USER: the container would run as root"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]
    exposed = {int(p.split("/")[0]) for args in _instructions("EXPOSE") for p in args.split()}
    assert {50051, 9100} <= exposed
    check = _instructions("HEALTHCHECK")
    assert len(check) == 1 and "edge_node.healthcheck" in check[0], check
    assert _words(_instructions("ENTRYPOINT")[-1]) == ["splitinfer-edge"]
    image_config = parse_config(_words(_instructions("CMD")[-1]), environ={})
    assert image_config.model_repository == "/models"
    assert image_config.metrics_port in exposed and _port(image_config.listen) in exposed


def _ignored(path: str, patterns: list[str]) -> bool:
    """Rough .dockerignore matching: a pattern matching the path or one of its parents."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        bare = pattern[3:] if pattern.startswith("**/") else None
        for p in prefixes:
            if fnmatch.fnmatchcase(p, pattern) or (bare and fnmatch.fnmatchcase(
                    p.rsplit("/", 1)[-1], bare)):
                ignored = not negate
    return ignored


def _dockerignore() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_every_copy_source_exists_and_is_not_dockerignored():
    patterns = _dockerignore()
    sources = []
    for args in _instructions("COPY") + _instructions("ADD"):
        words = _words(args)
        if any(w.startswith("--from") for w in words):
            continue  # from another stage, not the build context
        sources += [w for w in words if not w.startswith("--")][:-1]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such path in the repository"
        assert not _ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"


def test_dockerignore_keeps_local_and_heavy_files_out():
    patterns = _dockerignore()
    for path in (".venv", ".git", "tests", "benchmarks/results", ".pytest_cache",
                 "edge_node/__pycache__"):
        assert _ignored(path, patterns), f"{path} would be sent to the Docker build context"
    for path in ("setup.cfg", "pyproject.toml", "README.md", "splitinfer/codec.py",
                 "edge_node/healthcheck.py"):
        assert not _ignored(path, patterns), f"{path} is needed by the build"


# ---------------------------------------------------------------------------- healthcheck
