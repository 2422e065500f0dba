"""Pure parts of the rebuild (is the archive caught up?) and of the read side (routing, input
checks); no servers."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
import redis

from pipeline.consumer.leases import Lease
from pipeline.consumer.sequence import SHARD_END, TRIM_HORIZON, ExtendedSequenceNumber
from pipeline.core.errors import TerminalError
from workers.projector import keys
from workers.projector.readapi import ROUTES, route
from workers.projector.reader import QueryError, ReadModelReader, describe_origin, parse_time
from workers.projector.rebuild import CatchUp, merge_targets, unarchived


def lease(key: str, checkpoint: str, parents: tuple[str, ...] = ()) -> Lease:
    return Lease(key, checkpoint=ExtendedSequenceNumber(checkpoint), parent_shard_ids=frozenset(parents))


def seq(n: int) -> ExtendedSequenceNumber:
    return ExtendedSequenceNumber(str(n))


def test_a_shard_is_archived_once_the_batcher_checkpointed_past_the_target() -> None:
    targets = {"s0": seq(100), "s1": seq(100), "s2": seq(100), "s3": seq(100), "s4": seq(5), "s5": seq(1)}
    batcher = [
        lease("s0", "100"),  # exactly there
        lease("s1", "99"),  # behind
        lease("s2", SHARD_END),  # closed shard, done
        lease("s3", TRIM_HORIZON),  # never checkpointed
        lease("s6", "1", parents=("s4",)),  # s4's lease is gone, its child runs: done
    ]
    assert unarchived(targets, batcher) == ["s1", "s3", "s5"]


def test_targets_are_the_furthest_of_applied_positions_and_checkpoints() -> None:
    positions = {"s0": "500", "s1": "10"}
    projector = [lease("s0", "400"), lease("s1", "20"), lease("s2", TRIM_HORIZON), lease("s3", "7")]
    assert merge_targets(positions, projector) == {"s0": seq(500), "s1": seq(20), "s3": seq(7)}


class _Leases:
    def __init__(self, rounds: list[list[Lease]]) -> None:
        self.rounds = rounds
        self.table = "batcher"

    def list_leases(self) -> list[Lease]:
        return self.rounds.pop(0) if len(self.rounds) > 1 else self.rounds[0]


def test_catch_up_waits_beating_the_heart_then_returns() -> None:
    batcher = _Leases([[lease("s0", "5")], [lease("s0", "9")], [lease("s0", "10")]])
    beats: list[int] = []
    waiter = CatchUp(batcher, None, timeout=60, poll=0, sleep=lambda _s: None)  # type: ignore[arg-type]
    waiter.wait({"s0": "10"}, lambda: beats.append(1))
    assert len(beats) == 2


def test_catch_up_gives_up_with_the_lagging_shards() -> None:
    waiter = CatchUp(_Leases([[lease("s0", "5")]]), None, timeout=0, poll=0, sleep=lambda _s: None)  # type: ignore[arg-type]
    with pytest.raises(TerminalError, match="s0"):
        waiter.wait({"s0": "10"}, lambda: None)


def test_routes_decode_segments_after_matching() -> None:
    found = route("/v1/customers/cust_1/entities/order/ord%2F7%3Ax")
    assert found is not None and found[0] == "entity" and found[2] == ("cust_1", "order", "ord/7:x")
    assert route("/v1/customers/cust_1/top/revenue.EUR")[2] == ("cust_1", "revenue.EUR")  # type: ignore[index]
    assert route("/v1/customers/cust_1/calendars/prov_1")[0] == "calendar"  # type: ignore[index]
    assert route("/v1/customers/cust_1/counts/page_view")[0] == "counts"  # type: ignore[index]
    assert route("/v1/customers/cust_1/entities/order") is None
    assert route("/nope") is None


NOW = datetime(2024, 5, 1, 12, tzinfo=UTC)
READER = ReadModelReader(
    redis.Redis(port=1), keys.Namespace("rm:unit:"), ["page_view", "order_placed"], clock=lambda: NOW
)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: READER.counts("Bad!", "page_view"), "not a valid customer id"),
        (lambda: READER.counts("c1", "nope"), "unknown event type 'nope'; known: order_placed, page_view"),
        (lambda: READER.counts("c1", "page_view", "week"), "hour or day"),
        (
            lambda: READER.counts("c1", "page_view", "hour", NOW - timedelta(days=40), NOW),
            "at most 744 hours",
        ),
        (lambda: READER.counts("c1", "page_view", "day", NOW, NOW - timedelta(days=1)), "from is after to"),
        (lambda: READER.entity("c1", "spaceship", "x"), "unknown entity kind"),
        (lambda: READER.entity("c1", "user", ""), "1..256"),
        (lambda: READER.top("c1", "revenue", 3), "unknown measure"),
        (lambda: READER.top("c1", "page_views", 0), "n must be"),
        (lambda: READER.calendar("c1", "p1", limit=5000), "limit must be"),
    ],
)
def test_queries_are_checked_before_redis_is_asked(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(QueryError, match=message):
        call()


def test_times_and_origins() -> None:
    assert parse_time("2024-05-01", "from") == datetime(2024, 5, 1, tzinfo=UTC)
    assert parse_time("2024-05-01T10:00:00+02:00", "from") == datetime(2024, 5, 1, 8, tzinfo=UTC)
    assert parse_time("2024-05-01T10:00:00Z", "from") == datetime(2024, 5, 1, 10, tzinfo=UTC)
    with pytest.raises(QueryError, match="from: 'soon'"):
        parse_time("soon", "from")
    assert describe_origin("live:1714564800") == {"kind": "live", "since": "2024-05-01T12:00:00Z"}
    assert describe_origin(None) is None


def test_openapi_describes_every_route() -> None:
    import pathlib

    import yaml

    spec = yaml.safe_load((pathlib.Path(__file__).parents[3] / "docs" / "openapi.yaml").read_text())
    documented = sorted(re.sub(r"\{[^}]+\}", "x", p) for p in spec["paths"])
    assert all(route(p) is not None for p in documented)
    assert {route(p)[0] for p in documented} == {name for name, _, _ in ROUTES}  # type: ignore[index]
