"""The deploy files for a real cluster, checked without a cluster and without Docker.

- Every kustomization under ``deploy/k8s`` (the base and each overlay) renders with kustomize, and
  kubeconform finds every object valid for Kubernetes 1.31 and 1.37, strictly (no unknown field, no
  duplicate key, no kind without a schema), against schemas held locally (``tests/deploy_tools.py``).
- What a schema cannot know, from the project itself: every environment variable set is a setting of
  ``stream.settings`` and each container's resolved configuration passes ``Settings.from_env`` (bad
  config stops a process at start); the arguments are commands of ``stream.cli``; each probe's path is
  served on its port (the API's routes, prometheus_client's /metrics); secrets only come from a
  Secret, and the example's Secret holds placeholders; every container has requests and limits, runs
  as the image's non-root user on a read-only root file system without capabilities; the workers have
  their static membership id, volume and grace period; services, budgets and the autoscaler select
  what exists; the Prometheus job finds the pods and their /metrics.
- ``deploy/image/Containerfile``: hadolint, a pinned base, the non-root user, the entrypoint and its
  default command, and the runtime pins (``deploy/image/constraints.txt``).

The tools are fetched once into ``.cache/deploy-tools`` (``make deploy-tools``, which ``.ci/run``
runs; or by this test's first run, about a minute). Where they cannot be (no Go to build them), this
test is skipped on a developer's machine, and fails under CI.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from stream.cli import parser
from stream.localstack.prometheus import job_name
from stream.settings import Settings
from tests.deploy_tools import KUBERNETES_VERSIONS, Tools, ToolsUnavailable, ensure_tools

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S = REPO_ROOT / "deploy" / "k8s"
CONTAINERFILE = REPO_ROOT / "deploy" / "image" / "Containerfile"
CONSTRAINTS = REPO_ROOT / "deploy" / "image" / "constraints.txt"
SCRAPE_CONFIG = K8S / "prometheus-scrape.yml"
KUSTOMIZATIONS = {"base": K8S / "base", **{f"overlays/{p.name}": p for p in sorted((K8S / "overlays").iterdir()) if p.is_dir()}}
OVERLAYS = [name for name in KUSTOMIZATIONS if name.startswith("overlays/")]

SETTINGS = {name.upper() for name in Settings.model_fields}
#: The settings that are secrets: never logged, never in a ConfigMap (DATABASE_URL holds a password).
SECRET_SETTINGS = {name.upper() for name, field in Settings.model_fields.items() if field.repr is False}
#: The image's entrypoint, which no manifest overrides: a container's args are a command of stream.cli.
ENTRYPOINT = ["python", "-m", "stream"]
#: Which workload runs which command.
COMMANDS = {("StatefulSet", "cashback-worker"): "worker", ("Deployment", "cashback-sink"): "sink"}
COMMANDS |= {("Deployment", "cashback-api"): "api", ("Job", "cashback-migrate"): "migrate"}
WORKLOADS = ("Deployment", "StatefulSet", "Job")
PLACEHOLDER = "REPLACE-ME"
LOOPBACK = ("127.", "localhost", "::1")


# --- the tools and the rendered objects ---------------------------------------------------------


@pytest.fixture(scope="module")
def tools() -> Tools:
    try:
        return ensure_tools()
    except ToolsUnavailable as error:
        message = f"the deploy tools are missing ({error}); `make deploy-tools` fetches them"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _run(*args: str | Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], input=stdin, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def rendered(tools: Tools) -> dict[str, str]:
    """Each kustomization's ``kustomize build`` output."""
    output = {}
    for name, directory in KUSTOMIZATIONS.items():
        built = _run(tools.kustomize, "build", directory)
        assert built.returncode == 0, f"kustomize build {directory}: {built.stderr}"
        output[name] = built.stdout
    return output


@pytest.fixture(scope="module")
def objects(rendered: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    return {name: [o for o in yaml.safe_load_all(text) if o] for name, text in rendered.items()}


def _kubeconform(tools: Tools, text: str, version: str) -> tuple[int, dict[str, Any]]:
    result = _run(
        tools.kubeconform,
        "-strict",
        "-summary",
        "-output",
        "json",
        "-kubernetes-version",
        version,
        "-schema-location",
        tools.schemas,  # only the local schemas: nothing is downloaded, a missing schema is an error
        "-",
        stdin=text,
    )
    return result.returncode, json.loads(result.stdout)


def _pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, its pod template) for every workload."""
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            yield doc, doc["spec"]["template"]


def _containers(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    """(workload, pod template, container) for every container, init containers included."""
    for workload, template in _pod_specs(docs):
        for container in template["spec"].get("initContainers", []) + template["spec"]["containers"]:
            yield workload, template, container


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The object of that kind whose name is ``name`` (or a generated ``name-<hash>``)."""
    found = [
        d for d in docs if d["kind"] == kind and re.fullmatch(rf"{re.escape(name)}(-[a-z0-9]{{10}})?", d["metadata"]["name"])
    ]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def _environment(docs: list[dict[str, Any]], workload: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """The environment the container gets (ConfigMaps and Secrets resolved; an optional key that is
    absent stays unset), as Kubernetes makes it: envFrom first, then env."""
    pod_name = f"{workload['metadata']['name']}-0"
    environment: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            environment |= _find(docs, "ConfigMap", source["configMapRef"]["name"]).get("data", {})
        else:
            environment |= _secret_data(_find(docs, "Secret", source["secretRef"]["name"]))
    for variable in container.get("env", []):
        if "value" in variable:
            environment[variable["name"]] = variable["value"]
            continue
        reference = variable["valueFrom"]
        if "fieldRef" in reference:
            assert reference["fieldRef"]["fieldPath"] == "metadata.name", variable
            environment[variable["name"]] = pod_name
            continue
        kind, key_ref = (
            ("ConfigMap", reference["configMapKeyRef"])
            if "configMapKeyRef" in reference
            else ("Secret", reference["secretKeyRef"])
        )
        source = _find(docs, kind, key_ref["name"])
        data = source.get("data", {}) if kind == "ConfigMap" else _secret_data(source)
        if key_ref["key"] in data:
            environment[variable["name"]] = data[key_ref["key"]]
        else:
            assert key_ref.get("optional"), f"{container['name']}: {variable['name']} names {kind} key {key_ref['key']}, absent"
    return environment


def _secret_data(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()} | secret.get("stringData", {})


def _args(container: dict[str, Any]) -> list[str]:
    return list(container.get("args", []))


def _command(arguments: list[str]) -> str:
    """The stream.cli command these arguments run; a failure names them (argparse would exit)."""
    try:
        return str(parser().parse_args(arguments).command)
    except SystemExit:
        pytest.fail(f"`python -m stream {' '.join(arguments)}` is not a command of stream.cli")


# --- Kubernetes' own rules ------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("kustomization", list(KUSTOMIZATIONS))
def test_every_object_is_valid_for_kubernetes(tools: Tools, rendered: dict[str, str], kustomization: str, version: str) -> None:
    count = len([doc for doc in yaml.safe_load_all(rendered[kustomization]) if doc])
    code, report = _kubeconform(tools, rendered[kustomization], version)
    problems = [f"{r['kind']} {r['name']}: {r['status']}: {r['msg']}" for r in report.get("resources", [])]
    assert code == 0, "\n".join(problems)
    assert report["summary"] == {"valid": count, "invalid": 0, "errors": 0, "skipped": 0}


def test_the_validation_is_strict_and_offline(tools: Tools, objects: dict[str, list[dict[str, Any]]]) -> None:
    """What kubeconform must refuse, so that its passing above means something: an unknown field deep
    in a pod template, a value of the wrong type, and a kind it holds no schema for."""
    docs = objects[OVERLAYS[0]]
    worker = copy.deepcopy(_find(docs, "StatefulSet", "cashback-worker"))
    worker["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pth"] = "/metrics"
    wrong_type = copy.deepcopy(_find(docs, "Deployment", "cashback-sink"))
    wrong_type["spec"]["replicas"] = "two"
    unknown = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "x"}, "spec": {}}
    for bad, status in ((worker, "statusInvalid"), (wrong_type, "statusInvalid"), (unknown, "statusError")):
        code, report = _kubeconform(tools, yaml.safe_dump(bad), KUBERNETES_VERSIONS[-1])
        assert code != 0 and [r["status"] for r in report["resources"]] == [status], report


# --- the project's facts --------------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", list(KUSTOMIZATIONS))
def test_every_variable_set_is_a_setting_and_no_secret_is_in_plain_config(
    objects: dict[str, list[dict[str, Any]]], kustomization: str
) -> None:
    docs = objects[kustomization]
    for config_map in (d for d in docs if d["kind"] == "ConfigMap"):
        data = config_map.get("data", {})
        assert set(data) <= SETTINGS, f"{config_map['metadata']['name']}: not settings: {set(data) - SETTINGS}"
        assert not set(data) & SECRET_SETTINGS, (
            f"{config_map['metadata']['name']}: secrets in a ConfigMap: {set(data) & SECRET_SETTINGS}"
        )
        for key, value in data.items():
            assert not re.search(r"://[^/@\s]+:[^/@\s]+@", value), f"{key}: a password in a URL"
    for secret in (d for d in docs if d["kind"] == "Secret"):
        assert set(_secret_data(secret)) <= SETTINGS, secret["metadata"]["name"]
        for key, value in _secret_data(secret).items():
            assert PLACEHOLDER in value, f"Secret {secret['metadata']['name']}: {key} is not a placeholder: never commit a secret"
    for workload, _, container in _containers(docs):
        where = f"{workload['metadata']['name']}/{container['name']}"
        names = [v["name"] for v in container.get("env", [])]
        assert len(names) == len(set(names)), f"{where}: a variable set twice"
        assert set(names) <= SETTINGS, f"{where}: not settings: {set(names) - SETTINGS}"
        for variable in container.get("env", []):
            if variable["name"] in SECRET_SETTINGS:
                assert "secretKeyRef" in variable.get("valueFrom", {}), f"{where}: {variable['name']} not from a Secret"
        for source in container.get("envFrom", []):
            assert "prefix" not in source, f"{where}: a prefix would rename the settings"


@pytest.mark.parametrize("kustomization", list(KUSTOMIZATIONS))
def test_each_container_runs_a_command_of_the_cli(objects: dict[str, list[dict[str, Any]]], kustomization: str) -> None:
    docs = objects[kustomization]
    assert {(w["kind"], w["metadata"]["name"]) for w, _ in _pod_specs(docs)} == set(COMMANDS)
    for workload, _, container in _containers(docs):
        assert "command" not in container, "the image's entrypoint (python -m stream) runs every container"
        assert _command(_args(container)) == COMMANDS[workload["kind"], workload["metadata"]["name"]]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_container_configuration_is_valid_for_its_process(objects: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    """Resolved as Kubernetes would resolve it, each container's environment is one its process starts
    with, and says what running in a pod needs."""
    docs = objects[overlay]
    for workload, template, container in _containers(docs):
        environment = _environment(docs, workload, container)
        settings = Settings.from_env(environment)  # ConfigError: the process would stop at start
        command = _args(container)[0]
        where = f"{workload['metadata']['name']}/{container['name']}"
        if command in ("worker", "sink"):
            assert settings.metrics_port, f"{where}: METRICS_PORT 0 serves no /metrics (and the probes fail)"
            assert not settings.metrics_host.startswith(LOOPBACK), f"{where}: /metrics on loopback is unreachable"
            assert settings.dead_letter_hash_key, f"{where}: without DEAD_LETTER_HASH_KEY each process hashes with its own key"
        if command == "api":
            assert not settings.api_host.startswith(LOOPBACK), f"{where}: the API on loopback is unreachable"
            assert settings.api_auth_jwks and settings.api_auth_issuer, f"{where}: the API refuses to start without them"
        if command == "worker":
            _check_worker(docs, workload, template, container, settings)


def _check_worker(
    docs: list[dict[str, Any]], workload: dict[str, Any], template: dict[str, Any], container: dict[str, Any], settings: Settings
) -> None:
    assert workload["kind"] == "StatefulSet"
    identity = next(v for v in container["env"] if v["name"] == "WORKER_INSTANCE_ID")
    assert identity["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", "static membership: the pod's stable name"
    claims = {claim["metadata"]["name"] for claim in workload["spec"]["volumeClaimTemplates"]}
    data_dir = Path(settings.worker_data_dir)
    assert data_dir.is_absolute()
    mounts = [m for m in container["volumeMounts"] if m["name"] in claims and data_dir.is_relative_to(m["mountPath"])]
    assert mounts, f"WORKER_DATA_DIR {data_dir} is not on a volume of the StatefulSet's claims"
    assert workload["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Delete"
    replicas = workload["spec"].get("replicas", 1)
    assert replicas <= settings.topic_partitions, f"{replicas} workers for {settings.topic_partitions} partitions: some idle"
    # Longer than the stop the chaos run allows (30 s) and than the session timeout.
    assert template["spec"]["terminationGracePeriodSeconds"] >= max(30, settings.worker_session_timeout_s)
    service = _find(docs, "Service", workload["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"


def _api_served_paths() -> Any:
    """A predicate: whether the balance API answers GET on a path (its app, built offline)."""
    from starlette.routing import Match

    from stream.api import create_app
    from stream.composition import System
    from tests.integration.conftest import api_auth_env

    with tempfile.TemporaryDirectory() as directory:
        settings = Settings.from_env(api_auth_env(Path(directory)))
        system = System(settings)
        app = create_app(settings, system.codec, system.catalogue)

    def served(path: str) -> bool:
        scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": [], "query_string": b""}
        return any(route.matches(scope)[0] == Match.FULL for route in app.router.routes)

    return served


def _metrics_server_serves(path: str) -> bool:
    """Whether the worker's and the sink's metrics server (prometheus_client's WSGI app, as
    ``stream.metrics.serve`` starts it) answers ``path`` with the project's metrics."""
    from prometheus_client import make_wsgi_app

    import stream.metrics  # noqa: F401 - registers the project's metrics

    statuses: list[str] = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "wsgi.url_scheme": "http"}
    body = b"".join(make_wsgi_app()(environ, lambda status, headers: statuses.append(status)))
    return statuses == ["200 OK"] and b"cashback_events_consumed_total" in body


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    return int(number)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_scrape_annotations_hit_real_endpoints(objects: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = objects[overlay]
    api_serves = _api_served_paths()
    for workload, template, container in _containers(docs):
        settings = Settings.from_env(_environment(docs, workload, container))
        command = _args(container)[0]
        where = f"{workload['metadata']['name']}/{container['name']}"
        probes = {kind: container[kind] for kind in ("startupProbe", "livenessProbe", "readinessProbe") if kind in container}
        if command in ("worker", "sink", "api"):
            assert set(probes) == {"startupProbe", "livenessProbe", "readinessProbe"}, where
        if command == "api":
            assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for kind, probe in probes.items():
            path, port = probe["httpGet"]["path"], _port_number(container, probe["httpGet"]["port"])
            if command == "api":
                assert port == settings.api_port and api_serves(path), f"{where} {kind}: the API does not serve {path} on {port}"
            else:
                assert port == settings.metrics_port and path == "/metrics" and _metrics_server_serves(path), f"{where} {kind}"
        annotations = template["metadata"].get("annotations", {})
        if command in ("worker", "sink", "api"):
            assert annotations.get("prometheus.io/scrape") == "true", where
            port = int(annotations["prometheus.io/port"])
            assert port in [p["containerPort"] for p in container["ports"]]
            assert port == (settings.api_port if command == "api" else settings.metrics_port), where
            assert annotations["prometheus.io/path"] == "/metrics"
            assert api_serves("/metrics") if command == "api" else _metrics_server_serves("/metrics")


def _containerfile_user() -> int:
    return int(_containerfile()[-1]["USER"][-1].split(":")[0])


@pytest.mark.parametrize("kustomization", list(KUSTOMIZATIONS))
def test_every_container_is_locked_down_and_has_resources(objects: dict[str, list[dict[str, Any]]], kustomization: str) -> None:
    user = _containerfile_user()
    for workload, template, container in _containers(objects[kustomization]):
        where = f"{workload['metadata']['name']}/{container['name']}"
        pod = template["spec"]
        assert pod["automountServiceAccountToken"] is False, where
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == user, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True, where
        assert context["capabilities"]["drop"] == ["ALL"] and "add" not in context["capabilities"], where
        assert "/tmp" in [m["mountPath"] for m in container.get("volumeMounts", [])], f"{where}: a read-only root needs a /tmp"
        resources = container.get("resources", {})
        for bound in ("requests", "limits"):
            assert set(resources.get(bound, {})) >= {"cpu", "memory"}, f"{where}: {bound} of cpu and memory"


@pytest.mark.parametrize("kustomization", list(KUSTOMIZATIONS))
def test_services_budgets_and_the_autoscaler_select_what_exists(
    objects: dict[str, list[dict[str, Any]]], kustomization: str
) -> None:
    docs = objects[kustomization]
    pods = [(w, t) for w, t in _pod_specs(docs)]

    def selected(selector: dict[str, str]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        return [(w, t) for w, t in pods if selector.items() <= t["metadata"]["labels"].items()]

    for workload, template in pods:
        if workload["kind"] != "Job":
            assert workload["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    for service in (d for d in docs if d["kind"] == "Service"):
        targets = selected(service["spec"]["selector"])
        assert len(targets) == 1, service["metadata"]["name"]
        port_names = {p["name"] for c in targets[0][1]["spec"]["containers"] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names, service["metadata"]["name"]
    budgets = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert {selected(b["spec"]["selector"]["matchLabels"])[0][0]["metadata"]["name"] for b in budgets} == {
        "cashback-api",
        "cashback-worker",
        "cashback-sink",
    }
    for budget in budgets:
        assert len(selected(budget["spec"]["selector"]["matchLabels"])) == 1
    (autoscaler,) = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    target = _find(docs, autoscaler["spec"]["scaleTargetRef"]["kind"], autoscaler["spec"]["scaleTargetRef"]["name"])
    assert target["metadata"]["name"] == "cashback-api"
    assert "replicas" not in target["spec"], "the autoscaler owns the API's replicas: an apply must not reset them"
    for policy in (d for d in docs if d["kind"] == "NetworkPolicy"):
        chosen = selected(policy["spec"]["podSelector"].get("matchLabels", {}))
        assert chosen, policy["metadata"]["name"]
        names = {p["name"] for _, t in chosen for c in t["spec"]["containers"] for p in c.get("ports", [])}
        for rule in policy["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                assert isinstance(port["port"], int) or port["port"] in names, f"{policy['metadata']['name']}: {port}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_images_are_pinned(objects: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    for _, _, container in _containers(objects[overlay]):
        image = container["image"]
        assert "/" in image and ("@sha256:" in image or re.search(r":[^/:]+$", image)), f"{image}: a registry and a tag or digest"
        assert not image.endswith(":latest"), image


def _relabel(labels: dict[str, str], rules: list[dict[str, Any]]) -> dict[str, str] | None:
    """Prometheus's relabelling (keep, drop, replace; regexes anchored), enough for the scrape job."""
    labels = dict(labels)
    for rule in rules:
        value = rule.get("separator", ";").join(labels.get(name, "") for name in rule.get("source_labels", []))
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        action = rule.get("action", "replace")
        if action == "keep" and not match or action == "drop" and match:
            return None
        if action == "replace" and match:
            labels[rule["target_label"]] = re.sub(r"\$(\d+)", r"\\\1", rule.get("replacement", "$1"))
            labels[rule["target_label"]] = match.expand(labels[rule["target_label"]])
    return labels


def _sanitised(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def test_the_prometheus_job_scrapes_each_process_metrics(objects: dict[str, list[dict[str, Any]]]) -> None:
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "cashback"
    docs = objects["overlays/example"]
    (namespace,) = {d["metadata"]["namespace"] for d in docs if d["kind"] in WORKLOADS}
    assert job["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"names": [namespace]}}]
    scraped = {}
    for workload, template in _pod_specs(docs):
        meta = {"__meta_kubernetes_namespace": namespace, "__meta_kubernetes_pod_name": f"{workload['metadata']['name']}-0"}
        meta |= {"__meta_kubernetes_pod_ip": "10.1.2.3", "__meta_kubernetes_pod_phase": "Running", "__address__": "10.1.2.3"}
        meta |= {f"__meta_kubernetes_pod_label_{_sanitised(k)}": v for k, v in template["metadata"]["labels"].items()}
        meta |= {
            f"__meta_kubernetes_pod_annotation_{_sanitised(k)}": v for k, v in template["metadata"].get("annotations", {}).items()
        }
        target = _relabel(meta, job["relabel_configs"])
        if target is not None:
            (container,) = template["spec"]["containers"]
            settings = Settings.from_env(_environment(docs, workload, container))
            port = settings.api_port if _args(container)[0] == "api" else settings.metrics_port
            assert target["__address__"] == f"10.1.2.3:{port}" and target["__metrics_path__"] == "/metrics"
            scraped[target["component"]] = target["pod"]
            # the job the alert rules select on, as the local stack's Prometheus names it
            assert target["job"] == job_name(target["component"])
    assert set(scraped) == {"worker", "sink", "api"}
    promtool = shutil.which("promtool")
    if promtool:  # Debian's promtool is built without Kubernetes discovery: the rest of the file, checked
        for each in config["scrape_configs"]:
            each.pop("kubernetes_sd_configs")
            each["static_configs"] = [{"targets": ["127.0.0.1:9100"]}]
        checked = _run(promtool, "check", "config", "/dev/stdin", stdin=yaml.safe_dump(config))
        assert checked.returncode == 0, checked.stdout + checked.stderr


# --- the image ------------------------------------------------------------------------------------


def _containerfile(path: Path = CONTAINERFILE) -> list[dict[str, list[str]]]:
    """The stages: per stage, each instruction's arguments (the last one of each kind counts), ARG
    defaults given before the first FROM substituted."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")))
    arguments: dict[str, str] = {}
    stages: list[dict[str, list[str]]] = []
    for line in filter(None, (line.strip() for line in text.splitlines())):
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        rest = re.sub(r"\$\{(\w+)\}", lambda m: arguments.get(m.group(1), m.group(0)), rest.strip())
        if instruction == "ARG" and not stages and "=" in rest:
            name, _, default = rest.partition("=")
            arguments[name] = default
        elif instruction == "FROM":
            stages.append({"FROM": [rest]})
        elif stages:
            stages[-1].setdefault(instruction, []).append(rest)
    return stages


def test_the_containerfile_passes_hadolint(tools: Tools, tmp_path: Path) -> None:
    linted = _run(tools.hadolint, "--no-color", "--failure-threshold", "style", "-f", "json", CONTAINERFILE)
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert json.loads(linted.stdout or "[]") == []
    bad = tmp_path / "Containerfile"  # and hadolint does find what it should
    bad.write_text("FROM python:latest\nRUN pip install cashback-stream\nUSER root\n")
    linted = _run(tools.hadolint, "--no-color", "-f", "json", bad)
    assert {"DL3007", "DL3013", "DL3002"} <= {finding["code"] for finding in json.loads(linted.stdout)}


def test_the_image_is_pinned_non_root_and_runs_the_cli() -> None:
    stages = _containerfile()
    assert len(stages) >= 2, "multi-stage: the build's tools stay out of the runtime image"
    bases = {stage["FROM"][0].split(" AS ")[0].split(" as ")[0].strip() for stage in stages}
    assert len(bases) == 1, f"one base for every stage (the virtual environment is copied between them): {bases}"
    (base,) = bases
    image, _, digest = base.partition("@")
    tag = image.rpartition(":")[2]
    version = re.match(r"(\d+)\.(\d+)\.(\d+)", tag)
    assert version or digest.startswith("sha256:"), f"{base}: pin the base by its exact version or digest"
    assert version and (int(version[1]), int(version[2])) == sys.version_info[:2], f"{base}: the Python the tests run on"
    runtime = stages[-1]
    user = runtime["USER"][-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"USER {user}: numeric and not root (runAsNonRoot checks a number)"
    assert json.loads(runtime["ENTRYPOINT"][-1]) == ENTRYPOINT
    default = json.loads(runtime["CMD"][-1])
    assert _command(default) == default[0]
    assert all(" --from=" in f" {copy_}" for copy_ in runtime.get("COPY", [])), "the runtime stage copies only from the build"
    build = " ".join(stages[0]["RUN"])
    assert "pip wheel --no-deps" in build and "--constraint" in build and "[" not in build, "the wheel, pinned, no extras"


def test_the_image_pins_every_runtime_dependency_within_the_projects_ranges() -> None:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"{line}: an exact pin"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    for dependency in project["dependencies"]:
        requirement = Requirement(dependency)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pins, f"{name} is not pinned in {CONSTRAINTS.name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} is outside {requirement}"
    assert "cashback-stream" not in pins
