"""``shardhouse demo``: the whole pipeline end to end on local servers."""
