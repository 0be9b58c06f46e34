"""Kubernetes manifests (deploy/k8s) are valid objects and agree with each other and the code.

No cluster here. What is checked is what ``kubectl apply`` or the first rollout would trip over:
every document validates against the pinned Kubernetes schemas (offline, strict: a misspelled
field fails); the edge's args plus the ConfigMap's environment are accepted by the real
``parse_config``; probes, ports, Services, PDB, HPA and the prometheus-adapter rule point at
what the Deployment and the edge really serve; the shutdown timings add up; the pod runs as the
Dockerfile's non-root user with the Secrets where the ConfigMap says they are.
"""

from __future__ import annotations

import copy
import dataclasses
import posixpath
import re
import socket
from pathlib import Path
from typing import Any, Callable

import kubernetes_validate
import prometheus_client
import pytest
import yaml

from edge_node.config import ENV_PREFIX, EdgeConfig, parse_config
from edge_node.metrics import EdgeMetrics

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
DOC = ROOT / "docs" / "kubernetes.md"
DOCKERFILE = ROOT / "edge_node" / "Dockerfile"
#: the schemas the manifests must satisfy: 1.30 is the first release with the preStop `sleep`
#: action on by default (beta; GA in 1.34), 1.33 a current one; kubernetes-validate ships both
K8S_VERSIONS = ("1.30", "1.33")
#: seconds the kubelet may need, past preStop + the edge's grace, to see the process exit
STOP_MARGIN_S = 5
Doc = dict[str, Any]


# ---------------------------------------------------------------------------- loading

def _documents() -> list[tuple[str, Doc]]:
    """(file name, object) for every non-empty document of every deploy/k8s/*.yaml."""
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def _get(kind: str, name: str) -> Doc:
    found = [d for _, d in _documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name} in {K8S}, found {len(found)}"
    return found[0]


def _deployment() -> Doc:
    return _get("Deployment", "splitinfer-edge")


def _pod() -> Doc:
    return _deployment()["spec"]["template"]["spec"]


def _container() -> Doc:
    containers = _pod()["containers"]
    assert len(containers) == 1, "the edge pod runs one container"
    return containers[0]


def _env() -> dict[str, str]:
    """The ConfigMap the Deployment's envFrom reads, as the container's environment."""
    refs = [e["configMapRef"]["name"] for e in _container()["envFrom"]]
    assert refs == ["splitinfer-edge"], f"envFrom reads {refs}, expected the splitinfer-edge map"
    return dict(_get("ConfigMap", "splitinfer-edge")["data"])


def _edge_variables() -> dict[str, str]:
    """Every ``SPLITINFER_EDGE_*`` variable the edge reads, with its flag."""
    return {ENV_PREFIX + f.name.upper(): "--" + f.name.replace("_", "-")
            for f in dataclasses.fields(EdgeConfig)}


def _config() -> EdgeConfig:
    return parse_config(_container()["args"], environ=_env())


def _port(name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in _container()["ports"]}
    assert name in ports, f"container port {name!r} missing; it has {sorted(ports)}"
    return ports[name]


def _validate(doc: Doc, version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a network connection fails the test (the schemas ship locally)."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ---------------------------------------------------------------------------- schema

EXPECTED = {("ConfigMap", "splitinfer-edge"), ("Deployment", "splitinfer-edge"),
            ("Service", "splitinfer-edge"), ("Service", "splitinfer-edge-metrics"),
            ("PersistentVolumeClaim", "splitinfer-models"),
            ("PodDisruptionBudget", "splitinfer-edge"),
            ("HorizontalPodAutoscaler", "splitinfer-edge"),
            ("ConfigMap", "splitinfer-prometheus-adapter-rules")}


def test_the_expected_objects_are_there_once_and_namespace_free() -> None:
    seen = [(d["kind"], d["metadata"]["name"]) for _, d in _documents()]
    assert sorted(seen) == sorted(EXPECTED)
    # `kubectl apply -n <ns>` (or a kustomization's namespace:) picks the namespace
    assert [k for k, d in _documents() if "namespace" in d["metadata"]] == []


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("where", [f"{f}:{d['kind']}/{d['metadata']['name']}"
                                   for f, d in _documents()])
def test_every_document_is_valid_against_the_schema(where: str, version: str,
                                                    offline: None) -> None:
    docs = {f"{f}:{d['kind']}/{d['metadata']['name']}": d for f, d in _documents()}
    try:
        _validate(docs[where], version)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{where} is not a valid Kubernetes {version} object at "
                    f"{'.'.join(map(str, exc.path))}: {exc.message}")


def _set(path: str, value: object) -> Callable[[Doc], None]:
    """A change to a Deployment at a dotted path (numbers index lists)."""
    def change(doc: Doc) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = doc
        for p in parents:
            node = node[p]
        node[last] = value
    return change


def _rename(path: str, new: str) -> Callable[[Doc], None]:
    def change(doc: Doc) -> None:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = doc
        for p in parents:
            node = node[p]
        node[new] = node.pop(last)
    return change


C = "spec.template.spec.containers.0"
BREAKAGES = {
    "misspelled field": _rename(f"{C}.imagePullPolicy", "imagePulPolicy"),
    "misspelled probe field": _rename(f"{C}.livenessProbe.periodSeconds", "periodSecond"),
    "string for an integer": _set("spec.template.spec.terminationGracePeriodSeconds", "20"),
    "named port in a gRPC probe": _set(f"{C}.readinessProbe.grpc.port", "health"),
    "list for a mapping": _set(f"{C}.securityContext", ["runAsNonRoot"]),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_a_broken_copy_fails_validation(breakage: str, offline: None) -> None:
    """The schema check can fail: each breakage is one kubectl would refuse."""
    doc = copy.deepcopy(_deployment())
    BREAKAGES[breakage](doc)
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(doc, K8S_VERSIONS[-1])


def test_the_pinned_version_matters(offline: None) -> None:
    """1.28 had no preStop sleep action: the Deployment needs the versions pinned above."""
    with pytest.raises(kubernetes_validate.ValidationError, match="sleep"):
        _validate(_deployment(), "1.28")


# ---------------------------------------------------------------------------- the edge's config

def test_args_and_configmap_make_a_valid_edge_config() -> None:
    assert not _container().get("command"), "keep the image's ENTRYPOINT (splitinfer-edge)"
    cfg = _config()  # SystemExit(2) with the parser's message if a flag or value is wrong
    assert cfg.model_repository == "/models"
    assert cfg.health_port > 0, "probes need --health-port (Kubernetes' gRPC probe has no TLS)"
    assert cfg.tls_cert and cfg.token_file, "the fleet serves TLS with a token"
    assert cfg.max_connection_age_s > 0, "without it, clients never reach replicas added later"
    assert cfg.log_format == "json"


def test_configmap_keys_are_edge_variables_not_repeating_the_args() -> None:
    names = _edge_variables()
    unknown = sorted(set(_env()) - set(names))
    assert not unknown, f"the edge ignores these (misspelled?): {unknown}"
    given = {a for a in _container()["args"] if a.startswith("--")}
    shadowed = sorted(k for k in _env() if names[k] in given)
    assert not shadowed, f"the args override these, so they do nothing: {shadowed}"


def test_container_ports_probes_and_scrape_annotations_match_the_flags() -> None:
    cfg = _config()
    assert _port("grpc") == int(cfg.listen.rpartition(":")[2])
    assert _port("metrics") == cfg.metrics_port
    assert _port("health") == cfg.health_port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert _container()[probe]["grpc"]["port"] == cfg.health_port, probe
    notes = _deployment()["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert notes["prometheus.io/port"] == str(cfg.metrics_port)
    assert notes["prometheus.io/path"] == "/metrics"


def _dockerfile_start_period_s() -> float:
    found = re.search(r"--start-period=(\d+)s", DOCKERFILE.read_text())
    assert found, "the Dockerfile's HEALTHCHECK names a --start-period"
    return float(found.group(1))


def test_shutdown_and_probe_timings_add_up() -> None:
    pod, box = _pod(), _container()
    pre_stop = box["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = _config().grace_period_s
    total = pod["terminationGracePeriodSeconds"]
    assert total >= pre_stop + grace + STOP_MARGIN_S, (
        f"terminationGracePeriodSeconds {total} < preStop {pre_stop} + grace {grace} + "
        f"{STOP_MARGIN_S}: the kubelet would SIGKILL requests still in flight")
    live = box["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > total, (
        "a draining pod answers NOT_SERVING until it exits: liveness must not kill it first")
    start = box["startupProbe"]
    assert start["periodSeconds"] * start["failureThreshold"] >= _dockerfile_start_period_s()


def test_rolling_update_and_replica_count() -> None:
    spec = _deployment()["spec"]
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    # `kubectl apply` would reset a scaled-out fleet to a replicas value written here
    assert "replicas" not in spec, "the HorizontalPodAutoscaler owns the replica count"
    hpa = _get("HorizontalPodAutoscaler", "splitinfer-edge")["spec"]
    assert hpa["minReplicas"] >= 3
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] > 0
    pdb = _get("PodDisruptionBudget", "splitinfer-edge")["spec"]
    assert pdb.get("maxUnavailable") == 1 or pdb.get("minAvailable", 0) < hpa["minReplicas"]


def test_selectors_and_targets_point_at_the_deployment() -> None:
    deploy = _deployment()
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    selector = deploy["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    for name in ("splitinfer-edge", "splitinfer-edge-metrics"):
        assert _get("Service", name)["spec"]["selector"] == selector, name
    pdb = _get("PodDisruptionBudget", "splitinfer-edge")
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    for spread in _pod()["topologySpreadConstraints"]:
        assert spread["labelSelector"]["matchLabels"] == selector
    target = _get("HorizontalPodAutoscaler", "splitinfer-edge")["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": "apps/v1", "kind": "Deployment",
                      "name": deploy["metadata"]["name"]}


def _target_port(service: str) -> int:
    (port,) = _get("Service", service)["spec"]["ports"]
    target = port.get("targetPort", port["port"])
    return _port(target) if isinstance(target, str) else int(target)


def test_grpc_service_is_headless_and_services_reach_the_right_ports() -> None:
    spec = _get("Service", "splitinfer-edge")["spec"]
    assert spec.get("clusterIP") == "None", "headless: clients must resolve every pod IP"
    assert not spec.get("publishNotReadyAddresses"), "starting/draining pods stay out of DNS"
    (port,) = spec["ports"]
    assert port["port"] == _target_port("splitinfer-edge") == _port("grpc")
    assert _target_port("splitinfer-edge-metrics") == _config().metrics_port


def _service_link_variables() -> set[str]:
    """The variables the kubelet injects for the Services with a cluster IP (headless: none)."""
    out = set()
    for _, doc in _documents():
        if doc["kind"] != "Service" or doc["spec"].get("clusterIP") == "None":
            continue
        svc = doc["metadata"]["name"].upper().replace("-", "_")
        out |= {f"{svc}_SERVICE_HOST", f"{svc}_SERVICE_PORT", f"{svc}_PORT"}
        for p in doc["spec"]["ports"]:
            proto = p.get("protocol", "TCP")
            out.add(f"{svc}_PORT_{p['port']}_{proto}")
            if "name" in p:
                out.add(f"{svc}_SERVICE_PORT_{p['name'].upper().replace('-', '_')}")
    return out


def test_service_links_cannot_set_edge_flags() -> None:
    clash = sorted(_service_link_variables() & set(_edge_variables()))
    if clash:
        assert _pod().get("enableServiceLinks") is False, (
            f"Service links would set {clash} (e.g. to tcp://<ip>:9100), which the edge reads "
            f"as flags: set enableServiceLinks: false")


# ---------------------------------------------------------------------------- autoscaling

def _adapter_rules() -> list[Doc]:
    text = _get("ConfigMap", "splitinfer-prometheus-adapter-rules")["data"]["config.yaml"]
    return yaml.safe_load(text)["rules"]


def test_hpa_metric_is_the_adapter_rule_and_an_edge_gauge() -> None:
    (metric,) = _get("HorizontalPodAutoscaler", "splitinfer-edge")["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    name = metric["pods"]["metric"]["name"]
    rules = [r for r in _adapter_rules() if r["name"]["as"] == name]
    assert len(rules) == 1, f"no prometheus-adapter rule exposes {name!r}"
    rule = rules[0]
    assert re.fullmatch(rule["name"]["matches"], name)
    assert rule["seriesQuery"].startswith(name + "{")
    for label in ("namespace", "pod"):
        assert f'{label}!=""' in rule["seriesQuery"]
        assert rule["resources"]["overrides"][label] == {"resource": label}
    for part in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
        assert part in rule["metricsQuery"]
    exposition = prometheus_client.generate_latest(EdgeMetrics().registry).decode()
    # avg_over_time suits a gauge; a counter would need rate()
    assert f"# TYPE {name} gauge" in exposition.splitlines(), f"the edge exports no gauge {name}"


def test_the_doc_gives_the_same_adapter_rule_for_helm() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), flags=re.S)
    helm = [b for b in map(yaml.safe_load, blocks)
            if isinstance(b, dict) and isinstance(b.get("rules"), dict) and "custom" in b["rules"]]
    assert len(helm) == 1, "docs/kubernetes.md shows one `rules: custom:` block (Helm values)"
    assert helm[0]["rules"]["custom"] == _adapter_rules()


# ---------------------------------------------------------------------------- volumes, security

def _mount(path: str) -> tuple[Doc, Doc]:
    """The volumeMount at ``path`` and its volume."""
    mounts = [m for m in _container()["volumeMounts"] if m["mountPath"] == path]
    assert len(mounts) == 1, f"nothing (or more than one thing) is mounted at {path}"
    volumes = {v["name"]: v for v in _pod()["volumes"]}
    return mounts[0], volumes[mounts[0]["name"]]


SECRET_FILES = {"TOKEN_FILE": ("splitinfer-edge-token", "token"),
                "TLS_CERT": ("splitinfer-edge-tls", "tls.crt"),
                "TLS_KEY": ("splitinfer-edge-tls", "tls.key")}


@pytest.mark.parametrize("setting", sorted(SECRET_FILES))
def test_secret_files_are_mounted_where_the_configmap_says(setting: str) -> None:
    secret, key = SECRET_FILES[setting]
    path = _env()[ENV_PREFIX + setting]
    mount, volume = _mount(posixpath.dirname(path))
    assert mount.get("readOnly") is True
    assert volume["secret"]["secretName"] == secret
    items = {i["path"]: i["key"] for i in volume["secret"].get("items", [])}
    assert items.get(posixpath.basename(path), posixpath.basename(path)) == key
    assert volume["secret"]["defaultMode"] & 0o004 == 0, "keys readable by the pod's group only"


def test_the_doc_creates_the_secrets_the_pod_mounts() -> None:
    text = DOC.read_text()
    assert "kubectl create secret generic splitinfer-edge-token --from-file=token=" in text
    assert "kubectl create secret tls splitinfer-edge-tls" in text


def test_model_repository_is_the_read_only_claim() -> None:
    mount, volume = _mount(_config().model_repository)
    assert mount.get("readOnly") is True
    claim = volume["persistentVolumeClaim"]
    assert claim.get("readOnly") is True
    pvc = _get("PersistentVolumeClaim", claim["claimName"])
    assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"], "every replica mounts it"


def _dockerfile_user() -> tuple[int, int]:
    found = re.search(r"^USER\s+(\d+):(\d+)\s*$", DOCKERFILE.read_text(), flags=re.M)
    assert found, "the Dockerfile sets a numeric USER uid:gid"
    return int(found.group(1)), int(found.group(2))


def test_pod_runs_as_the_images_non_root_user_locked_down() -> None:
    uid, gid = _dockerfile_user()
    pod, box = _pod()["securityContext"], _container()["securityContext"]
    for ctx in (pod, box):
        assert ctx["runAsNonRoot"] is True
        assert (ctx["runAsUser"], ctx["runAsGroup"]) == (uid, gid) and uid != 0
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    assert box["readOnlyRootFilesystem"] is True
    assert box["allowPrivilegeEscalation"] is False
    assert box["capabilities"] == {"drop": ["ALL"]}
    _, tmp = _mount("/tmp")
    assert "emptyDir" in tmp, "a read-only root needs a writable /tmp"
    assert _pod()["automountServiceAccountToken"] is False


def _cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_threads_match_the_cpu_request_and_memory_is_bounded() -> None:
    cfg, res = _config(), _container()["resources"]
    assert cfg.torch_threads > 0, "torch's default counts the node's cores, not the pod's"
    assert cfg.workers * cfg.torch_threads == _cores(res["requests"]["cpu"])
    assert "cpu" not in res.get("limits", {}), "a CPU limit throttles torch mid-batch"
    assert res["limits"]["memory"] == res["requests"]["memory"]
