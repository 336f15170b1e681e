"""Registry models in a host service: loaded by alias, switched on promotion with no failed
request, exported under their public name and version."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from aiarch.integrations import ServiceRuntime
from aiarch.registry import Registry

SOURCE = """
import numpy as np
from aiarch import TensorSpec

def scale(x):
    return x * {factor}

scale.inputs = [TensorSpec("x", "float32", (2,))]
"""


@pytest.fixture
def registry(tmp_path: Path):
    reg = Registry(f"sqlite:///{tmp_path / 'registry.db'}", home=tmp_path / "home")
    for factor in (1, 2):
        src = tmp_path / f"scale{factor}.py"
        src.write_text(SOURCE.format(factor=factor))
        reg.register("scale", f"{src}:scale")
    reg.promote("scale", 1, "production")
    yield reg
    reg.close()


def test_alias_promotion_switches_versions_without_failing_a_request(registry):
    service = ServiceRuntime(
        lambda svc: svc.add_registry_model("scale", "scale@production"),
        registry=registry,
        registry_poll_s=0.02,
    )
    service.start()
    x = np.ones((1, 2), np.float32)
    assert service.infer_sync("scale", x).tolist() == [[1.0, 1.0]]
    assert service.versions() == {"scale": "1"}

    answers: list[float] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                answers.append(float(service.infer_sync("scale", x)[0, 0]))
            except BaseException as e:
                errors.append(e)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.1)
        registry.promote("scale", 2, "production")
        deadline = time.monotonic() + 20
        while service.versions() != {"scale": "2"}:
            assert time.monotonic() < deadline, "the service never switched to version 2"
            time.sleep(0.01)
        time.sleep(0.1)  # requests keep flowing on the new version
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert answers[0] == 1.0 and answers[-1] == 2.0
    assert set(answers) == {1.0, 2.0}
    assert service.runtime.models() == ["scale.v2"]  # the old version drained and left

    body, _ = service.metrics()
    assert b'aiarch_model_ready{model="scale",version="2"} 1.0' in body
    ok, health = service.health()
    assert ok and health["models"] == {"scale": {"version": "2", "ready": True}}
    service.close()


def test_unknown_alias_fails_start_naming_it(registry):
    service = ServiceRuntime(
        lambda svc: svc.add_registry_model("scale", "scale@staging"), registry=registry
    )
    with pytest.raises(Exception, match="staging"):
        service.start()
    with pytest.raises(Exception, match="not started"):
        service.runtime  # noqa: B018
