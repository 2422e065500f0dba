"""Real local servers for development, tests and the demo: AWS emulators, Redis, PostgreSQL."""
