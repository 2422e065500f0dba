"""Which DDL a load's tables need, from the catalog's rows (pure)."""

from __future__ import annotations

from inserter.naming import TableRef
from inserter.tables import PartAction, Relation, catalog, missing_columns, part_action

WANTED = ["event_id", "customer_id", "url", "referrer"]


def test_catalog_groups_rows_per_relation() -> None:
    rows = [
        ("c_a", "page_view", "url", True),
        ("c_b", "page_view", "event_id", False),
        ("c_a", "page_view", "event_id", True),
    ]
    assert catalog(rows) == {  # each relation's columns in the order the catalog gave them
        TableRef("c_a", "page_view"): Relation(("url", "event_id"), True),
        TableRef("c_b", "page_view"): Relation(("event_id",), False),
    }
    assert catalog([]) == {}


def test_a_missing_relation_is_created_and_lacks_every_column() -> None:
    assert part_action(None, WANTED) is PartAction.CREATE
    assert missing_columns(None, WANTED) == WANTED


def test_a_table_that_is_not_a_part_is_adopted_whatever_its_columns() -> None:
    legacy = Relation(tuple(WANTED[:2]), part=False)
    assert part_action(legacy, WANTED) is PartAction.ADOPT
    assert missing_columns(legacy, WANTED) == ["url", "referrer"]  # in the wanted order
    assert part_action(Relation(tuple(WANTED), part=False), WANTED) is PartAction.ADOPT


def test_a_part_is_ready_with_every_column_and_refreshed_without() -> None:
    assert part_action(Relation(tuple(WANTED), part=True), WANTED) is PartAction.READY
    assert part_action(Relation(tuple([*WANTED, "extra"]), part=True), WANTED) is PartAction.READY
    assert part_action(Relation(tuple(WANTED[:3]), part=True), WANTED) is PartAction.REFRESH
