"""Putting events on the stream: the client with retries, PutRecords batching, KPL aggregation
and the synthetic event generator."""
