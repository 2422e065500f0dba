"""What tests share: a recording checkpointer, record builders and delivery, the synthetic-event
clock, and the in-memory fakes of the processors' ports (unit tests and the contract tests that
hold the fakes to the real adapters both use them)."""
