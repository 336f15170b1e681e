"""A serving process for the merge test: serves its share of seeded batches through a Runtime
with a Monitor and writes the monitor snapshot plus a histogram of known values as JSON."""

from __future__ import annotations

import sys

import msgspec
import numpy as np

import aiarch
from aiarch.monitor import Monitor, MonitorConfig, Profile
from aiarch.monitor.latency import StageCounts


def main() -> None:
    profile_path, out_path, *batch_ids = sys.argv[1:]
    with open(profile_path, "rb") as fh:
        profile = Profile.from_bytes(fh.read())
    mon = Monitor(profile, config=MonitorConfig(ticker=False))
    known = aiarch.Histogram()
    with aiarch.Runtime() as rt:
        rt.add_model(
            "m",
            lambda x: x[:, :1] * 2,
            inputs=[aiarch.TensorSpec("x", "float64", (4,))],
            monitor=mon,
        )
        for i in map(int, batch_ids):
            rng = np.random.default_rng(i)
            x = rng.normal(loc=0.3 * (i % 3), size=(16, 4))
            x[rng.random(16) < 0.1, 2] = np.nan
            rt.infer_sync("m", x)
            known.record_many((rng.lognormal(11, 1, size=50)).astype(np.int64))
        if batch_ids and int(batch_ids[0]) % 2 == 0:
            mon.tick()  # windows close at different times in different processes
        snap = mon.snapshot()
    with open(out_path, "wb") as fh:
        fh.write(msgspec.json.encode({"snapshot": snap, "known": StageCounts.of(known.snapshot())}))


if __name__ == "__main__":
    main()
