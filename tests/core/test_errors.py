"""The one error table: each native status code raises one class through the binding, and every
exception class answers the HTTP status it declares when it fails a served request."""

from __future__ import annotations

import asyncio
import importlib

import numpy as np
import pytest

import aiarch
from aiarch import _core, errors
from aiarch.serving.errors import HttpError, status_for_exception

# The table as the HTTP API promises it, pinned to literals (not read back from the classes).
EXPECTED = {
    "INVALID_ARGUMENT": (aiarch.InvalidArgumentError, 400),
    "NOT_FOUND": (aiarch.NotFoundError, 404),
    "ALREADY_EXISTS": (aiarch.AlreadyExistsError, 400),
    "RESOURCE_EXHAUSTED": (aiarch.ResourceExhaustedError, 429),
    "DEADLINE_EXCEEDED": (aiarch.DeadlineExceededError, 504),
    "CANCELLED": (aiarch.RequestCancelledError, 499),
    "UNAVAILABLE": (aiarch.UnavailableError, 503),
    "INTERNAL": (aiarch.InternalError, 500),
    "EXECUTION_FAILED": (aiarch.ExecutionError, 500),
}

# Classes defined outside aiarch.errors whose HTTP status differs from their parent's.
EXPECTED_REFINEMENTS = {
    ("aiarch.registry.errors", "ConflictError"): 409,
    ("aiarch.registry.errors", "GateFailedError"): 412,
    ("aiarch.registry.errors", "ModelNotFoundError"): 404,
    ("aiarch.registry.errors", "IntegrityError"): 500,
    ("aiarch.bench.capacity", "GeneratorBehindError"): 503,
}

# Modules that define AiarchError subclasses, imported so the walk below sees every class.
_MODULES_WITH_ERRORS = ("aiarch.registry.errors", "aiarch.train.launcher", "aiarch.bench.capacity")


def _every_error_class() -> list[type[aiarch.AiarchError]]:
    for name in _MODULES_WITH_ERRORS:
        importlib.import_module(name)
    seen: list[type[aiarch.AiarchError]] = []
    todo: list[type[aiarch.AiarchError]] = [aiarch.AiarchError]
    while todo:
        cls = todo.pop()
        if cls not in seen:
            seen.append(cls)
            todo.extend(cls.__subclasses__())
    return sorted(seen, key=lambda c: f"{c.__module__}.{c.__qualname__}")


def _instance(cls: type[aiarch.AiarchError]) -> aiarch.AiarchError:
    return cls("something failed")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_status_code_raises_its_class_message_and_http_status(name):
    cls, http = EXPECTED[name]
    code = _core.STATUS_CODES[name]
    with pytest.raises(cls) as info:
        _core._raise_status(code, f"message for {name}")
    assert type(info.value) is cls
    assert isinstance(info.value, aiarch.AiarchError)
    assert str(info.value) == f"message for {name}"
    assert info.value.code == code
    assert info.value.http_status == http
    assert status_for_exception(info.value)[:2] == (http, f"message for {name}")


def test_the_mapping_is_complete_and_one_to_one():
    codes = {v for k, v in _core.STATUS_CODES.items() if k != "OK"}
    assert codes == set(errors.ERRORS_BY_CODE)
    assert len(set(errors.ERRORS_BY_CODE.values())) == len(codes)
    assert set(EXPECTED) | {"OK"} == set(_core.STATUS_CODES)


def test_python_status_codes_match_the_native_ones():
    assert {c.name: int(c) for c in errors.StatusCode} == _core.STATUS_CODES


def test_an_unknown_code_raises_internal_error_with_the_message():
    with pytest.raises(aiarch.InternalError, match=r"^from the future$") as info:
        _core._raise_status(max(_core.STATUS_CODES.values()) + 1, "from the future")
    assert type(info.value) is aiarch.InternalError


def test_retry_after_travels_with_resource_exhausted_to_the_header():
    with pytest.raises(aiarch.ResourceExhaustedError) as info:
        _core._raise_status(_core.STATUS_CODES["RESOURCE_EXHAUSTED"], "full", retry_after_s=2.2)
    assert info.value.retry_after_s == 2.2
    assert status_for_exception(info.value) == (429, "full", (("retry-after", "3"),))


def test_ok_raises_nothing():
    _core._raise_status(0, "")


@pytest.mark.parametrize(
    "cls", _every_error_class(), ids=lambda c: f"{c.__module__}.{c.__qualname__}"
)
def test_every_exception_class_is_served_with_its_own_http_status(cls):
    status = cls.http_status
    assert isinstance(status, int) and 400 <= status <= 599, status
    assert cls.code in errors.ERRORS_BY_CODE, "code must be one the binding raises"
    served, message, _ = status_for_exception(_instance(cls))
    assert served == status
    assert message == "something failed"


@pytest.mark.parametrize("where", sorted(EXPECTED_REFINEMENTS), ids=lambda w: w[1])
def test_refined_classes_declare_their_own_status(where):
    module, name = where
    cls = getattr(importlib.import_module(module), name)
    assert status_for_exception(_instance(cls))[0] == EXPECTED_REFINEMENTS[where]


def test_non_aiarch_errors_are_500_without_their_message():
    status, message, _ = status_for_exception(KeyError("secret detail"))
    assert (status, message) == (500, "internal error: KeyError")
    assert status_for_exception(HttpError(413, "too big")) == (413, "too big", ())
    assert status_for_exception(asyncio.CancelledError())[0] == 499


# Each bind file raises through the same table: one failing call per file.
def _bad_batch_config():
    _core.BatchConfig(0, 0, [], 1, 1, 1, 1, False, False)


def _bad_feature_table():
    _core.FeatureTable(1, "uuid")


def _bad_drift_sketch():
    _core.DriftSketch([0, 1], [[0.5]])


def _bad_load_generator():
    _core.LoadGenerator("127.0.0.1", 1, [b"GET / HTTP/1.1\r\n\r\n"], mode="bogus")


@pytest.mark.parametrize(
    "call", [_bad_batch_config, _bad_feature_table, _bad_drift_sketch, _bad_load_generator]
)
def test_every_bind_file_raises_through_the_table(call):
    with pytest.raises(aiarch.InvalidArgumentError) as info:
        call()
    assert type(info.value) is aiarch.InvalidArgumentError
    assert status_for_exception(info.value)[0] == 400


def test_model_failure_keeps_the_models_exception_as_cause():
    def boom(x: np.ndarray) -> np.ndarray:
        raise KeyError("inside the model")

    with aiarch.Runtime() as rt:
        rt.add_model(
            "boom",
            boom,
            inputs=[aiarch.TensorSpec("x", "float32", (1,))],
            outputs=[aiarch.TensorSpec("y", "float32", (1,))],
            warmup=False,
        )
        with pytest.raises(aiarch.ExecutionError, match="raised KeyError") as info:
            rt.infer_sync("boom", np.zeros((1, 1), np.float32))
    assert isinstance(info.value.__cause__, KeyError)
    assert status_for_exception(info.value)[0] == 500
