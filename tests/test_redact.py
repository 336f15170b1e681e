"""Credentials are removed from every URL the project prints, logs, returns or exports."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiarch.redact import redact_url

SECRET = "S3cretPassw0rd"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"redis://:{SECRET}@127.0.0.1:6399/0", "redis://:***@127.0.0.1:6399/0"),
        (f"postgresql://app:{SECRET}@db:5432/reg", "postgresql://app:***@db:5432/reg"),
        (f"postgresql://app:p@ss{SECRET}@db/reg", "postgresql://app:***@db/reg"),
        (f"http://u:{SECRET}@h/x?token={SECRET}&a=1", "http://u:***@h/x?token=***&a=1"),
        (
            f"postgresql://db/reg?sslmode=require&password={SECRET}",
            "postgresql://db/reg?sslmode=require&password=***",
        ),
        (
            f"feature store redis://:{SECRET}@127.0.0.1:6399/0 is unreachable: x@y",
            "feature store redis://:***@127.0.0.1:6399/0 is unreachable: x@y",
        ),
        (
            "postgresql://postgres@127.0.0.1:5432/postgres",
            "postgresql://postgres@127.0.0.1:5432/postgres",
        ),
        ("memory://", "memory://"),
        ("native:///tmp/a:b", "native:///tmp/a:b"),
        ("fraud@production", "fraud@production"),
    ],
)
def test_redact_url(text: str, expected: str) -> None:
    assert redact_url(text) == expected


def test_unsupported_registry_url_error_has_no_password(tmp_path: Path) -> None:
    pytest.importorskip(
        "aiarch._core", reason="the aiarch native core is not built", exc_type=ImportError
    )
    from aiarch.registry.db import open_database

    with pytest.raises(Exception) as e:
        open_database(f"mysql://root:{SECRET}@127.0.0.1/reg", tmp_path)
    assert "unsupported registry URL" in str(e.value)
    assert SECRET not in str(e.value) and "root:***@" in str(e.value)


def test_unknown_online_store_url_error_has_no_password() -> None:
    pytest.importorskip(
        "aiarch._core", reason="the aiarch native core is not built", exc_type=ImportError
    )
    from aiarch.features.online import open_backend

    with pytest.raises(Exception) as e:
        open_backend(f"memcached://u:{SECRET}@127.0.0.1:1/")
    assert "unknown online store URL" in str(e.value) and SECRET not in str(e.value)


def test_failed_webhook_log_has_no_password(caplog: pytest.LogCaptureFixture) -> None:
    import socket

    from aiarch.monitor.alerts import Webhook

    with socket.socket() as s:  # a port with nothing listening: the POST fails at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hook = Webhook(f"http://alerts:{SECRET}@127.0.0.1:{port}/hook?token={SECRET}", timeout_s=2)
    with caplog.at_level("WARNING", logger="aiarch"):
        hook.post({"alert": "drift"})
        hook.close()
    assert hook.failed == 1
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "alert webhook" in logged
    assert SECRET not in logged and "alerts:***@" in logged
