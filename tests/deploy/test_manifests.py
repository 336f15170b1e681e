"""The Kubernetes and KServe manifests under deploy/: they render, validate offline against the
Kubernetes and CRD schemas, and agree with the CLI they start (flags, ports, health paths, the
drain budget, the autoscaling metric)."""

from __future__ import annotations

import copy
import py_compile
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from . import manifests

pytest.importorskip("kubernetes_validate", reason="needs kubernetes-validate (pip: aiarch[test])")
if manifests.kustomize_command() is None:
    pytest.skip("needs kubectl (kustomize v5) or kustomize on PATH", allow_module_level=True)

OVERLAYS = sorted((manifests.DEPLOY / "overlays").iterdir())


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {f.name: manifests.render(f) for f in OVERLAYS}


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def _flag(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


@pytest.mark.parametrize(
    "folder", manifests.kustomizations(), ids=lambda p: str(p.relative_to(manifests.DEPLOY))
)
def test_every_kustomization_renders_and_validates(folder: Path) -> None:
    docs = manifests.render(folder)
    assert docs, f"{folder} rendered nothing"
    for doc in docs:
        manifests.validate(doc)


def test_overlays_hold_the_expected_resources(rendered: dict[str, list[dict[str, Any]]]) -> None:
    kinds = {name: sorted({d["kind"] for d in docs}) for name, docs in rendered.items()}
    assert kinds["production"] == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "PyTorchJob",
        "Service",
    ]
    assert kinds["kserve"] == [
        "ClusterServingRuntime",
        "ConfigMap",
        "InferenceService",
        "PersistentVolumeClaim",
        "PyTorchJob",
    ]


def test_backend_urls_reach_every_workload(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for docs in rendered.values():
        endpoints = next(
            d for d in docs if d["kind"] == "ConfigMap" and "AIARCH_REGISTRY" in d.get("data", {})
        )
        assert endpoints["data"]["AIARCH_REGISTRY"].startswith("postgresql://")
        assert endpoints["data"]["AIARCH_ARTIFACTS"].startswith("s3://")
        assert endpoints["data"]["AIARCH_FEATURE_STORE"].startswith("redis")
        # kustomize appended a content hash to the generated name; every consumer must use it.
        name = endpoints["metadata"]["name"]
        consumers = [
            d for d in docs if d["kind"] in ("Deployment", "InferenceService", "PyTorchJob")
        ]
        assert consumers
        for d in consumers:
            assert f"name: {name}\n" in yaml.safe_dump(d), f"{d['kind']} does not use {name}"


# Each mutation breaks one resource in a way its schema must catch.
_BREAKAGES = [
    (
        "production",
        "Deployment",
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readinesProbe={}),
        "readinesProbe",
    ),
    ("production", "HorizontalPodAutoscaler", lambda d: d["spec"].update(minReplicas="two"), "two"),
    ("kserve", "ClusterServingRuntime", lambda d: d["spec"].update(protocolVersions=["v3"]), "v3"),
    (
        "kserve",
        "InferenceService",
        lambda d: d["spec"]["predictor"]["model"].update(modelformat={"name": "aiarch"}),
        "modelformat",
    ),
    (
        "kserve",
        "InferenceService",
        lambda d: d["spec"]["predictor"]["model"].update(env=[{"value": "no name"}]),
        "name",
    ),
    ("kserve", "PyTorchJob", lambda d: d["spec"]["elasticPolicy"].update(rdzvBackend="zk"), "zk"),
    (
        "kserve",
        "PyTorchJob",
        lambda d: d["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][
            0
        ].update(imagePullPolicy=3),
        "3",
    ),
]


@pytest.mark.parametrize(("overlay", "kind", "breakage", "named"), _BREAKAGES)
def test_schemas_reject_a_broken_resource(
    rendered: dict[str, list[dict[str, Any]]], overlay: str, kind: str, breakage: Any, named: str
) -> None:
    doc = copy.deepcopy(_one(rendered[overlay], kind))
    manifests.validate(doc)
    breakage(doc)
    with pytest.raises(Exception) as info:
        manifests.validate(doc)
    assert named in str(info.value)


def test_deployment_probes_drain_and_flags_match_the_server(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    from aiarch.cli import build_parser

    pod = _one(rendered["production"], "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = container["args"]
    parsed = build_parser().parse_args(["serve", *args])  # the flags exist and parse
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert parsed.port == port and parsed.host == "0.0.0.0"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/live"
    # Grace must cover the endpoint-removal sleep plus the server's whole drain.
    sleep_s = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] > sleep_s + parsed.drain_timeout_s


def test_kserve_runtime_and_service_match_the_server(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    from aiarch.cli import build_parser

    runtime = _one(rendered["kserve"], "ClusterServingRuntime")["spec"]
    isvc = _one(rendered["kserve"], "InferenceService")["spec"]["predictor"]
    container = runtime["containers"][0]
    assert container["name"] == "kserve-container"  # the name KServe merges the model into
    assert runtime["protocolVersions"] == ["v2"] and isvc["model"]["protocolVersion"] == "v2"
    assert (
        isvc["model"]["runtime"]
        == _one(rendered["kserve"], "ClusterServingRuntime")["metadata"]["name"]
    )
    assert isvc["model"]["modelFormat"]["name"] in {
        f["name"] for f in runtime["supportedModelFormats"]
    }
    # KServe appends the service's args to the runtime's: together they are one serve command.
    parsed = build_parser().parse_args(["serve", *container["args"], *isvc["model"]["args"]])
    assert parsed.model == ["fraud@production"]
    assert container["ports"][0]["containerPort"] == parsed.port == 8080
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    sleep_s = float(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert isvc["terminationGracePeriodSeconds"] > sleep_s + parsed.drain_timeout_s


def test_pytorchjob_runs_aiarch_train_on_the_elastic_rendezvous(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    import argparse

    from aiarch.train.cli import _split_command

    job = _one(rendered["production"], "PyTorchJob")["spec"]
    worker = job["pytorchReplicaSpecs"]["Worker"]
    container = worker["template"]["spec"]["containers"][0]
    assert container["name"] == "pytorch"  # the container the operator injects PET_* into
    assert {p["name"]: p["containerPort"] for p in container["ports"]}["pytorchjob-port"] == job[
        "elasticPolicy"
    ]["rdzvPort"]
    script = container["args"][0]
    # What the operator's environment turns the shell command into on a worker.
    env = {
        "PET_NPROC_PER_NODE": job["nprocPerNode"],
        "PET_NNODES": f"{job['elasticPolicy']['minReplicas']}:{job['elasticPolicy']['maxReplicas']}",
        "PET_RDZV_ENDPOINT": f"aiarch-train-fraud-worker-0:{job['elasticPolicy']['rdzvPort']}",
        "PET_MAX_RESTARTS": str(job["elasticPolicy"]["maxRestarts"]),
    }
    expanded = script
    for key, value in env.items():
        for form in (f'"${{{key}:-1}}"', f'"${{{key}:-3}}"', f'"${{{key}}}"'):
            expanded = expanded.replace(form, value)
    assert "$" not in expanded, expanded
    argv = shlex.split(expanded)
    assert argv[:3] == ["exec", "aiarch", "train"]
    args = argparse.Namespace(command=argv[3:])
    split = _split_command(args)
    assert not isinstance(split, str), split
    assert split[0] == "/etc/aiarch/train/train.py"
    assert args.nnodes == "2:4" and args.rdzv_endpoint.endswith(":29400")
    assert args.home.startswith(container["volumeMounts"][1]["mountPath"])


def test_training_script_compiles() -> None:
    py_compile.compile(str(manifests.DEPLOY / "base/training/train.py"), doraise=True)


def test_autoscaling_metric_is_the_adapter_rule(rendered: dict[str, list[dict[str, Any]]]) -> None:
    hpa = _one(rendered["production"], "HorizontalPodAutoscaler")["spec"]
    pods_metrics = [m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods"]
    adapter = yaml.safe_load((manifests.DEPLOY / "prometheus-adapter/values.yaml").read_text())
    served = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    assert pods_metrics and set(pods_metrics) <= served
    # That the server exports these series is checked on a running server in
    # test_container_entrypoint.py.
