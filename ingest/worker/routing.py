"""Which queue a task message goes to: one rule, used by Celery's router (``send_task``, retries) and by the bulk
publisher alike.

Uploads sent as fingerprints have a queue of their own. Extracting costs ~0.2 s of CPU per minute of audio
where a job's bookkeeping costs milliseconds; in the shared queue a catalog of them put every update, delete
and URL upload sent meanwhile behind the whole catalog (benchmarks/fingerprint_upload.py). Redis serves a
worker's queues in turn (so does a RabbitMQ consumer of several), so with a queue of their own those jobs
wait for one slot to free, not for the catalog; operators may also run workers for that queue alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

QUEUE = "ingest"
# The state poll has a queue of its own: Redis serves queues in turn, so a long backlog of jobs
# (or of retries) does not delay the poll until its message expires.
POLL_QUEUE = "ingest.poll"
# Uploads whose worker makes the fingerprint first (CPU-heavy): see above.
FINGERPRINT_QUEUE = "ingest.fingerprint"
# Every queue the app declares (worker/app.py), in that order.
QUEUES = (QUEUE, POLL_QUEUE, FINGERPRINT_QUEUE)


def queue_of(name: str, kwargs: Mapping[str, Any] | None) -> str | None:
    """The queue of a task message, None for the default one. A fingerprint upload is known by its own
    arguments (the producer always writes send_as); a message without it goes to the default queue."""
    if name == "ingest.poll_states":
        return POLL_QUEUE
    given = kwargs or {}
    made_here = given.get("send_as") == "fingerprint" and given.get("data_type") in (None, "audio")
    if name == "ingest.upload_file" and made_here:
        return FINGERPRINT_QUEUE
    return None


def route_task(name: str, args: Any, kwargs: Mapping[str, Any] | None, options: Any, task: Any = None, **_: Any) -> Any:
    """Celery's router function (``task_routes``)."""
    queue = queue_of(name, kwargs)
    return {"queue": queue} if queue else None
