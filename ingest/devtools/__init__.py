"""Development tools: the ACRCloud API emulator and the helper that runs Celery processes for the demo,
the tests and the benchmarks. Not used by a production worker."""
