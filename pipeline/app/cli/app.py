"""The ``shardhouse`` command: one Typer app; each command group lives in its own module."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="shardhouse",
    help="Kinesis → S3 Parquet → warehouse pipeline with KCL-compatible workers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
