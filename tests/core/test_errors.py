"""One Python error class per native status code, mapped 1:1 by the binding."""

from __future__ import annotations

import pytest

import aiarch
from aiarch import _core, errors

EXPECTED = {
    "INVALID_ARGUMENT": aiarch.InvalidArgumentError,
    "NOT_FOUND": aiarch.NotFoundError,
    "ALREADY_EXISTS": aiarch.AlreadyExistsError,
    "RESOURCE_EXHAUSTED": aiarch.ResourceExhaustedError,
    "DEADLINE_EXCEEDED": aiarch.DeadlineExceededError,
    "CANCELLED": aiarch.RequestCancelledError,
    "UNAVAILABLE": aiarch.UnavailableError,
    "INTERNAL": aiarch.InternalError,
    "EXECUTION_FAILED": aiarch.ExecutionError,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_status_code_raises_its_class_with_the_message(name):
    code = _core.STATUS_CODES[name]
    with pytest.raises(EXPECTED[name]) as info:
        _core._raise_status(code, f"message for {name}")
    assert type(info.value) is EXPECTED[name]
    assert isinstance(info.value, aiarch.AiarchError)
    assert str(info.value) == f"message for {name}"
    assert info.value.code == code


def test_the_mapping_is_complete_and_one_to_one():
    codes = {v for k, v in _core.STATUS_CODES.items() if k != "OK"}
    assert codes == set(errors.ERRORS_BY_CODE)
    assert len(set(errors.ERRORS_BY_CODE.values())) == len(codes)


def test_retry_after_travels_with_resource_exhausted():
    with pytest.raises(aiarch.ResourceExhaustedError) as info:
        _core._raise_status(_core.STATUS_CODES["RESOURCE_EXHAUSTED"], "full", retry_after_s=0.25)
    assert info.value.retry_after_s == 0.25


def test_ok_raises_nothing():
    _core._raise_status(0, "")
