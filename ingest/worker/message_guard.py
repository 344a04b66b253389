"""The worker's consumer, guarded against messages no task can run ("poison messages").

Celery hands a protocol-2 message to the task's strategy without looking at the body; a body of the
wrong shape (a JSON object instead of ``[args, kwargs, embed]``) raises inside the consumer, which
stops the worker and requeues the message, so every worker dies on it in turn. Celery's own answers to
unknown tasks, refused content types and undecodable bodies are a log line and a reject: the message is
gone. Here every message is checked before the strategy runs; one that cannot run is recorded in the
``rejected_messages`` table (``ingest.store.rejected_messages``), shown by ``acr-ingest status``, and
acknowledged. The worker keeps going. So is a message to a task of fixed arguments (``poll_states``,
``deliver_webhook``) that the task cannot take. A message that runs has its ``argsrepr``/``kwargsrepr``
(what Celery logs and sends in the task-received event Flower shows) masked of URL passwords first.

Set as the app's ``worker_consumer`` (``ingest.worker.app``).
"""

from __future__ import annotations

import functools
import logging
import re
import typing
from collections.abc import Callable
from typing import Any

from celery.worker.consumer import Consumer

from ingest.redact import mask_url_credentials
from ingest.store import rejected_messages

log = logging.getLogger("ingest.worker.guard")

JSON = "application/json"
# Our operations keep the task id in a 64-character column; Celery needs one to track the task.
_TASK_ID_RE = re.compile(r"^[\x21-\x7e]{1,64}$")
OUR_PREFIX = "ingest."


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def why_unrunnable(message: Any, our_tasks: set[str]) -> str | None:
    """Why this message cannot be run by one of our tasks, or None when it can.

    Decodes only JSON (never a pickle); a decoded body is cached on the message for Celery's use.
    """
    headers = message.headers
    if not isinstance(headers, dict) or "task" not in headers:
        return "no task header: send a Celery protocol 2 message whose headers name the task (headers.task)"
    name = headers["task"]
    if not isinstance(name, str) or name not in our_tasks:
        return f"unknown task {_short(name)}: send one of {', '.join(sorted(our_tasks))}"
    task_id = headers.get("id")
    if not isinstance(task_id, str) or not _TASK_ID_RE.match(task_id):
        return f"headers.id must be a task id of 1 to 64 printable characters, got {_short(task_id)}"
    if message.content_type != JSON:
        return f"content type {_short(message.content_type)} is not accepted: send the body as {JSON}"
    try:
        body = message.decode()
    except Exception as exc:  # DecodeError, ContentDisallowed, RecursionError (deep nesting)...
        return f"the body is not readable JSON ({type(exc).__name__}: {str(exc)[:200]})"
    if not isinstance(body, list) or len(body) != 3:
        return (
            "the body must be the JSON array [args, kwargs, embed] of Celery protocol 2, "
            f"got {type(body).__name__} {_short(body)}"
        )
    args, kwargs, embed = body
    if args != []:
        return f"positional arguments are not accepted ({_short(args)}): send every argument by name in kwargs"
    if not isinstance(kwargs, dict):
        return f"kwargs (the body's second item) must be a JSON object, got {type(kwargs).__name__}"
    if embed is not None and not isinstance(embed, dict):
        return f"embed (the body's third item) must be a JSON object or null, got {type(embed).__name__}"
    return None


@functools.cache
def _argument_types(task: Any) -> dict[str, type]:
    """The plain classes a task's own parameters are annotated with (``event: dict[...]`` -> dict)."""
    try:
        hints = typing.get_type_hints(task.__wrapped__)
    except Exception:  # an annotation that does not resolve: no type check, the arity check stays
        return {}
    out: dict[str, type] = {}
    for name, hint in hints.items():
        plain = typing.get_origin(hint) or hint
        if name not in ("self", "return") and isinstance(plain, type):
            out[name] = plain
    return out


def argument_fault(task: Any, kwargs: dict[str, Any]) -> str | None:
    """Why ``kwargs`` cannot be passed to ``task`` (an unknown or missing argument, one of the wrong JSON type),
    or None. Celery would call the task anyway and log its TypeError as a failure: the message would be gone.
    Job tasks take ``**kwargs`` and check them in their validators (the operation records the refusal)."""
    try:
        task.__header__(**kwargs)  # Celery's own signature check, as apply_async runs it on the sending side
    except TypeError as exc:
        return f"the arguments do not fit {task.name}: {exc}; see docs/MESSAGES.md"
    for name, expected in _argument_types(task).items():
        if name in kwargs and not isinstance(kwargs[name], expected):
            return (
                f"argument {name!r} of {task.name} must be a JSON {'object' if expected is dict else expected.__name__}"
                f", got {type(kwargs[name]).__name__}"
            )
    return None


def mask_reprs(headers: dict[str, Any], args: Any, kwargs: Any) -> None:
    """The message's ``argsrepr``/``kwargsrepr`` with URL passwords masked, in place, before Celery reads them:
    its ``received`` and result log lines and the task-received event (Flower) show them. The sender's text is
    kept (masked) when it sent one; else the arguments' repr (bounded as Celery bounds its own), masked."""
    for key, value in (("argsrepr", args), ("kwargsrepr", kwargs)):
        given = headers.get(key)
        headers[key] = mask_url_credentials(given if isinstance(given, str) else _bounded_repr(value))


def _bounded_repr(value: Any, limit: int = 1024) -> str:
    # repr, not Celery's saferepr: that costs ~0.2 ms a message; the body is JSON, so repr cannot fail but by depth.
    try:
        text = repr(value)
    except RecursionError:
        return f"<a {type(value).__name__} nested too deeply to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class GuardedConsumer(Consumer):
    """Celery's consumer with every task message checked first; what cannot run is recorded and acked."""

    def our_tasks(self) -> set[str]:
        return {name for name in self.app.tasks if name.startswith(OUR_PREFIX)}

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        celery_handler = super().create_task_handler(*args, **kwargs)
        our_tasks = self.our_tasks()

        def on_task_received(message: Any) -> Any:
            reason = why_unrunnable(message, our_tasks)
            if reason is None:  # the body is decoded and cached by now
                args, kwargs, _ = message.decode()
                reason = argument_fault(self.app.tasks[message.headers["task"]], kwargs)
                mask_reprs(message.headers, args, kwargs)
            if reason is not None:
                return self.set_aside(message, reason)
            try:
                return celery_handler(message)
            except Exception as exc:  # whatever slipped past the check must not stop the worker
                log.exception("a message passed the checks but Celery could not take it")
                return self.set_aside(message, f"Celery could not take it: {type(exc).__name__}: {exc}")

        return on_task_received

    def set_aside(self, message: Any, reason: str) -> None:
        """Record the message with its reason, then take it off the queue.

        If the database cannot take it, the message is left unacknowledged: the broker gives it back
        when this worker's connection closes (or after the visibility timeout on Redis), so it is
        never lost, and this worker does not spin on it.
        """
        headers = message.headers if isinstance(message.headers, dict) else {}
        try:
            rejected_messages.record(
                reason=reason,
                body=message.body,
                headers=message.headers,
                content_type=message.content_type,
                queue=(message.delivery_info or {}).get("routing_key"),
                task=headers.get("task") if isinstance(headers.get("task"), str) else None,
            )
        except Exception:
            log.exception("could not record a rejected message (%s); leaving it unacknowledged", reason)
            return
        message.ack_log_error(log, self.connection_errors)

    # Celery's own answers (an ETA it cannot read, a body it cannot decode...): recorded, not just logged.
    def on_unknown_message(self, body: Any, message: Any) -> None:
        self.set_aside(message, "not a task message Celery can read")

    def on_unknown_task(self, body: Any, message: Any, exc: BaseException) -> None:
        self.set_aside(message, f"unknown task: {exc}")

    def on_invalid_task(self, body: Any, message: Any, exc: BaseException) -> None:
        self.set_aside(message, f"invalid task message: {exc}")

    def on_decode_error(self, message: Any, exc: BaseException) -> None:
        self.set_aside(message, f"the body cannot be decoded: {type(exc).__name__}: {exc}")
