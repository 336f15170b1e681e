"""The native completion queue hands finished requests to their futures in one pass.

A batch that a submit makes closable is left for the caller's flush, but an idle batcher worker
that is already awake may take it first (only a wake-up is saved, not the work): the tests flush
until every request of theirs is answered, whichever thread ran its batch.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from aiarch import TensorSpec, _core

SPEC = [TensorSpec("x", "float32", (2,))]


def _model() -> _core.Model:
    batching = _core.BatchConfig(
        max_batch_size=8,
        max_delay_ns=0,
        preferred_batch_sizes=[],
        max_queue_rows=64,
        instances=1,
        priority_levels=1,
        default_priority_level=1,
        drop_unreachable=False,
        inline_execution=True,
    )
    return _core.Model("double", lambda x: x * 2, SPEC, SPEC, batching)


class RefusingFuture(asyncio.Future):  # type: ignore[type-arg]
    """A future that raises when given its result."""

    def set_result(self, result: object) -> None:
        raise RuntimeError("refused")


def test_flush_resolves_each_future_and_keeps_going_past_one_that_refuses() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        model, queue = _model(), _core.CompletionQueue()
        xs = [np.full((1, 2), i, np.float32) for i in range(3)]
        ids = [model.submit(x, 0, 0, queue) for x in xs]
        futs = [loop.create_future(), RefusingFuture(loop=loop), loop.create_future()]
        pending = {i: (f, x) for i, f, x in zip(ids, futs, xs)}
        errors = []
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            try:
                queue.flush([model], pending)
            except RuntimeError as e:
                errors.append(str(e))
            if pending:
                time.sleep(0.001)
        assert pending == {}
        assert errors == ["refused"], "the refusing future's error was not raised once"
        np.testing.assert_array_equal(futs[0].result(), [[0, 0]])
        np.testing.assert_array_equal(futs[2].result(), [[4, 4]])
        assert not futs[1].done()
        model.shutdown(False)

    asyncio.run(main())


def test_resolve_skips_cancelled_futures_and_unknown_ids() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        model, queue = _model(), _core.CompletionQueue()
        xs = [np.ones((1, 2), np.float32) for _ in range(3)]
        ids = [model.submit(x, 0, 0, queue) for x in xs]
        cancelled, live = loop.create_future(), loop.create_future()
        cancelled.cancel()
        pending = {ids[0]: (cancelled, xs[0]), ids[1]: (live, xs[1])}  # ids[2] not waited for
        resolved = 0
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            model.run_ready()
            resolved += queue.resolve(pending)
            if pending:
                time.sleep(0.001)
        assert pending == {}
        assert resolved == 1  # the live future; the cancelled one and the unknown id are skipped
        np.testing.assert_array_equal(live.result(), [[2, 2]])
        model.shutdown(False)

    asyncio.run(main())
