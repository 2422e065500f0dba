from consumer_fleet import fleet  # noqa: F401 - the fixture
