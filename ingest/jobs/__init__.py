"""The jobs: their inputs and validation, the runner and retry policy, and one handler per kind of work.

No Celery here: a handler is called with a job and a ``JobContext``, so it runs the same in a worker and
in a test.
"""
