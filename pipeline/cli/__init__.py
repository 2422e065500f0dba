"""Entry point of the ``shardhouse`` console script.

Every command module registers itself on :data:`pipeline.cli.app.app` when imported below.
Errors the product raises on purpose become one clear line on stderr and a non-zero exit.
"""

from __future__ import annotations

import sys

# Command modules (import for their registration side effect), one line each.
from pipeline.cli import stack as _stack  # noqa: F401
from pipeline.cli.app import app
from pipeline.errors import ShardhouseError


def main() -> None:
    try:
        app(standalone_mode=True)
    except ShardhouseError as exc:
        print(f"shardhouse: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("shardhouse: interrupted", file=sys.stderr)
        sys.exit(130)
