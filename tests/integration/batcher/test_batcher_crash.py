"""kill -9 at each step of a flush, then a restart from the last checkpoint (real S3, SQS, Redis).

The crash hook raises a BaseException after a step completed, so nothing after it runs — as with
kill -9. The "restart" is a fresh context (a new process: no buffers, no caches) replaying the
shard from the checkpoint the in-test checkpointer recorded last.

What must hold, per step (docs/batcher.md has the reasoning):
* nothing is lost: the rows of *announced* objects cover every valid event;
* with the same cuts on replay (count/bytes/age are record-derived), every event is in exactly
  one committed batch: same keys (If-None-Match finds the earlier objects), same batch ids;
* with different cuts (a pressure, idle or shutdown cut is not reproducible), the events of the
  crashed batch may be announced twice under two batch ids — identical rows the inserter's merge
  on event_id collapses — but only when the crash came before the Redis mark.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from batcher_harness import Checkpoints, Env, after, deliver, ids_in_objects, make_env, records

from pipeline.consumer.processor import ShardEndedInput
from pipeline.core.clients import ClientFactory
from pipeline.core.settings import Settings
from pipeline.producer.synthetic import SyntheticConfig, generate
from workers.batcher.commit import ANNOUNCED, MARKED, WRITTEN

pytestmark = pytest.mark.integration


class Kill(BaseException):
    pass


def _crash_on(step: str, occurrence: int) -> Any:
    seen = Counter[str]()

    def hook(at: str) -> None:
        seen[at] += 1
        if at == step and seen[at] == occurrence:
            raise Kill(f"killed after {step} #{occurrence}")

    return hook


def _announced_rows(env: Env) -> tuple[dict[str, list[dict[str, Any]]], list[Any]]:
    manifests = env.manifests()
    by_key = env.rows_by_key()
    announced = {o.key for m in manifests for o in m.objects}
    for m in manifests:
        for o in m.objects:
            assert o.rows == len(by_key[o.key]), "a manifest must describe the stored object"
    return {k: v for k, v in by_key.items() if k in announced}, manifests


@pytest.mark.parametrize("same_cuts", [True, False], ids=["same-cuts", "other-cuts"])
@pytest.mark.parametrize("step", [WRITTEN, ANNOUNCED, MARKED])
def test_kill_at_each_step_then_restart_loses_nothing(
    clients: ClientFactory, settings: Settings, unique_name: str, step: str, same_cuts: bool
) -> None:
    env = make_env(clients, settings, unique_name)
    synthetic = list(
        generate(SyntheticConfig(seed=23, customers=4, duplicate_ratio=0.05, invalid_ratio=0.02), 1000)
    )
    recs = records([r.data for r in synthetic])
    expected = {r.event_id for r in synthetic if r.valid}

    first = env.processor(flush_records=150, crash=_crash_on(step, 3))
    ckpt = Checkpoints()
    with pytest.raises(Kill):
        deliver(first, recs, ckpt)
    assert len(ckpt.calls) == 2, "the killed (third) flush must not have checkpointed"

    restarted = env.processor(flush_records=150 if same_cuts else 97)
    deliver(restarted, after(recs, ckpt.last), ckpt)
    restarted.shard_ended(ShardEndedInput(ckpt))
    assert ckpt.last == (None, None)

    announced, manifests = _announced_rows(env)
    where = ids_in_objects(announced)
    assert set(where) == expected, "an event was lost"
    twice = {event_id: keys for event_id, keys in where.items() if len(keys) > 1}
    killed_batch = {r.event_id for r in synthetic[300:450] if r.valid}
    if same_cuts or step == MARKED:
        assert twice == {}, f"in more than one object: {sorted(twice)[:5]}"
    else:
        # Announced twice under two batch ids — only events of the killed batch, and identical
        # rows apart from their stream metadata, so the inserter's merge on event_id collapses them.
        assert set(twice) <= killed_batch
        if step == ANNOUNCED:
            assert twice, "the first announcement stands and the replay announces again"
        rows_of: dict[str, list[dict[str, Any]]] = {}
        for key in {k for keys in twice.values() for k in keys}:
            for row in announced[key]:
                if row["event_id"] in twice:
                    rows_of.setdefault(row["event_id"], []).append(
                        {c: v for c, v in row.items() if c not in {"_sequence_number", "_shard_id"}}
                    )
        assert all(len({repr(r) for r in rows}) == 1 for rows in rows_of.values())
    # A resent announcement (killed after SQS, before Redis) repeats the same batch id.
    ids = Counter(m.batch_id for m in manifests)
    repeated = [bid for bid, n in ids.items() if n > 1]
    if same_cuts and step == ANNOUNCED:
        assert repeated == [f"{env.stream}/shardId-000000000000/1300-1449"]
        first_copy, second_copy = [m for m in manifests if m.batch_id == repeated[0]]
        assert first_copy.objects == second_copy.objects
    else:
        assert repeated == []
