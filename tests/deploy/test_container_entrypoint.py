"""The container images' start-up, without a container runtime: the wheel is built from this
tree, installed with only its runtime dependencies into a fresh virtualenv (nothing from this
interpreter's site-packages, no torch), and the Dockerfile's own ENTRYPOINT + CMD is started on
127.0.0.1; its HEALTHCHECK command and the HPA's metric are then checked against it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from . import dockerfile, manifests

pytestmark = pytest.mark.slow

ROOT = manifests.ROOT
DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]
IMAGE_PORT = 8080


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The aiarch wheel: $AIARCH_WHEEL_DIR's when set (scripts/deploy_check.sh builds it),
    else built here the way the image's build stage does."""
    given = os.environ.get("AIARCH_WHEEL_DIR")
    out = Path(given) if given else tmp_path_factory.mktemp("wheel")
    if not given:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "-w",
                str(out),
                str(ROOT),
            ],
            check=True,
            timeout=1200,
        )
    wheels = sorted(out.glob("aiarch-*.whl"))
    assert len(wheels) == 1, f"expected one aiarch wheel in {out}, found {wheels}"
    return wheels[0]


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv holding the wheel and what pip resolves for it, nothing else."""
    root = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=120)
    subprocess.run(
        [
            str(root / "bin/python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            str(wheel),
        ],
        check=True,
        timeout=600,
        env=_clean_env(root),
    )
    return root


def _clean_env(venv: Path) -> dict[str, str]:
    """The environment of a container: the venv first on PATH, no PYTHONPATH leaking this
    checkout into the venv, a scratch AIARCH_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["AIARCH_HOME"] = str(venv / "home")
    return env


def test_venv_holds_only_the_wheel_and_its_runtime_dependencies(venv: Path) -> None:
    probe = (
        "import importlib.util, json, sys, aiarch\n"
        "print(json.dumps({'aiarch': aiarch.__file__, 'torch': importlib.util.find_spec('torch')"
        " is not None, 'sys_site': any('site-packages' in p and not p.startswith(sys.prefix)"
        " for p in sys.path)}))"
    )
    out = subprocess.run(
        [str(venv / "bin/python"), "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=_clean_env(venv),
        cwd=venv,
    )
    found = json.loads(out.stdout)
    assert found["aiarch"].startswith(str(venv)), found
    assert found["torch"] is False and found["sys_site"] is False, found


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_starts_aiarch_serve_with_a_readiness_check(name: str) -> None:
    found = dockerfile.start_up(ROOT / name)
    assert found.entrypoint == ["aiarch", "serve"]
    assert found.cmd[found.cmd.index("--port") + 1] == str(IMAGE_PORT)
    assert f"http://127.0.0.1:{IMAGE_PORT}/v2/health/ready" in " ".join(found.healthcheck)


def test_image_entrypoint_serves_and_passes_its_healthcheck(venv: Path, tmp_path: Path) -> None:
    found = dockerfile.start_up(ROOT / "Dockerfile")
    port = _free_port()
    model = ROOT / "tests/serving/models.py"
    # The image's command unchanged; a run adds flags after it, as `docker run IMAGE ...` does.
    command = [
        *found.command,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model",
        f"lin={model}:linear",
    ]
    env = _clean_env(venv)
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        status = 0
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, _ = _get(f"{base}/v2/health/ready")
            except OSError:
                status = 0
            if status == 200:
                break
            time.sleep(0.2)
        assert status == 200, (tmp_path / "server.log").read_text()

        health = [a.replace(str(IMAGE_PORT), str(port)) for a in found.healthcheck]
        result = subprocess.run(health, env=env, capture_output=True, timeout=10)
        assert result.returncode == 0, result.stderr.decode()

        body = json.dumps(
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 8], "data": [0.5] * 8}]}
        ).encode()
        req = urllib.request.Request(
            f"{base}/v2/models/lin/infer",
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200 and json.loads(r.read())["outputs"][0]["shape"] == [1, 4]

        status, metrics = _get(f"{base}/metrics")
        assert status == 200
        serving = manifests.render(ROOT / "deploy/base/serving")
        hpa = next(d for d in serving if d["kind"] == "HorizontalPodAutoscaler")
        for m in hpa["spec"]["metrics"]:
            if m["type"] == "Pods":
                name = m["pods"]["metric"]["name"]
                assert f'\n{name}{{model="lin"'.encode() in metrics, name
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=45)
        log.close()
    assert code == 0, (tmp_path / "server.log").read_text()

    # Once drained, the HEALTHCHECK fails: nothing answers on the port.
    result = subprocess.run(health, env=env, capture_output=True, timeout=10)
    assert result.returncode != 0
