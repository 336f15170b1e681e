"""_core.running_loop() answers what asyncio.get_running_loop() answers, with its per-thread
cache following every loop that starts or stops on a thread."""

from __future__ import annotations

import asyncio
import threading

import pytest

from aiarch import _core

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    uvloop = None

_FACTORIES = [asyncio.new_event_loop] + ([uvloop.new_event_loop] if uvloop is not None else [])


async def _both() -> tuple[asyncio.AbstractEventLoop, asyncio.AbstractEventLoop]:
    return _core.running_loop(), asyncio.get_running_loop()


def test_is_the_running_loop_of_each_loop_run_in_turn_on_one_thread() -> None:
    loops = [factory() for factory in _FACTORIES for _ in range(2)]
    try:
        for loop in loops:
            ours, theirs = loop.run_until_complete(_both())
            assert ours is theirs is loop
    finally:
        for loop in loops:
            loop.close()


def test_raises_like_asyncio_when_no_loop_runs_here() -> None:
    with pytest.raises(RuntimeError, match="no running event loop"):
        _core.running_loop()
    # The same after a loop ran on this thread and stopped (its answer was cached meanwhile).
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(_both())
    finally:
        loop.close()
    with pytest.raises(RuntimeError, match="no running event loop"):
        _core.running_loop()


def test_each_thread_sees_its_own_loop() -> None:
    # Two threads each run a loop at the same time; each asks for the running loop while
    # the other's loop runs too.
    both_running = threading.Barrier(2, timeout=30)
    seen: dict[int, tuple[object, object]] = {}

    def worker(k: int) -> None:
        async def main() -> None:
            _core.running_loop()  # cached before the other thread's loop starts
            await asyncio.get_running_loop().run_in_executor(None, both_running.wait)
            seen[k] = (_core.running_loop(), asyncio.get_running_loop())

        asyncio.run(main())

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(seen) == [0, 1]
    for ours, theirs in seen.values():
        assert ours is theirs
    assert seen[0][0] is not seen[1][0]
