"""`aiarch serve` refuses to start when a model cannot load: before anything listens, with a
non-zero exit and one error line naming the model and the reason."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from aiarch.serving.supervisor import EXIT_MODEL_LOAD

from .conftest import MODELS, ServerProcess, _require_server_deps


def _failed_start(args: list[str], tmp: Path) -> str:
    """Runs `aiarch serve ARGS`; asserts it exits with EXIT_MODEL_LOAD without listening and
    returns its one error line."""
    _require_server_deps()
    srv = ServerProcess(args, tmp)
    try:
        code = srv.proc.wait(60)
    finally:
        srv.stop()
    out = srv.output()
    assert code == EXIT_MODEL_LOAD, out
    assert "listening" not in out, out
    errors = [line for line in out.splitlines() if " ERROR " in line]
    assert len(errors) == 1, out
    assert "Traceback" not in out, out
    return errors[0]


def test_missing_model_file(tmp_path: Path) -> None:
    line = _failed_start(["-m", f"m={tmp_path / 'absent.onnx'}"], tmp_path)
    assert "model 'm'" in line and "no such model file" in line


def test_pickle_is_not_a_model_source(tmp_path: Path) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps([1, 2]))
    line = _failed_start(["-m", f"m={path}"], tmp_path)
    assert "model 'm'" in line and "no loader accepts model source" in line


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("no_such_module_xyz:f", "No module named 'no_such_module_xyz'"),
        (f"{MODELS}:no_such_attr", "has no attribute 'no_such_attr'"),
        ("json", "no loader accepts model source"),
    ],
)
def test_bad_python_reference(tmp_path: Path, source: str, reason: str) -> None:
    line = _failed_start(["-m", f"bad={source}"], tmp_path)
    assert "model 'bad'" in line and reason in line


def test_unknown_registry_alias(tmp_path: Path) -> None:
    from aiarch.registry import Registry

    url = f"sqlite:///{tmp_path / 'registry.db'}"
    Registry(url, home=tmp_path / "home").register("lin", f"{MODELS}:linear")
    line = _failed_start(["-m", "lin@no-such-alias", "--registry", url], tmp_path)
    assert "model 'lin'" in line and "no-such-alias" in line


def test_declared_inputs_without_outputs_and_no_warmup(tmp_path: Path) -> None:
    cfg = tmp_path / "serve.toml"
    cfg.write_text(f'[models.slow]\nsource = "{MODELS}:slow"\nwarmup = false\n')
    line = _failed_start(["--config", str(cfg)], tmp_path)
    assert "model 'slow'" in line and "declares .inputs but not .outputs" in line


def test_one_bad_model_of_two_workers_stops_the_service(tmp_path: Path) -> None:
    _require_server_deps()
    srv = ServerProcess(
        ["-m", f"lin={MODELS}:linear", "-m", "bad=no_such_module_xyz:f", "--workers", "2"],
        tmp_path,
    )
    try:
        code = srv.proc.wait(90)
    finally:
        srv.stop()
    out = srv.output()
    assert code == 1, out
    assert "listening" not in out, out
    assert "model 'bad'" in out and "could not load its models" in out, out
