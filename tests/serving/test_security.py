"""Who may change the model repository, what a client-given config may reach, and client errors
that must stay 400s: all against the real `aiarch serve` on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiarch.serving.config import ServeConfig, is_loopback_address

from .conftest import (
    FRONT_ENDS,
    MODELS,
    ServerProcess,
    _require_server_deps,
    request,
    running_server,
)

TOKEN = "t0ken-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


def _infer_body(**parameters: object) -> bytes:
    body: dict[str, object] = {
        "inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [0.0] * 8}]
    }
    if parameters:
        body["parameters"] = parameters
    return json.dumps(body).encode()


def _load_body(config: dict[str, object]) -> bytes:
    return json.dumps({"parameters": {"config": config}}).encode()


def _error(r: object) -> str:
    return str(r.json()["error"])  # type: ignore[attr-defined]


def _write_onnx(path: Path) -> Path:
    """A 4 → 4 model computing y = x + 1, as ONNX."""
    onnx = pytest.importorskip("onnx", reason="writing the test model needs onnx")
    pytest.importorskip("onnxruntime", reason="serving ONNX files needs onnxruntime")
    from onnx import TensorProto, helper

    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])],
        "plus_one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        initializer=[one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _write_canary(path: Path, marker: Path) -> Path:
    """A Python model file that leaves `marker` behind when it is imported."""
    path.write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "def f(x):\n    return x\n"
    )
    return path


# -- loopback is decided from the address, never from a name ---------------------------------


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
        ("::", False),
        ("127.example.com", False),
        ("localhost.attacker.example", False),
    ],
)
def test_loopback_is_decided_by_the_address(address: str, expected: bool) -> None:
    assert is_loopback_address(address) is expected


def test_a_name_that_starts_with_127_is_not_loopback() -> None:
    assert ServeConfig(host="127.example.invalid").loopback is False
    assert ServeConfig(host="127.0.0.1").loopback is True


# -- repository load is off by default -------------------------------------------------------


@pytest.fixture(scope="module", params=FRONT_ENDS)
def default_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A server with default settings, on each front end: what the App refuses must be refused
    the same whichever front end parses the request."""
    _require_server_deps()
    tmp = tmp_path_factory.mktemp("default")
    with running_server(["-m", f"lin={MODELS}:linear", "--http", request.param], tmp) as srv:
        yield srv


def test_client_config_load_is_refused_without_operator_consent(
    default_server: ServerProcess, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    canary = _write_canary(tmp_path / "canary.py", marker)
    for source in (f"{canary}:f", "os:getcwd", f"{MODELS}:linear"):
        r = request(
            default_server.port,
            "POST",
            "/v2/repository/models/pwn/load",
            _load_body({"source": source}),
            {"Content-Type": "application/json"},
        )
        assert r.status == 403, r.body
        assert "--allow-repository-load" in _error(r) and "--model-root" in _error(r)
    assert not marker.exists()
    r = request(default_server.port, "GET", "/v2/models/pwn")
    assert r.status == 404


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
@pytest.mark.parametrize(
    "path",
    [
        "/v2/repository/models/lin/load",
        "/v2/repository/models/lin/unload",
        "/v2/repository/index",
        "/v2/models/lin/infer",
        "/predict/lin",
    ],
)
def test_json_endpoints_refuse_other_content_types(
    default_server: ServerProcess, path: str, content_type: str
) -> None:
    body = _infer_body() if "infer" in path else b'{"inputs": [[0,0,0,0,0,0,0,0]]}'
    if "repository" in path:
        body = b"{}"
    r = request(default_server.port, "POST", path, body, {"Content-Type": content_type})
    assert r.status == 415, r.body
    assert "expected application/json" in _error(r)
    # The model is still loaded: the refused unload did nothing.
    assert request(default_server.port, "GET", "/v2/models/lin/ready").status == 200


def test_json_content_type_and_none_are_accepted(default_server: ServerProcess) -> None:
    for headers in ({}, {"Content-Type": "application/json; charset=utf-8"}):
        r = request(default_server.port, "POST", "/v2/models/lin/infer", _infer_body(), headers)
        assert r.status == 200, r.body


def test_octet_stream_needs_the_binary_header(default_server: ServerProcess) -> None:
    raw = bytes(32)
    r = request(
        default_server.port,
        "POST",
        "/v2/models/lin/infer",
        raw,
        {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": "0"},
    )
    assert r.status == 200, r.body
    r = request(
        default_server.port,
        "POST",
        "/v2/models/lin/infer",
        _infer_body(),
        {"Content-Type": "application/octet-stream"},
    )
    assert r.status == 415 and "Inference-Header-Content-Length" in _error(r)


def test_browser_page_cannot_unload_without_token(default_server: ServerProcess) -> None:
    r = request(
        default_server.port,
        "POST",
        "/v2/repository/models/lin/unload",
        headers={"Origin": "https://attacker.example"},
    )
    assert r.status == 403 and "browser" in _error(r)
    assert request(default_server.port, "GET", "/v2/models/lin/ready").status == 200


def test_server_not_bound_to_loopback_needs_token(tmp_path: Path) -> None:
    _require_server_deps()
    with running_server(["-m", f"lin={MODELS}:linear", "--host", "0.0.0.0"], tmp_path) as srv:
        r = request(srv.port, "POST", "/v2/repository/models/lin/unload")
        assert r.status == 403 and "--auth-token" in _error(r)


@pytest.mark.parametrize("flag", [["--allow-repository-load"], ["--model-root", "."]])
def test_enabling_load_without_token_refuses_to_start(tmp_path: Path, flag: list[str]) -> None:
    _require_server_deps()
    env = {k: v for k, v in os.environ.items() if k != "AIARCH_AUTH_TOKEN"}
    out = subprocess.run(
        [sys.executable, "-m", "aiarch.cli", "serve", "-m", f"lin={MODELS}:linear", *flag],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 2
    assert "need --auth-token" in out.stderr


# -- model roots -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("roots")
    root = base / "models"
    outside = base / "outside"
    root.mkdir()
    outside.mkdir()
    _write_onnx(root / "plus.onnx")
    _write_onnx(outside / "real.onnx")
    (root / "escape.onnx").symlink_to(outside / "real.onnx")
    (outside / "ref.profile").write_bytes(b"not a profile")
    return {"root": root, "outside": outside, "marker": base / "ran"}


@pytest.fixture(scope="module")
def root_server(
    roots: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    _require_server_deps()
    tmp = tmp_path_factory.mktemp("rootsrv")
    args = [
        "-m",
        f"lin={MODELS}:linear",
        "--model-root",
        str(roots["root"]),
        "--auth-token",
        TOKEN,
    ]
    with running_server(args, tmp) as srv:
        yield srv


def _load(srv: ServerProcess, name: str, config: dict[str, object], headers=AUTH) -> object:  # type: ignore[no-untyped-def]
    return request(
        srv.port, "POST", f"/v2/repository/models/{name}/load", _load_body(config), headers
    )


def test_model_root_loads_a_model_file_inside_it(root_server: ServerProcess) -> None:
    r = _load(root_server, "plus", {"source": "plus.onnx"})
    assert r.status == 200, r.body  # type: ignore[attr-defined]
    body = json.dumps(
        {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    ).encode()
    r = request(root_server.port, "POST", "/v2/models/plus/infer", body)
    assert r.status == 200 and r.json()["outputs"][0]["data"] == [2, 3, 4, 5]  # type: ignore[index]


def test_token_is_required_on_loopback_once_load_is_enabled(root_server: ServerProcess) -> None:
    r = _load(root_server, "plus2", {"source": "plus.onnx"}, {"Content-Type": "application/json"})
    assert r.status == 401  # type: ignore[attr-defined]
    for action in ("unload", "load"):
        r = request(root_server.port, "POST", f"/v2/repository/models/lin/{action}")
        assert r.status == 401  # type: ignore[attr-defined]
    assert request(root_server.port, "GET", "/v2/models/lin/ready").status == 200


def test_model_root_refuses_python_sources(
    root_server: ServerProcess, roots: dict[str, Path]
) -> None:
    canary = _write_canary(roots["root"] / "canary.py", roots["marker"])
    for source in (f"{canary}:f", "os:getcwd", "fraud@production"):
        r = _load(root_server, "pwn", {"source": source})
        assert r.status == 403, r.body  # type: ignore[attr-defined]
        assert "--allow-repository-load" in _error(r)
    assert not roots["marker"].exists()


def test_paths_outside_the_roots_give_one_message_whether_or_not_they_exist(
    root_server: ServerProcess, roots: dict[str, Path]
) -> None:
    outside = roots["outside"]
    messages = {}
    for source in (
        str(outside / "real.onnx"),
        str(outside / "missing.onnx"),
        "/etc/passwd",
        "/etc/shadow.onnx",
    ):
        r = _load(root_server, "pwn", {"source": source})
        assert r.status == 400, r.body  # type: ignore[attr-defined]
        messages[source] = _error(r).replace(repr(source), "SOURCE")
    assert len(set(messages.values())) == 1, messages
    assert "is not inside a model root" in next(iter(messages.values()))
    # Relative paths are taken inside the first root; climbing out or a symlink that points
    # out is refused the same way.
    for source in ("../outside/real.onnx", "escape.onnx"):
        r = _load(root_server, "pwn", {"source": source})
        assert r.status == 400 and "is not inside a model root" in _error(r)  # type: ignore[attr-defined]


def test_monitor_reference_must_be_inside_the_roots(
    root_server: ServerProcess, roots: dict[str, Path]
) -> None:
    for ref in (str(roots["outside"] / "ref.profile"), "/etc/passwd"):
        config = {"source": "plus.onnx", "monitor": {"reference": ref}}
        r = _load(root_server, "mon", config)
        assert r.status == 400, r.body  # type: ignore[attr-defined]
        assert "monitor.reference" in _error(r) and "not inside a model root" in _error(r)


def test_model_root_refuses_features_and_webhooks(root_server: ServerProcess) -> None:
    r = _load(root_server, "f", {"source": "plus.onnx", "features": {"store": "redis://x"}})
    assert r.status == 403  # type: ignore[attr-defined]
    r = _load(
        root_server,
        "w",
        {"source": "plus.onnx", "monitor": {"reference": "x", "webhook_url": "http://x"}},
    )
    assert r.status == 403  # type: ignore[attr-defined]


# -- --allow-repository-load: any source, a clear 400 when it cannot load ---------------------


def test_allow_repository_load_runs_sources_and_reports_failures_alike(tmp_path: Path) -> None:
    _require_server_deps()
    marker = tmp_path / "ran"
    canary = _write_canary(tmp_path / "canary.py", marker)
    args = ["-m", f"lin={MODELS}:linear", "--allow-repository-load", "--auth-token", TOKEN]
    srv = ServerProcess(args, tmp_path)
    try:
        srv.wait_ready()
        r = _load(srv, "canary", {"source": f"{canary}:f"})
        assert r.status == 200, r.body  # type: ignore[attr-defined]
        assert marker.exists()
        messages = {}
        for source in (
            "/etc/passwd",
            "/etc/passwd:x",
            "/etc/shadow.onnx",
            str(tmp_path / "missing.py") + ":f",
            "no_such_module_xyz:f",
        ):
            r = _load(srv, "bad", {"source": source})
            assert r.status == 400, r.body  # type: ignore[attr-defined]
            messages[source] = _error(r).replace(repr(source), "SOURCE")
        assert len(set(messages.values())) == 1, messages
        assert "expected a model file" in next(iter(messages.values()))
    finally:
        srv.stop()
    assert srv.log is not None
    log = srv.log.read_text()
    assert "Traceback" not in log and " ERROR " not in log, log


# -- client errors are 400s, not 500s --------------------------------------------------------


@pytest.mark.parametrize("value", ["1e20", "1e308", "inf", "nan", "-1", "0", "abc"])
def test_timeout_header_out_of_range_is_400(default_server: ServerProcess, value: str) -> None:
    r = request(
        default_server.port,
        "POST",
        "/v2/models/lin/infer",
        _infer_body(),
        {"X-Request-Timeout-Ms": value},
    )
    assert r.status == 400, r.body
    assert "X-Request-Timeout-Ms must be a positive number of milliseconds" in _error(r)


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({"priority": 4294967296}, "parameter 'priority' must be an integer"),
        ({"priority": -1}, "parameter 'priority' must be an integer"),
        ({"priority": 4294967295}, "out of range"),
        ({"timeout": 9223372036854775807}, "parameter 'timeout' must be an integer"),
        ({"timeout": 1.5}, "parameter 'timeout' must be an integer"),
    ],
)
def test_priority_and_timeout_parameters_out_of_range_are_400(
    default_server: ServerProcess, parameters: dict[str, object], expected: str
) -> None:
    r = request(default_server.port, "POST", "/v2/models/lin/infer", _infer_body(**parameters))
    assert r.status == 400, r.body
    assert expected in _error(r)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/predict/lin", b'{"inputs":' + b"[" * 1000 + b"]" * 1000 + b"}"),
        (
            "/v2/models/lin/infer",
            b'{"inputs":[{"name":"x","shape":[1,8],"datatype":"FP32","data":'
            + b"[" * 1000
            + b"]" * 1000
            + b"}]}",
        ),
        ("/v2/repository/index", b'{"ready":' + b"[" * 1000 + b"]" * 1000 + b"}"),
    ],
)
def test_deeply_nested_json_is_400(default_server: ServerProcess, path: str, body: bytes) -> None:
    r = request(default_server.port, "POST", path, body)
    assert r.status == 400, r.body
    assert "nested too deeply" in _error(r)


def test_client_errors_log_no_traceback(default_server: ServerProcess) -> None:
    request(default_server.port, "POST", "/predict/lin", b"[" * 5000)
    request(default_server.port, "POST", "/v2/models/lin/infer", _infer_body(priority=2**64))
    log = default_server.output()
    assert "Traceback" not in log and " ERROR " not in log, log
