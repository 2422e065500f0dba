"""Shared layers of shardhouse: ``core`` (bottom), ``consumer`` and ``producer`` (runtimes), and
``app`` (top). The layer contract is in pyproject.toml and docs/architecture.md."""
