"""The native completion queue hands finished requests to their futures in one pass.

A batch that a submit makes closable is left for the caller's flush, but an idle batcher worker
that is already awake may take it first (only a wake-up is saved, not the work): the tests flush
until every request of theirs is answered, whichever thread ran its batch.
"""

from __future__ import annotations

import asyncio
import gc
import time
import warnings
import weakref

import numpy as np
import pytest

import aiarch
from aiarch import TensorSpec, _core

SPEC = [TensorSpec("x", "float32", (2,))]


def _model(cache: _core.ResponseCache | None = None) -> _core.Model:
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
    return _core.Model("double", lambda x: x * 2, SPEC, SPEC, batching, cache)


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


def test_loop_queue_submits_share_one_flush_per_loop_iteration() -> None:
    async def main() -> None:
        model = _model()
        queue = _core.LoopQueue(asyncio.get_running_loop())
        xs = [np.full((1, 2), i, np.float32) for i in range(3)]
        submitted = [queue.submit(model, x, 0, 0) for x in xs]
        ids = [r for r, _ in submitted]
        assert queue.pending == {r: fut for r, fut in submitted}
        assert not any(fut.done() for _, fut in submitted)
        outs = await asyncio.wait_for(asyncio.gather(*(fut for _, fut in submitted)), 30)
        for i, out in enumerate(outs):
            np.testing.assert_array_equal(out, [[2 * i, 2 * i]])
        assert queue.pending == {}
        assert len(set(ids)) == 3
        assert model.stats()["batches"] == 1, "the iteration's submits did not share a batch"
        model.shutdown(False)

    asyncio.run(main())


def test_loop_queue_answers_a_cache_hit_at_submit_with_no_future() -> None:
    async def main() -> None:
        model = _model(_core.ResponseCache(max_bytes=1 << 20))
        queue = _core.LoopQueue(asyncio.get_running_loop())
        x = np.full((1, 2), 3, np.float32)
        r, fut = queue.submit(model, x, 0, 0)
        assert isinstance(r, int)
        np.testing.assert_array_equal(await asyncio.wait_for(fut, 30), [[6, 6]])
        hit_id, outputs = queue.submit(model, x, 0, 0)
        assert hit_id is None
        np.testing.assert_array_equal(outputs, [[6, 6]])
        assert queue.pending == {}
        model.shutdown(False)

    asyncio.run(main())


def test_loop_queue_refuses_bad_inputs_without_filing_anything() -> None:
    async def main() -> None:
        model = _model()
        queue = _core.LoopQueue(asyncio.get_running_loop())
        with pytest.raises(aiarch.InvalidArgumentError, match="input 'x' of model 'double'"):
            queue.submit(model, np.ones((1, 3), np.float32), 0, 0)
        assert queue.pending == {}
        model.shutdown(False)

    asyncio.run(main())


def test_a_flush_scheduled_by_a_queue_that_is_gone_is_harmless() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _, context: errors.append(context))
        model = _model()
        queue = _core.LoopQueue(loop)
        x = np.ones((1, 2), np.float32)
        queue.submit(model, x, 0, 0)  # schedules the flush
        del queue
        await asyncio.sleep(0)  # the flush runs now and finds no queue: no error, no crash
        await asyncio.sleep(0)
        assert errors == []
        model.shutdown(False)  # the request still queued is answered (and dropped)

    asyncio.run(main())


def test_loop_queue_submit_names_what_it_expected() -> None:
    async def main() -> None:
        model = _model()
        queue = _core.LoopQueue(asyncio.get_running_loop())
        x = np.ones((1, 2), np.float32)
        with pytest.raises(TypeError, match=r"needs an aiarch\._core\.Model as its model, got str"):
            queue.submit("double", x, 0, 0)
        with pytest.raises(TypeError, match=r"takes 4 positional arguments .* 3 given"):
            queue.submit(model, x, 0)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="cannot be interpreted as an integer"):
            queue.submit(model, x, "soon", 0)  # type: ignore[arg-type]
        with pytest.raises(OverflowError):
            queue.submit(model, x, 0, -1)
        assert queue.pending == {}
        model.shutdown(False)

    asyncio.run(main())


class _RefusingLoop(asyncio.SelectorEventLoop):
    """A loop whose call_soon raises while `refuse` is set."""

    refuse = False

    def call_soon(self, callback, *args, context=None):  # type: ignore[no-untyped-def]
        if self.refuse:
            raise RuntimeError("call_soon refused")
        return super().call_soon(callback, *args, context=context)


def test_a_submit_whose_flush_cannot_be_scheduled_raises_and_files_nothing() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, _RefusingLoop)
        model = _model()
        queue = _core.LoopQueue(loop)
        loop.refuse = True
        try:
            with pytest.raises(RuntimeError, match="call_soon refused"):
                queue.submit(model, np.ones((1, 2), np.float32), 0, 0)
        finally:
            loop.refuse = False
        assert queue.pending == {}, "a future nobody awaits was left filed"
        model.shutdown(False)

    loop = _RefusingLoop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def test_an_abandoned_loop_watching_its_queue_is_collected() -> None:
    # The loop holds the queue (its reader callback) and the queue holds the loop (call_soon,
    # futures): a cycle the garbage collector must see through to free a loop nobody closed.
    loop = asyncio.new_event_loop()
    queue = _core.LoopQueue(loop, True)
    loop.add_reader(queue.fd, queue.resolve)
    model = _model()
    queue.submit(model, np.ones((1, 2), np.float32), 0, 0)  # a pending future of the loop
    loop_ref = weakref.ref(loop)
    del loop, queue
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # "unclosed event loop", on purpose
        gc.collect()
    assert loop_ref() is None, "the loop and its queue were never freed"
    model.shutdown(False)
