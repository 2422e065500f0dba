"""The SQS adapter against a real SQS API server: deleting a whole receive after commit."""

from __future__ import annotations

import dataclasses

from inserter_harness import Env


def test_delete_all_deletes_every_message_ten_per_call_and_names_a_stale_receipt(env: Env) -> None:
    queue = env.queue()
    sent = {queue.send(f"body-{i}") for i in range(12)}
    held = []
    while len(held) < 12:
        got = queue.receive(max_messages=10, wait_seconds=1, visibility_timeout=60)
        assert got, f"received {len(held)} of 12"
        held.extend(got)
    assert {m.message_id for m in held} == sent
    stale = dataclasses.replace(held[0], message_id="stale", receipt_handle="not-a-receipt-handle")

    gone = queue.delete_all([*held, stale])  # 13 entries: two calls

    assert gone == ["stale"]
    assert env.queue_depth() == 0
