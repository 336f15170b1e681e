"""Tests marked `slow` here build a wheel and a virtualenv: they run when selected with
`-m slow` (scripts/deploy_check.sh does), and are skipped, saying so, otherwise."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("markexpr"):
        return
    skip = pytest.mark.skip(reason="slow: builds the wheel and a fresh venv; run with -m slow")
    for item in items:
        if item.get_closest_marker("slow") and item.path.is_relative_to(
            config.rootpath / "tests/deploy"
        ):
            item.add_marker(skip)
