"""Warehouse connections are bounded against a server that vanishes without a reset."""

from __future__ import annotations

import psycopg

from pipeline.core.clients import WAREHOUSE_KEEPALIVES, warehouse_conninfo


def test_keepalives_and_a_tcp_timeout_are_added_to_a_plain_url() -> None:
    info = psycopg.conninfo.conninfo_to_dict(warehouse_conninfo("postgresql://u:pw@db.example:5439/dev"))
    assert info == {
        "user": "u",
        "password": "pw",
        "host": "db.example",
        "port": "5439",
        "dbname": "dev",
        **{k: str(v) for k, v in WAREHOUSE_KEEPALIVES.items()},
    }
    assert info["keepalives"] == "1" and int(info["tcp_user_timeout"]) > 0


def test_what_the_url_sets_itself_wins() -> None:
    url = "postgresql://u@h/d?keepalives_idle=5&tcp_user_timeout=0&sslmode=require"
    info = psycopg.conninfo.conninfo_to_dict(warehouse_conninfo(url))
    assert (info["keepalives_idle"], info["tcp_user_timeout"], info["sslmode"]) == ("5", "0", "require")
    assert info["keepalives_count"] == str(WAREHOUSE_KEEPALIVES["keepalives_count"])
