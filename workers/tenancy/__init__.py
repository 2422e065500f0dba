"""Which customers the roles admit (docs/batcher.md, "New customers"); shared by the batcher and
the projector so the warehouse and the read models refuse the same events."""
