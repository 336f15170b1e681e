"""A real `aiarch serve` on 127.0.0.1 with models of known service time (tests/bench/models.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aiarch.serving.process import ServerProcess

pytest.importorskip(
    "aiarch._core", reason="the aiarch native core is not built", exc_type=ImportError
)
for _mod in ("uvloop", "httptools", "msgspec", "prometheus_client"):
    pytest.importorskip(_mod, reason=f"{_mod} is not installed (needed by aiarch serve)")

MODELS = Path(__file__).resolve().parent / "models.py"

CONFIG = f"""
[models.svc]
source = "{MODELS}:fixed_service"
batching = {{ max_batch_size = 1, max_delay_us = 0, instances = 1, inline_execution = false }}

[models.fast]
source = "{MODELS}:fast"
"""


class Server(ServerProcess):
    """The bench test server (CONFIG); `pause()`/`resume()` stop and continue it."""

    def __init__(self, tmp: Path) -> None:
        cfg = tmp / "serve.toml"
        cfg.write_text(CONFIG)
        super().__init__(["--config", str(cfg), "--log-level", "warning"], tmp / "server.log")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("bench-serve"))
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
