"""The application layer: CLI, demo, status, local servers and the KCL daemon wiring. The only
place that names the roles (batcher, projector, inserter) and wires them together."""
