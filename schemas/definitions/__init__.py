"""Built-in event definitions, one JSON file per type+version (``<type>.v<n>.json``)."""
