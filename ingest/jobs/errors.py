"""The errors that steer a job, apart from the API's own (``ingest.api.errors``).

JobControl
├── InputError      bad job input: fail at once, naming each field and its fix (never retried)
├── RetryLater      the job cannot go on now (an upload in flight, a lease, a held token): run it later
└── EnqueueError    the job was recorded but the broker did not take it (its outbox entry is sent later)

The retry decision for every error, these and the API's, is made in one place:
``ingest.jobs.retry_policy.decide``.
"""

from __future__ import annotations

__all__ = ["EnqueueError", "InputError", "JobControl", "RetryLater"]


class JobControl(Exception):
    """Base of the errors that decide what happens to a job next."""


class InputError(JobControl, ValueError):
    """Bad job input. ``errors`` maps each field to what is wrong and how to fix it."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


class RetryLater(JobControl):
    """The job cannot go on now (waiting for an upload, a lease, or a token); try again later.

    ``counts`` says whether this uses up one of the job's attempts; ``held`` that the API rejects
    the token (the job waits without calling it).
    """

    def __init__(self, countdown: float, reason: str, *, counts: bool = False, held: bool = False) -> None:
        self.countdown = countdown
        self.reason = reason
        self.counts = counts
        self.held = held
        super().__init__(reason)


class EnqueueError(JobControl, RuntimeError):
    """The job was recorded but could not be handed to the broker; it stays in the outbox and is sent
    when the broker is back."""
