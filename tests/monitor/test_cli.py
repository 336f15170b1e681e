"""`aiarch monitor profile` writes a profile that loads back; bad input exits 2 with a message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aiarch.cli import main
from aiarch.monitor import Profile


def test_profile_from_npy_and_parquet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = np.random.default_rng(0).normal(size=(500, 3))
    np.save(tmp_path / "train.npy", x)
    assert main(["monitor", "profile", str(tmp_path / "train.npy"), "-o", str(tmp_path / "a")]) == 0
    a = Profile.from_bytes((tmp_path / "a").read_bytes())
    assert a.names == ["f0", "f1", "f2"] and a.rows == 500
    assert a.reference().tolist() == Profile.build(x).reference().tolist()

    pq.write_table(
        pa.table({"age": x[:, 0], "plan": np.where(x[:, 1] > 0, "pro", "free")}),
        tmp_path / "train.parquet",
    )
    out = tmp_path / "b"
    rc = main(
        ["monitor", "profile", str(tmp_path / "train.parquet"), "-o", str(out), "--bins", "4"]
    )
    assert rc == 0
    b = Profile.from_bytes(out.read_bytes())
    assert [f.kind for f in b.features] == ["numeric", "categorical"]
    assert b.features[1].categories == ["free", "pro"]
    assert len(b.features[0].edges) == 3
    assert "2 features" in capsys.readouterr().out


def test_profile_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["monitor", "profile", str(tmp_path / "x.csv"), "-o", str(tmp_path / "p")]) == 2
    assert "expected a .npy or .parquet file" in capsys.readouterr().err
    np.save(tmp_path / "cube.npy", np.zeros((2, 2, 2)))
    assert main(["monitor", "profile", str(tmp_path / "cube.npy"), "-o", str(tmp_path / "p")]) == 2
    assert "expected a 2-D array" in capsys.readouterr().err
