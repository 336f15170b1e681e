"""A registry URL with a password never shows the password in the registry's errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiarch.registry import Registry
from aiarch.registry.pgcluster import TemporaryPostgres

SECRET = "S3cretPassw0rd"


@pytest.mark.postgres
def test_newer_schema_error_on_postgres_hides_the_password(
    postgres: TemporaryPostgres, tmp_path: Path
) -> None:
    import psycopg

    plain = postgres.url(schema="redaction")
    # The test server trusts loopback, so the password is accepted and ignored: what matters
    # is that the URL the user gave carries one.
    url = plain.replace("postgres@", f"postgres:{SECRET}@", 1)
    Registry(url, home=tmp_path / "home").close()
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO schema_migrations (version, description, applied_at) "
            "VALUES (999999, 'from a newer aiarch', 0)"
        )
    with pytest.raises(Exception, match="newer than this aiarch understands") as e:
        Registry(url, home=tmp_path / "home")
    assert SECRET not in str(e.value)
    assert "postgres:***@" in str(e.value)
