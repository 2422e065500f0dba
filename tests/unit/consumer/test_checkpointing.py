"""The one checkpoint policy: how each KCL refusal is read, retried and reported."""

from __future__ import annotations

import pytest
from support.checkpoints import Checkpoints

from pipeline.consumer.checkpointing import (
    CheckpointRefused,
    CheckpointThrottled,
    KclError,
    LeaseLost,
    Refusal,
    checkpoint,
    reading_of,
)
from pipeline.core.errors import TerminalError, TransientError
from pipeline.core.retry import Backoff

NO_WAIT = Backoff(base=0.0, cap=0.0, max_attempts=3)


@pytest.mark.parametrize(
    ("value", "reading"),
    [
        (KclError.SHUTDOWN, Refusal.LEASE_LOST),
        (KclError.THROTTLING, Refusal.RETRY),
        (KclError.DEPENDENCY, Refusal.RETRY),
        (KclError.INVALID_STATE, Refusal.WRONG),
        (KclError.ILLEGAL_ARGUMENT, Refusal.WRONG),
        ("SomethingNew", Refusal.WRONG),
    ],
)
def test_each_refusal_has_one_reading(value: str, reading: Refusal) -> None:
    assert reading_of(value) is reading


def test_a_checkpoint_lands_at_the_position_given() -> None:
    ckpt = Checkpoints()
    checkpoint(ckpt, "42", 3, backoff=NO_WAIT)
    checkpoint(ckpt, backoff=NO_WAIT)
    assert ckpt.calls == [("42", 3), (None, None)]


def test_throttles_are_retried_until_the_checkpoint_lands() -> None:
    ckpt = Checkpoints(fail=[KclError.THROTTLING, KclError.DEPENDENCY])
    slept: list[float] = []
    checkpoint(ckpt, "7", 0, backoff=NO_WAIT, sleep=slept.append)
    assert ckpt.calls == [("7", 0)] and len(slept) == 2


def test_throttles_past_the_retries_are_transient_and_keep_the_kcl_name() -> None:
    ckpt = Checkpoints(fail=[KclError.THROTTLING] * 5)
    with pytest.raises(CheckpointThrottled, match="gave up after 3 attempts") as caught:
        checkpoint(ckpt, "7", 0, backoff=NO_WAIT, sleep=lambda _s: None)
    assert isinstance(caught.value, TransientError) and caught.value.value == KclError.THROTTLING
    assert ckpt.calls == []


def test_a_lost_lease_is_not_retried() -> None:
    ckpt = Checkpoints(fail=[KclError.SHUTDOWN, KclError.SHUTDOWN])
    with pytest.raises(LeaseLost, match="checkpoint at 9 refused: lease lost") as caught:
        checkpoint(ckpt, "9", 0, backoff=NO_WAIT)
    assert caught.value.value == KclError.SHUTDOWN and ckpt.fail == [KclError.SHUTDOWN]


def test_a_wrong_call_is_terminal_and_says_where() -> None:
    ckpt = Checkpoints(fail=[KclError.INVALID_STATE])
    with pytest.raises(
        CheckpointRefused, match="checkpoint at SHARD_END refused: InvalidStateException"
    ) as caught:
        checkpoint(ckpt, backoff=NO_WAIT)
    assert isinstance(caught.value, TerminalError)
