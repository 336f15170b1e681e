"""Renders the kustomizations under deploy/ and validates every resource offline.

Built-in kinds are checked against the Kubernetes schemas that kubernetes-validate ships (strict:
unknown fields fail); the KServe and Kubeflow custom resources against the schemas in
deploy/schemas, whose pod and container fields refer to those same Kubernetes definitions.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SCHEMAS = DEPLOY / "schemas"
# The oldest Kubernetes the manifests target (autoscaling/v2, policy/v1 PDBs).
KUBERNETES_VERSION = "1.29"
# API groups of the custom resources, validated against deploy/schemas.
CUSTOM_GROUPS = ("serving.kserve.io", "kubeflow.org")


def kustomize_command() -> list[str] | None:
    """`kubectl kustomize` or a standalone `kustomize build`, whichever is installed."""
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def kustomizations() -> list[Path]:
    """Every folder under deploy/ holding a kustomization.yaml, bases and overlays alike."""
    return sorted(p.parent for p in DEPLOY.rglob("kustomization.yaml"))


def render(folder: Path) -> list[dict[str, Any]]:
    """The resources a kustomization renders to."""
    command = kustomize_command()
    if command is None:
        raise RuntimeError("rendering needs kubectl (kustomize v5) or kustomize on PATH")
    out = subprocess.run(
        [*command, str(folder)], capture_output=True, text=True, timeout=120, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} {folder} failed: {out.stderr.strip()}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _schema_file(resource: dict[str, Any]) -> Path:
    group_version = resource["apiVersion"]
    group, _, version = group_version.rpartition("/")
    return SCHEMAS / f"{resource['kind'].lower()}-{group.split('.')[0]}-{version}.json"


@functools.cache
def _kubernetes_definitions() -> Any:
    import importlib.resources

    import kubernetes_validate.utils as kv

    version = [v for v in kv.all_versions() if kv.major_minor(v) <= KUBERNETES_VERSION][-1]
    path = f"kubernetes-json-schema/v{version}-local-strict/_definitions.json"
    return json.loads((importlib.resources.files("kubernetes_validate") / path).read_text())


def validate(resource: dict[str, Any]) -> None:
    """Raises jsonschema.ValidationError (kubernetes_validate.ValidationError for built-in
    kinds) naming the first problem; returns None for a valid resource."""
    import jsonschema
    import kubernetes_validate
    from referencing import Registry, Resource

    group = resource["apiVersion"].rpartition("/")[0]
    if group not in CUSTOM_GROUPS:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
        return
    path = _schema_file(resource)
    if not path.exists():
        kind = resource.get("kind")
        raise FileNotFoundError(f"{kind} ({group}): no schema {path.relative_to(ROOT)}")
    definitions = _kubernetes_definitions()
    registry: Registry[Any] = Registry().with_resource(
        definitions["$id"], Resource.from_contents(definitions)
    )
    schema = json.loads(path.read_text())
    jsonschema.Draft202012Validator(schema, registry=registry).validate(resource)
