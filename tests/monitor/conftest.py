"""`aiarch serve` in a subprocess on 127.0.0.1 for the monitor's end-to-end tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from aiarch.serving.process import ServerProcess as _ServerProcess
from aiarch.serving.process import free_port


class ServerProcess(_ServerProcess):
    """`aiarch serve` with its log in the test's tmp folder."""

    def __init__(self, args: list[str], tmp: Path) -> None:
        port = free_port()
        super().__init__(args, tmp / f"server-{port}.log", port=port)


@contextlib.contextmanager
def running_server(args: list[str], tmp: Path) -> Iterator[ServerProcess]:
    for mod in ("uvloop", "httptools", "prometheus_client", "matplotlib", "scipy"):
        pytest.importorskip(mod, reason=f"{mod} is not installed")
    srv = ServerProcess(args, tmp)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
