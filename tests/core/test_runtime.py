"""aiarch.Runtime end to end: batching policy, bad input, faults, shutdown.

Time-based behaviour is driven by a ManualClock: advance() returns once every
batcher has acted on the new time, so nothing here sleeps or races a timer.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

import aiarch
from aiarch import BatchConfig, CacheConfig, TensorSpec

X = [TensorSpec("x", "float32", (4,))]
US = 1_000  # ns


class Recorder:
    """A model that records every batch it is called with."""

    def __init__(self, fn=lambda x: x * 2):
        self.fn = fn
        self.batches: list[np.ndarray] = []
        self.lock = threading.Lock()

    def __call__(self, x):
        with self.lock:
            self.batches.append(np.array(x))
        return self.fn(x)


def rows(n: int, start: float = 0.0) -> np.ndarray:
    return np.arange(n * 4, dtype=np.float32).reshape(n, 4) + start


# ---------------------------------------------------------------- results


@pytest.mark.parametrize("inline", [True, False])
def test_async_results_match_a_sequential_reference(run, inline):
    """Differential: every request's output equals the model applied to it alone."""
    rng = np.random.default_rng(7)
    model = Recorder(lambda x: np.tanh(x) + x.sum(axis=1, keepdims=True))
    with aiarch.Runtime() as rt:
        rt.add_model(
            "m",
            model,
            inputs=X,
            batching=BatchConfig(max_batch_size=16, max_delay_us=200, inline_execution=inline),
        )
        requests = [
            rng.standard_normal((int(rng.integers(1, 5)), 4)).astype(np.float32) for _ in range(300)
        ]

        async def main():
            return await asyncio.gather(*(rt.infer("m", r) for r in requests))

        outputs = run(main())
    for r, y in zip(requests, outputs):
        np.testing.assert_allclose(y, np.tanh(r) + r.sum(axis=1, keepdims=True), rtol=1e-6)
    # Requests were really batched: fewer model calls than requests.
    assert len(model.batches) < len(requests)
    assert all(b.shape[0] <= 16 for b in model.batches)


def test_infer_sync_from_many_threads():
    with aiarch.Runtime() as rt:
        rt.add_model("m", lambda x: x + 1, inputs=X, batching=BatchConfig(max_delay_us=100))
        errors: list[BaseException] = []

        def worker(seed: int) -> None:
            try:
                for i in range(50):
                    x = rows(1, seed * 1000 + i)
                    np.testing.assert_array_equal(rt.infer_sync("m", x), x + 1)
            except BaseException as e:  # surfaced below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors
        assert rt.stats("m")["requests"]["success"] == 400


def test_inline_bound_keeps_slow_batches_off_the_calling_thread():
    """With inline_max_exec_us, a batch runs on the submitting thread only once its size has
    been measured to run within the bound; a slow batch moves the next ones to a worker."""
    ran_on: list[int] = []

    def model(x):
        ran_on.append(threading.get_ident())
        if x[0, 0] == 99:
            time.sleep(0.5)  # the moving average of this size goes far past the bound
        return x

    me = threading.get_ident()
    batching = BatchConfig(inline_execution=True, inline_max_exec_us=50_000)
    with aiarch.Runtime() as rt:
        rt.add_model("m", model, inputs=X, batching=batching, warmup=False)
        for x in (rows(1), rows(1), rows(1, 99), rows(1)):
            # A worker delivers its batch's results before it frees its instance: wait for
            # that, so that the next submit finds the instance free, as the claim needs.
            while rt.stats("m")["in_flight_batches"]:
                time.sleep(0.001)
            np.testing.assert_array_equal(rt.infer_sync("m", x), x)
    first, measured_quick, slow, after_slow = ran_on
    assert first != me  # not measured yet: a worker runs it
    assert measured_quick == me
    assert slow == me  # its size was measured quick before it ran
    assert after_slow != me


def test_inline_max_exec_us_must_be_positive():
    with pytest.raises(ValueError, match="inline_max_exec_us"):
        BatchConfig(inline_max_exec_us=0)


def test_multi_input_multi_output_and_input_forms(run):
    def fn(a, b):
        return a + b, (a * b).astype(np.float64)

    with aiarch.Runtime() as rt:
        info = rt.add_model(
            "m", fn, inputs=[TensorSpec("a", "float32", (2,)), TensorSpec("b", "float32", (2,))]
        )
        assert [o.dtype for o in info.outputs] == ["float32", "float64"]
        a = np.array([[1, 2]], np.float32)
        b = np.array([[3, 4]], np.float32)
        s, p = rt.infer_sync("m", (a, b))
        np.testing.assert_array_equal(s, [[4, 6]])
        np.testing.assert_array_equal(p, [[3, 8]])
        s2, _ = rt.infer_sync("m", {"b": b, "a": a})
        np.testing.assert_array_equal(s2, s)
        # Nested lists take the declared dtype.
        s3, _ = rt.infer_sync("m", ([[1, 2]], [[3, 4]]))
        np.testing.assert_array_equal(s3, s)

        async def main():
            return await rt.infer("m", {"a": a, "b": b})

        np.testing.assert_array_equal(run(main())[0], s)


def test_outputs_are_read_only_views():
    with aiarch.Runtime() as rt:
        rt.add_model("m", lambda x: x * 2, inputs=X)
        y = rt.infer_sync("m", rows(2))
        assert not y.flags.writeable
        with pytest.raises(ValueError):
            y[0, 0] = 1


def test_specs_learned_from_first_request_when_not_declared():
    with aiarch.Runtime() as rt:
        info = rt.add_model("m", lambda x: x[:, :1])
        assert not info.inputs
        y = rt.infer_sync("m", np.ones((3, 5), np.int32))
        assert y.shape == (3, 1)
        info = rt.model_info("m")
        assert info.inputs == (TensorSpec("input0", "int32", (5,)),)
        assert info.outputs == (TensorSpec("output0", "int32", (1,)),)
        with pytest.raises(aiarch.InvalidArgumentError, match=r"expected shape \[-1, 5\]"):
            rt.infer_sync("m", np.ones((3, 6), np.int32))


# ---------------------------------------------------------------- batch policy


def test_batch_closes_after_max_delay_not_before(run):
    clock = aiarch.ManualClock()
    model = Recorder()
    with aiarch.Runtime(clock=clock) as rt:
        rt.add_model(
            "m",
            model,
            inputs=X,
            warmup=False,
            batching=BatchConfig(max_batch_size=8, max_delay_us=1000),
        )

        async def main():
            tasks = [asyncio.ensure_future(rt.infer("m", rows(1, i))) for i in range(3)]
            await asyncio.sleep(0)  # let the three submits happen
            await asyncio.to_thread(clock.advance, 999 * US)
            assert model.batches == []
            assert rt.stats("m")["queue_rows"] == 3
            await asyncio.to_thread(clock.advance, 1 * US)
            return await asyncio.gather(*tasks)

        outs = run(main())
    assert len(model.batches) == 1 and model.batches[0].shape == (3, 4)
    for i, y in enumerate(outs):
        np.testing.assert_array_equal(y, rows(1, i) * 2)


@pytest.mark.parametrize("inline", [True, False])
def test_full_batch_closes_without_waiting(run, inline):
    clock = aiarch.ManualClock()
    model = Recorder()
    with aiarch.Runtime(clock=clock) as rt:
        rt.add_model(
            "m",
            model,
            inputs=X,
            warmup=False,
            batching=BatchConfig(
                max_batch_size=4, max_delay_us=10_000_000, inline_execution=inline
            ),
        )

        async def main():
            # Time never moves: only the size bound can close these batches.
            return await asyncio.wait_for(
                asyncio.gather(*(rt.infer("m", rows(1, i)) for i in range(8))), timeout=30
            )

        run(main())
    assert [b.shape[0] for b in model.batches] == [4, 4]


def test_preferred_batch_sizes_pad_with_zero_rows():
    clock = aiarch.ManualClock()
    model = Recorder()
    with aiarch.Runtime(clock=clock) as rt:
        rt.add_model(
            "m",
            model,
            inputs=X,
            warmup=False,
            batching=BatchConfig(max_batch_size=8, max_delay_us=0, preferred_batch_sizes=(4, 8)),
        )
        y = rt.infer_sync("m", rows(3))
    np.testing.assert_array_equal(y, rows(3) * 2)
    assert model.batches[0].shape == (4, 4)
    np.testing.assert_array_equal(model.batches[0][3], 0)


def test_higher_priority_is_served_first(run):
    clock = aiarch.ManualClock()
    model = Recorder()
    with aiarch.Runtime(clock=clock) as rt:
        rt.add_model(
            "m",
            model,
            inputs=X,
            warmup=False,
            batching=BatchConfig(
                max_batch_size=4, max_delay_us=100, priority_levels=2, inline_execution=False
            ),
        )

        async def main():
            low = [asyncio.ensure_future(rt.infer("m", rows(1, 100 + i))) for i in range(2)]
            high = [asyncio.ensure_future(rt.infer("m", rows(1, i), priority=1)) for i in range(2)]
            await asyncio.wait_for(asyncio.gather(*low, *high), timeout=30)

        run(main())
    # Time never moves, so only the size bound closes the batch: it holds all
    # four rows, the two priority-1 rows first.
    np.testing.assert_array_equal(model.batches[0][:, 0], [0, 1, 100, 101])
    with aiarch.Runtime() as rt:
        rt.add_model("m", lambda x: x, inputs=X)
        with pytest.raises(aiarch.InvalidArgumentError, match="priority 3"):
            rt.infer_sync("m", rows(1), priority=3)


# ---------------------------------------------------------------- faults


def test_bad_input_errors_name_what_was_expected():
    with aiarch.Runtime() as rt:
        rt.add_model("m", lambda x: x, inputs=X, batching=BatchConfig(max_batch_size=8))
        cases = [
            (np.ones((1, 4), np.float64), r"expected dtype float32, got float64"),
            (np.ones((1, 5), np.float32), r"expected shape \[-1, 4\] \(rows first\), got \[1, 5\]"),
            (np.ones((1, 4), dtype=object), r"got dtype object"),
            (np.ones((0, 4), np.float32), r"at least one row"),
            (np.ones((9, 4), np.float32), r"at most max_batch_size=8"),
            ((rows(1), rows(1)), r"expects 1 input\(s\) \(x: float32\[-1, 4\]\), got 2"),
            ("nope", r"cannot convert|expected"),
        ]
        for x, pattern in cases:
            with pytest.raises(aiarch.InvalidArgumentError, match=pattern):
                rt.infer_sync("m", x)
        with pytest.raises(aiarch.NotFoundError, match=r"'missing' is not loaded; loaded: \['m'\]"):
            rt.infer_sync("missing", rows(1))
        # The model is unaffected by the bad requests.
        np.testing.assert_array_equal(rt.infer_sync("m", rows(1)), rows(1))
        assert rt.stats("m")["requests"]["success"] == 1


def test_executor_error_fails_only_the_failing_request_and_the_model_keeps_serving(run):
    calls = []

    def flaky(x):
        calls.append(x.shape[0])
        if (x[:, 0] < 0).any():
            raise ValueError("negative input")
        return x

    with aiarch.Runtime() as rt:
        rt.add_model(
            "m", flaky, inputs=X, batching=BatchConfig(max_batch_size=8, max_delay_us=50_000)
        )

        async def main():
            both = [rt.infer("m", rows(1, -100)), rt.infer("m", rows(1))]
            return await asyncio.gather(*both, return_exceptions=True)

        bad, good = run(main())
        assert isinstance(bad, aiarch.ExecutionError)
        assert "raised ValueError: negative input" in str(bad)
        assert isinstance(bad.__cause__, ValueError)
        np.testing.assert_array_equal(good, rows(1))
        assert calls[-3:] == [2, 1, 1]  # the shared batch, then each half alone
        np.testing.assert_array_equal(rt.infer_sync("m", rows(1)), rows(1))
        stats = rt.stats("m")
        assert stats["requests"]["failed"] == 1
        assert stats["isolation"] == {"batches": 1, "executions": 2}


def test_one_poisoned_request_in_eight_fails_alone_under_concurrency(run):
    def poisoned_rows_raise(x):
        if (x[:, 0] < 0).any():
            raise ValueError("poisoned row")
        return x * 2

    with aiarch.Runtime() as rt:
        rt.add_model(
            "m",
            poisoned_rows_raise,
            inputs=X,
            batching=BatchConfig(max_batch_size=16, instances=2, inline_execution=False),
        )

        async def main():
            xs = [rows(1, -1.0 if i % 8 == 3 else float(i)) for i in range(800)]
            outs = await asyncio.gather(*(rt.infer("m", x) for x in xs), return_exceptions=True)
            return xs, outs

        xs, outs = run(main())
        for i, (x, out) in enumerate(zip(xs, outs)):
            if i % 8 == 3:
                assert isinstance(out, aiarch.ExecutionError), i
            else:
                np.testing.assert_array_equal(out, x * 2)
        stats = rt.stats("m")
        assert stats["requests"]["success"] == 700
        assert stats["requests"]["failed"] == 100
        assert stats["isolation"]["executions"] > 0


def test_malformed_model_outputs_are_execution_errors():
    with aiarch.Runtime() as rt:
        rt.add_model("rows", lambda x: x[:1], inputs=X, warmup=False)
        with pytest.raises(aiarch.ExecutionError, match="rows as its first dimension"):
            rt.infer_sync("rows", rows(1) if False else np.ones((2, 4), np.float32))
        changing = iter([np.ones((1, 4), np.float32), np.ones((1, 4), np.float64)])
        rt.add_model("dtype", lambda x: next(changing), inputs=X, warmup=False)
        rt.infer_sync("dtype", rows(1))
        with pytest.raises(aiarch.ExecutionError, match="expected float32"):
            rt.infer_sync("dtype", rows(1))
    with aiarch.Runtime() as rt, pytest.raises(aiarch.InvalidArgumentError, match="warm-up output"):
        rt.add_model("bad", lambda x: x[:0], inputs=X)


def test_queue_full_fails_at_once_with_retry_after(run):
    clock = aiarch.ManualClock()
    with aiarch.Runtime(clock=clock) as rt:
        rt.add_model(
            "m",
            lambda x: x,
            inputs=X,
            warmup=False,
            batching=BatchConfig(max_batch_size=4, max_queue_rows=4, max_delay_us=1000),
        )

        async def main():
            queued = [asyncio.ensure_future(rt.infer("m", rows(1, i))) for i in range(3)]
            await asyncio.sleep(0)
            with pytest.raises(aiarch.ResourceExhaustedError, match="queue is full") as e:
                await rt.infer("m", rows(2))
            assert e.value.retry_after_s > 0
            await asyncio.to_thread(clock.advance, 1000 * US)
            return await asyncio.gather(*queued)

        assert len(run(main())) == 3
        assert rt.stats("m")["requests"]["rejected"] == 1


def test_queued_request_expires_at_its_deadline_while_the_model_is_busy(run):
    clock = aiarch.ManualClock()
    started, gate = threading.Event(), threading.Event()

    def slow_on_seven(x):
        if x[0, 0] == 7:
            started.set()
            gate.wait()
        return x

    with aiarch.Runtime(clock=clock) as rt:
        rt.add_model("m", slow_on_seven, inputs=X, batching=BatchConfig(inline_execution=False))

        async def main():
            busy = asyncio.ensure_future(rt.infer("m", rows(1, 7)))
            await asyncio.to_thread(started.wait)
            queued = asyncio.ensure_future(rt.infer("m", rows(1), timeout_s=0.001))
            await asyncio.sleep(0)  # let it submit behind the busy batch
            await asyncio.to_thread(clock.advance, 1000 * US)
            with pytest.raises(aiarch.DeadlineExceededError):
                await queued
            assert not busy.done()  # heard while the model was still executing
            gate.set()
            return await busy

        np.testing.assert_array_equal(run(main()), rows(1, 7))
        assert rt.stats("m")["requests"]["expired"] == 1


def test_expired_requests_are_never_executed(run):
    clock = aiarch.ManualClock()
    model = Recorder()
    with aiarch.Runtime(clock=clock) as rt:
        rt.add_model(
            "m",
            model,
            inputs=X,
            warmup=False,
            batching=BatchConfig(max_batch_size=8, max_delay_us=10_000),
        )

        async def main():
            doomed = asyncio.ensure_future(rt.infer("m", rows(1), timeout_s=0.001))
            patient = asyncio.ensure_future(rt.infer("m", rows(1, 1)))
            await asyncio.sleep(0)
            await asyncio.to_thread(clock.advance, 1000 * US)  # the deadline
            with pytest.raises(aiarch.DeadlineExceededError, match="expired before it could run"):
                await doomed
            assert model.batches == []
            await asyncio.to_thread(clock.advance, 9000 * US)  # max_delay of the other
            return await patient

        np.testing.assert_array_equal(run(main()), rows(1, 1) * 2)
        assert [b.shape[0] for b in model.batches] == [1]
        assert rt.stats("m")["requests"]["expired"] == 1
    with aiarch.Runtime() as rt:
        rt.add_model("m", lambda x: x, inputs=X)
        with pytest.raises(aiarch.InvalidArgumentError, match="timeout_s must be > 0"):
            rt.infer_sync("m", rows(1), timeout_s=-1)


def test_cancelling_the_caller_cancels_the_queued_request(run):
    clock = aiarch.ManualClock()
    model = Recorder()
    with aiarch.Runtime(clock=clock) as rt:
        rt.add_model(
            "m",
            model,
            inputs=X,
            warmup=False,
            batching=BatchConfig(max_batch_size=8, max_delay_us=1000),
        )

        async def main():
            t = asyncio.ensure_future(rt.infer("m", rows(1)))
            await asyncio.sleep(0)
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            await asyncio.to_thread(clock.advance, 1000 * US)

        run(main())
        assert model.batches == []
        st = rt.stats("m")
        assert st["requests"]["cancelled"] == 1 and st["queue_rows"] == 0


@pytest.mark.parametrize("leave", ["cancel", "close"])
def test_inputs_of_a_caller_that_left_stay_alive_until_its_batch_completes(run, leave):
    # The batcher reads a request's input bytes until its completion: a caller cancelled
    # (or a coroutine closed) while its batch runs must not free them.
    import weakref

    started, release = threading.Event(), threading.Event()

    def slow(x):
        started.set()
        release.wait(30)
        return x

    with aiarch.Runtime() as rt:
        rt.add_model(
            "m", slow, inputs=X, warmup=False, batching=BatchConfig(inline_execution=False)
        )

        async def main():
            x = rows(1)
            alive = weakref.ref(x)
            coro = rt.infer("m", x)
            del x
            if leave == "cancel":
                t = asyncio.ensure_future(coro)
                while not started.is_set():
                    await asyncio.sleep(0.001)
                t.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await t
                del t
            else:
                fut = coro.send(None)  # submitted; now awaiting its future
                while not started.is_set():
                    await asyncio.sleep(0.001)
                coro.close()
                del fut
            del coro
            assert alive() is not None  # the batch is still running
            release.set()
            for _ in range(3000):
                if alive() is None:
                    break
                await asyncio.sleep(0.001)
            assert alive() is None  # released once the completion arrived

        run(main())


@pytest.mark.parametrize("drain", [True, False])
def test_close_drains_or_fails_queued_requests(run, drain):
    clock = aiarch.ManualClock()
    model = Recorder()
    rt = aiarch.Runtime(clock=clock)
    rt.add_model(
        "m",
        model,
        inputs=X,
        warmup=False,
        batching=BatchConfig(max_batch_size=8, max_delay_us=1_000_000),
    )

    async def main():
        tasks = [asyncio.ensure_future(rt.infer("m", rows(1, i))) for i in range(3)]
        await asyncio.sleep(0)
        rt.close(drain=drain)
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)

    results = run(main())
    if drain:
        assert all(isinstance(r, np.ndarray) for r in results)
        assert sum(b.shape[0] for b in model.batches) == 3
    else:
        assert all(isinstance(r, aiarch.UnavailableError) for r in results)
        assert model.batches == []
    with pytest.raises(aiarch.UnavailableError, match="runtime is closed"):
        rt.infer_sync("m", rows(1))
    rt.close()  # idempotent


def test_model_management():
    with aiarch.Runtime() as rt:
        rt.add_model("a", lambda x: x, inputs=X)
        with pytest.raises(aiarch.AlreadyExistsError):
            rt.add_model("a", lambda x: x, inputs=X)
        for bad in ["", "../etc", "a/b", "x" * 200]:
            with pytest.raises(aiarch.InvalidArgumentError, match="invalid"):
                rt.add_model(bad, lambda x: x)
        with pytest.raises(aiarch.InvalidArgumentError, match="callable"):
            rt.add_model("b", 42)
        with pytest.raises(aiarch.InvalidArgumentError, match="max_queue_rows"):
            rt.add_model(
                "c",
                lambda x: x,
                inputs=X,
                batching=BatchConfig(max_batch_size=64, max_queue_rows=8),
            )
        assert rt.models() == ["a"]
        rt.remove_model("a")
        assert rt.models() == []
        with pytest.raises(aiarch.NotFoundError):
            rt.remove_model("a")


# ---------------------------------------------------------------- cache


def test_cache_hits_skip_the_model_and_invalidate_bumps_generation():
    model = Recorder()
    with aiarch.Runtime() as rt:
        rt.add_model(
            "m",
            model,
            inputs=X,
            cache=CacheConfig(max_bytes=1 << 20),
            batching=BatchConfig(max_delay_us=0),
        )
        x = rows(2, 5)
        y1 = rt.infer_sync("m", x)
        n = len(model.batches)
        y2 = rt.infer_sync("m", x.copy())
        np.testing.assert_array_equal(y1, y2)
        assert len(model.batches) == n
        assert not y2.flags.writeable
        assert rt.stats("m")["cache"]["hits"] == 1
        # Same bytes, different row split: a different key.
        rt.infer_sync("m", x[:1].copy())
        assert len(model.batches) == n + 1
        rt.invalidate_cache("m")
        rt.infer_sync("m", x)
        assert len(model.batches) == n + 2


def test_cache_ttl_follows_the_runtime_clock():
    clock = aiarch.ManualClock()
    model = Recorder()
    with aiarch.Runtime(clock=clock) as rt:
        rt.add_model(
            "m",
            model,
            inputs=X,
            warmup=False,
            cache=CacheConfig(ttl_s=1.0),
            batching=BatchConfig(max_delay_us=0),
        )
        x = rows(1)
        rt.infer_sync("m", x)
        clock.advance(999_000 * US)
        rt.infer_sync("m", x)
        assert len(model.batches) == 1
        clock.advance(2_000 * US)
        rt.infer_sync("m", x)
        assert len(model.batches) == 2


def test_stats_shape():
    with aiarch.Runtime() as rt:
        rt.add_model("m", lambda x: x, inputs=X)
        for _ in range(10):
            rt.infer_sync("m", rows(1))
        st = rt.stats("m")
        assert st["requests"]["success"] == 10
        assert st["batches"] == 10 and st["rows"] == 10
        for k in ("queue", "execution", "end_to_end"):
            lat = st["latency_us"][k]
            assert lat["count"] == 10
            assert 0 <= lat["p50"] <= lat["p99"] <= lat["max"]
        assert st["batch_size"]["counts"] == {1: 10}
        assert st["totals_ns"]["end_to_end"] > 0
        hists = rt.histograms("m")
        assert hists["end_to_end"].total_count == 10


@pytest.mark.parametrize(
    "dtype",
    [
        "bool",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "int8",
        "int16",
        "int32",
        "int64",
        "float16",
        "float32",
        "float64",
    ],
)
def test_every_fixed_size_dtype_round_trips(dtype):
    with aiarch.Runtime() as rt:
        rt.add_model("m", lambda x: x, inputs=[TensorSpec("x", dtype, (3,))])
        x = np.arange(6).reshape(2, 3).astype(dtype)
        y = rt.infer_sync("m", x)
        assert y.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(y, x)


def test_infer_many_returns_each_requests_outputs_in_order_sharing_batches(run):
    with aiarch.Runtime() as rt:
        rt.add_model("m", lambda x: x * 3, inputs=X, batching=BatchConfig(max_batch_size=64))
        xs = [rows(1 + i % 3, float(i)) for i in range(100)]

        outs = run(rt.infer_many("m", xs))
        assert len(outs) == 100
        for x, out in zip(xs, outs):
            np.testing.assert_array_equal(out, x * 3)
        stats = rt.stats("m")
        assert stats["requests"]["success"] == 100
        assert stats["batches"] < 100  # submitted in one pass: they share batches


def test_infer_many_isolates_errors_when_asked_and_raises_otherwise(run):
    def poisoned_rows_raise(x):
        if (x[:, 0] < 0).any():
            raise ValueError("poisoned row")
        return x

    with aiarch.Runtime() as rt:
        rt.add_model("m", poisoned_rows_raise, inputs=X)
        xs = [rows(1, -1.0 if i == 2 else float(i)) for i in range(6)]
        xs[4] = np.ones((1, 5), np.float32)  # wrong shape: refused at submit

        outs = run(rt.infer_many("m", xs, return_exceptions=True))
        assert isinstance(outs[2], aiarch.ExecutionError)
        assert isinstance(outs[4], aiarch.InvalidArgumentError)
        for i in (0, 1, 3, 5):
            np.testing.assert_array_equal(outs[i], xs[i])

        with pytest.raises(aiarch.InvalidArgumentError, match="expected shape"):
            run(rt.infer_many("m", xs))
        with pytest.raises(aiarch.ExecutionError, match="poisoned row"):
            run(rt.infer_many("m", xs[:4]))
        # Nothing is left queued or unresolved by an abandoned call.
        assert rt.stats("m")["queue_rows"] == 0
        np.testing.assert_array_equal(rt.infer_sync("m", rows(1)), rows(1))


class _OwnFutureLoop(asyncio.SelectorEventLoop):
    """A loop that makes its own futures (a subclass of asyncio.Future), counting them."""

    class Future(asyncio.Future):  # type: ignore[type-arg]
        pass

    made = 0

    def create_future(self) -> asyncio.Future:  # type: ignore[type-arg]
        type(self).made += 1
        return self.Future(loop=self)


def test_infer_awaits_the_futures_a_loop_makes_itself() -> None:
    with aiarch.Runtime() as rt:
        rt.add_model("double", lambda x: x * 2, inputs=X)

        async def main() -> list[np.ndarray]:
            return await asyncio.gather(*(rt.infer("double", rows(1, i)) for i in range(3)))

        loop = _OwnFutureLoop()
        try:
            outs = loop.run_until_complete(main())
        finally:
            loop.close()
    assert _OwnFutureLoop.made == 3, "infer did not ask the loop for its futures"
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out, rows(1, i) * 2)


def test_infer_on_a_stock_loop_gets_plain_asyncio_futures(run) -> None:  # type: ignore[no-untyped-def]
    # The queue makes asyncio.Future(loop=loop) itself, as loop.create_future() would.
    with aiarch.Runtime() as rt:
        rt.add_model("double", lambda x: x * 2, inputs=X)

        async def main() -> None:
            loop = asyncio.get_running_loop()
            st = rt._attach(loop)
            _, fut = st.submit(rt.native_handle("double"), rows(1), 0, 0)
            assert type(fut) is asyncio.Future
            assert fut.get_loop() is loop
            np.testing.assert_array_equal(await fut, rows(1) * 2)

        run(main())
