"""Entry point of the ``shardhouse`` console script.

Every command module registers itself on :data:`pipeline.app.cli.app.app` when imported below.
Bad input and errors the product raises on purpose become one clear line on stderr and a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import sys

import psycopg
import redis
import typer
from botocore.exceptions import BotoCoreError, ClientError

from pipeline.app.cli.app import app
from pipeline.core.errors import ShardhouseError
from schemas.errors import SchemaError

# Command modules, imported for their registration side effect; one line each.
# isort: split
from pipeline.app.cli import demo as _demo  # noqa: F401
from pipeline.app.cli import inserter as _inserter  # noqa: F401
from pipeline.app.cli import kcl as _kcl  # noqa: F401
from pipeline.app.cli import produce as _produce  # noqa: F401
from pipeline.app.cli import projector as _projector  # noqa: F401
from pipeline.app.cli import stack as _stack  # noqa: F401
from pipeline.app.cli import status as _status  # noqa: F401
from pipeline.app.cli import worker as _worker  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    try:
        result = app(args=argv, standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("shardhouse: interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as exc:
        sys.exit(_usage_error(exc))
    except (ShardhouseError, SchemaError) as exc:
        print(f"shardhouse: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("shardhouse: interrupted", file=sys.stderr)
        sys.exit(130)
    except (BotoCoreError, ClientError, psycopg.Error, redis.RedisError, OSError) as exc:
        # A server that is down or refuses us: say which, in one line.
        print(f"shardhouse: error: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        sys.exit(1)
    sys.exit(result if isinstance(result, int) else 0)


def _usage_error(exc: typer.TyperException) -> int:
    """One line for a usage error (Typer vendors click; these are its exception objects)."""
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
        print(ctx.get_help(), file=sys.stderr)
        return 2
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    print(f"shardhouse: error: {message}{hint}", file=sys.stderr)
    return int(getattr(exc, "exit_code", 2) or 2)
