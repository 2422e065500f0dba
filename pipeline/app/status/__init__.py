"""``shardhouse status``: collect (I/O), model (pure decisions), render (pure text)."""
