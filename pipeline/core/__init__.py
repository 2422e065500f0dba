"""The bottom layer: errors, retry, settings, AWS clients, the manifest and S3 layout contracts,
observability. It imports nothing else of ours, so every other package may lean on it."""
