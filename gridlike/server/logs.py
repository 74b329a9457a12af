# -*- test-case-name: tests.test_metrics -*-
"""
What the server logs of its own accord, besides errors where they happen:

  - L{log_summary}: one start-up summary of the configuration (listeners,
    registry, storage, types, whether auth is on), never a secret;
  - L{ActivityLog}: one line per worker that joins or leaves, and per failed
    attempt and job failed for good, with its key, type, worker and reason;
  - L{json_log_observer}: the C{[server] log_format = "json"} observer, one
    JSON object per line, which L{gridlike.server.tap} installs for twistd.

Every line is a L{twisted.logger} event with its fields, so the JSON format
carries them as they are (C{key}, C{type}, C{worker_uid}, ...).
"""

from __future__ import annotations

import sys
from typing import IO, TYPE_CHECKING, Any, Mapping
from urllib.parse import urlsplit

from twisted.logger import FileLogObserver, ILogObserver, Logger, eventAsJSON, formatEvent
from twisted.python.logfile import LogFile
from zope.interface import implementer

from gridlike import __version__
from gridlike.server.listeners import IJobListener, IWorkerListener, JobChange, WorkerChange
from gridlike.server.model import Job

if TYPE_CHECKING:
    from gridlike.server.config import Settings
    from gridlike.server.dispatch import WorkerRecord

__all__ = ["ActivityLog", "json_log_observer", "log_summary", "twistd_json_observer"]

log = Logger()

MAX_REASON = 200
"""The most characters of a failure's reason (a worker's own info) logged."""


def _on_off(on: bool) -> str:
    return "on" if on else "off"


def _without_credentials(url: str) -> str:
    """A URL without its user and password."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return parts._replace(netloc=host).geturl()


def log_summary(settings: Settings) -> None:
    """
    Log what this instance is about to serve, one line per part of the
    configuration.  Secrets are never logged: only whether each is set.
    """
    server, registry, storage, auth = settings.server, settings.registry, settings.storage, settings.auth
    log.info(
        "GridLike {version} starting: configuration {source}, listening on {listen},"
        " path prefix {path_prefix!r}, log format {output}",
        version=__version__,
        source=settings.source or "(built-in defaults)",
        listen=", ".join(server.listen),
        path_prefix=server.path_prefix,
        output=server.log_format,  # not log_format: twisted.logger's own key
    )
    where = (
        str(registry.path)
        if registry.kind == "journal" or registry.url is None
        else _without_credentials(registry.url)
    )
    log.info(
        "registry: {registry_kind} at {registry_path}, fsync {fsync}",
        registry_kind=registry.kind,
        registry_path=where,
        fsync=registry.fsync,
    )
    log.info(
        "storage: {storage_kind} at {storage_path}, payloads up to {inline_max} bytes"
        " carried in the journal",
        storage_kind=storage.kind,
        storage_path=(
            str(storage.path)
            if storage.s3 is None
            else f"s3://{storage.s3.bucket}/{storage.s3.prefix} on {storage.s3.endpoint}"
        ),
        inline_max=storage.inline_max,
    )
    types = [
        name
        + (f" (timeout {t.timeout:g} s)" if t.timeout else "")
        + (f" -> {t.result_becomes}" if t.result_becomes else "")
        for name, t in settings.types.items()
    ]
    log.info(
        "types: {types}",
        types=", ".join(types) if types else "none (jobs are untyped)",
        type_names=list(settings.types),
    )
    log.info(
        "auth: API keys {api_keys} ({key_count}), worker token {worker_token},"
        " dashboard sign-in {dashboard}, anonymous beyond loopback {anonymous}",
        api_keys=_on_off(bool(auth.api_keys)),
        key_count=len(auth.api_keys),
        worker_token=_on_off(bool(auth.worker_token)),
        dashboard=_on_off(bool(auth.dashboard_user and auth.dashboard_password)),
        anonymous="allowed" if auth.allow_anonymous else "refused",
    )


def _reason(job: Job) -> str:
    info = job.error.info if job.error is not None else None
    if not info:
        return "no reason given"
    return info if len(info) <= MAX_REASON else info[: MAX_REASON - 1] + "…"


@implementer(IJobListener, IWorkerListener)
class ActivityLog:
    """
    Logs workers joining and leaving and jobs failing, as a listener of the
    registry and the dispatcher (an observer: add it before the dispatcher).
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def worker_changed(self, change: WorkerChange, worker: WorkerRecord) -> None:
        if change is WorkerChange.JOINED:
            log.info(
                "worker {worker_uid} ({worker_name}) joined from {address}, type {type}",
                worker_uid=worker.uid,
                worker_name=worker.name,
                address=worker.address,
                type=worker.type,
            )
        elif change is WorkerChange.LEFT:
            left = worker.disconnected_at
            log.info(
                "worker {worker_uid} ({worker_name}) left from {address} after {seconds:.0f} s",
                worker_uid=worker.uid,
                worker_name=worker.name,
                address=worker.address,
                type=worker.type,
                seconds=(left - worker.connected_at) if left is not None else 0.0,
            )

    def job_changed(self, change: JobChange, job: Job) -> None:
        if change is JobChange.ATTEMPT_FAILED:
            log.warn(
                "job {key} ({type}): attempt {attempt} of {attempts} failed on worker"
                " {worker_uid} ({worker_name}): {reason}",
                key=job.key,
                type=job.type,
                attempt=job.failure_count,
                attempts=self._settings.attempts_for(job.type),
                worker_uid=job.worker_id,
                worker_name=job.worker_name,
                reason=_reason(job),
            )
        elif change is JobChange.FAILED:
            log.error(
                "job {key} ({type}) failed for good after {attempt} failed attempts,"
                " last on worker {worker_uid} ({worker_name}): {reason}",
                key=job.key,
                type=job.type,
                attempt=job.failure_count,
                worker_uid=job.worker_id,
                worker_name=job.worker_name,
                reason=_reason(job),
            )


def _json_line(event: dict[str, Any]) -> str:
    """
    One event as one line of JSON: L{eventAsJSON}'s fields (readable back
    with L{twisted.logger.eventFromJSON}), plus C{text}, the formatted
    message, and C{level}, the level's name, for log shippers.
    """
    level = event.get("log_level")
    flat = dict(event, text=formatEvent(event), level=getattr(level, "name", None))
    return eventAsJSON(flat) + "\n"


def json_log_observer(out: IO[Any]) -> ILogObserver:
    """
    @param out: where the lines go (a text file).
    @return: an observer writing each event to C{out} as one line of JSON.
    """
    return FileLogObserver(out, _json_line)


@implementer(ILogObserver)
class _JsonToLogFile:
    """
    A JSON observer on a twistd log file, opened at the first event rather
    than when the service tree is made (which does no I/O).
    """

    def __init__(self, path: str) -> None:
        self._path = path
        self._observer: ILogObserver | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        if self._observer is None:
            self._observer = json_log_observer(LogFile.fromFullPath(self._path))
        self._observer(event)


def twistd_json_observer(twistd: Mapping[str, Any] | None) -> ILogObserver | None:
    """
    The observer for C{log_format = "json"} under twistd: on what twistd
    would log to itself (standard output under C{-n} without C{--logfile},
    else C{--logfile}, by default C{twistd.log}).

    @param twistd: twistd's own options, or L{None} outside twistd.
    @return: the observer, or L{None} when twistd logs elsewhere by the
        user's choice (C{--syslog}, or C{--logger}, which twistd prefers to
        any observer of the application anyway).
    """
    if twistd is None or twistd.get("syslog") or twistd.get("logger"):
        return None
    logfile = twistd.get("logfile") or ""
    if logfile == "-" or (twistd.get("nodaemon") and not logfile):
        return json_log_observer(sys.stdout)
    return _JsonToLogFile(logfile or "twistd.log")
