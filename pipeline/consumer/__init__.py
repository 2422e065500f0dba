"""KCL-compatible consumer runtime: leases, checkpoints, shard consumers, KPL de-aggregation."""
