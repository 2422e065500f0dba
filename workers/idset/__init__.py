"""Remembered-id sets in Redis shared by the batcher (dedupe) and the projector (gate)."""
