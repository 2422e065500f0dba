"""The inserter: SQS "batch ready" messages → exactly-once loads into per-customer warehouse
tables (PostgreSQL locally, Redshift in production). See docs/inserter.md."""
