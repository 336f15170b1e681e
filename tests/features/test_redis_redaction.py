"""A Redis URL's password never reaches an error message: the store being down is the case that
used to print it (and the server returns that message to the client)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from aiarch.errors import UnavailableError
from aiarch.features import FeatureStore

from .conftest import CARD, TXN, free_port

SECRET = "S3cretPassw0rd"


def test_redis_down_error_names_the_store_without_its_password(
    make_store: Callable[..., FeatureStore],
) -> None:
    # Nothing listens on this port: no server is needed to reach the error path.
    url = f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"
    with pytest.raises(UnavailableError) as e:
        s = make_store(url, timeout_s=0.05, on_unavailable="error")
        s.apply(CARD, TXN)
        s.plan(["txn:amount_7d"]).get([1])
    message = str(e.value)
    assert "is unreachable" in message
    assert SECRET not in message and "redis://:***@127.0.0.1" in message
