# -*- test-case-name: tests.test_tap -*-
"""
The C{twistd gridlike} command line: L{Options} reads and checks the
configuration, L{makeService} wires the service tree.  Neither does I/O
beyond reading the configuration file.

This is the edge where adapters meet the core: the HTTP API and the worker
WebSocket resources are built here from the service's
L{gridlike.server.core.Core}, which knows neither.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

from twisted import copyright
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.components import Componentized
from twisted.python.failure import Failure

from gridlike import __version__
from gridlike.server._eager_tcp import eager_tcp
from gridlike.server.api import GridLikeAPI
from gridlike.server.config import Settings, load_settings, state_directory
from gridlike.server.errors import ConfigError
from gridlike.server.logs import ActivityLog, log_summary, twistd_json_observer
from gridlike.server.metrics import Metrics
from gridlike.server.service import GridLikeService
from gridlike.server.upload import UploadSite
from gridlike.server.workers import worker_resources

log = Logger()

TWISTD_PIDFILE = "twistd.pid"
"""twistd's own default for C{--pidfile}, which GridLike drops under C{-n}."""


class Options(usage.Options):
    """
    The options after C{twistd [twistd options] gridlike}.

    twistd parses its own options (C{--nodaemon}, C{--pidfile}) before these
    and hands this instance its own in C{parent}.
    """

    optParameters = [
        ["config", "c", None, "TOML configuration file (default: the built-in defaults)."]
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        """
        Endpoint to serve on instead of the configured ones, e.g.
        tcp:8080:interface=127.0.0.1 (repeatable).
        """
        self["listen"].append(description)

    def opt_version(self) -> None:
        """
        Print GridLike's version (and Twisted's) and exit.
        """
        print(f"gridlike {__version__} (Twisted {copyright.version})")
        sys.exit(0)

    def postOptions(self) -> None:
        """
        Read the configuration (data paths in systemd's state directory
        when there is one), and drop twistd's default pid file under C{-n}.

        A bad configuration is not a usage error: twistd would print its
        whole usage text before the one line that matters, so it ends
        start-up with that line alone.

        @raise SystemExit: the configuration is bad; the message names the
            key.
        """
        try:
            self["settings"] = load_settings(
                self["config"], listen=self["listen"], data_dir=state_directory(os.environ)
            )
        except ConfigError as e:
            raise SystemExit(f"gridlike: {e.problem}") from None
        _no_default_pidfile(getattr(self, "parent", None))


def _no_default_pidfile(twistd: usage.Options | None) -> None:
    """
    Under C{twistd -n}, write no pid file unless C{--pidfile} names one.

    A foreground process has a supervisor (a shell, systemd, a container)
    that knows its pid; twistd's default C{./twistd.pid} only makes a second
    instance in the same directory refuse to start, and is left behind
    after a crash.  twistd parses C{--pidfile} before GridLike sees its own
    options and records no trace of whether it was given, so its default
    value, C{twistd.pid} as it stands, counts as not given: a pid file
    under -n needs another spelling (C{--pidfile=./twistd.pid},
    C{--pidfile=/run/gridlike.pid}).  Daemonized, twistd's default stands.

    @param twistd: twistd's options, or L{None} outside twistd.
    """
    if twistd is None or not twistd.get("nodaemon"):
        return
    if twistd.get("pidfile") == TWISTD_PIDFILE:
        twistd["pidfile"] = ""


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    The service tree: the core's service first (it replays the journal when
    started), then one listener per configured endpoint, serving the API
    and, under it, the worker WebSocket resources.
    """
    if reactor is None:
        from twisted.internet import reactor  # installed by twistd by now
    settings: Settings = options["settings"]
    json_log = settings.server.log_format == "json"
    root = Root(settings, twistd_json_observer(getattr(options, "parent", None)) if json_log else None)
    service = GridLikeService(settings, reactor)
    service.setServiceParent(root)
    core = service.core
    metrics = Metrics.of(core, GridLikeAPI.app.url_map)
    service.retention.expired = metrics.jobs_expired
    service.webhooks.finished = metrics.webhook_finished
    core.add_observer(ActivityLog(settings))
    workers = worker_resources(settings, core.dispatcher, core.storage, reactor)
    api = GridLikeAPI(core, workers)
    api.metrics = metrics
    api.webhooks = service.webhooks
    site = UploadSite(
        api.root(),
        api.upload_policy,
        access_log=settings.server.access_log,
        on_finished=metrics.request_finished,
        body_streams=api.pull.stream_result,
        reactor=reactor,
        timeout=settings.server.idle_timeout,
    )
    site.displayTracebacks = False
    # A shared registry loads asynchronously: listen only once it has.
    ready = service.when_ready if settings.registry.kind == "redis" else None
    listening = eager_tcp(reactor)
    for description in settings.server.listen:
        endpoint = serverFromString(listening, description)
        Listener(description, endpoint, site, ready).setServiceParent(root)
    return root


class Root(MultiService):
    """
    The top of the service tree: it logs the start-up summary before its
    children start, and, for C{log_format = "json"}, gives twistd the log
    observer to use, the way twistd takes one from an application: as the
    application's L{ILogObserver} component, which twistd looks up after
    C{makeService} and before it starts logging.
    """

    def __init__(self, settings: Settings, log_observer: ILogObserver | None = None) -> None:
        """
        @param log_observer: what twistd is to log to instead of its own
            text observer, or L{None}.
        """
        super().__init__()
        self._settings = settings
        self.log_observer = log_observer

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)

    def startService(self) -> None:
        log_summary(self._settings)
        super().startService()


class Listener(StreamServerEndpointService):
    """
    One configured endpoint.  A port that cannot be bound stops start-up
    with one line naming it, rather than a traceback.
    """

    _raiseSynchronously = True

    def __init__(
        self,
        description: str,
        endpoint: Any,
        factory: Any,
        ready: Callable[[], Deferred[None]] | None = None,
    ) -> None:
        """
        @param ready: when given, what fires once the core can serve: the
            listener binds then, not before.
        """
        super().__init__(endpoint, factory)
        self.description = description
        self._ready = ready

    def startService(self) -> None:
        if self._ready is None:
            super().startService()
            return
        Service.startService(self)
        self._waitingForPort = self._ready().addCallback(
            lambda _: self.endpoint.listen(self.factory)
        )
        self._waitingForPort.addErrback(self._not_listening)

    def _not_listening(self, failure: Failure) -> None:
        if not failure.check(CancelledError):
            log.failure("cannot listen on {description}", failure, description=self.description)

    def privilegedStartService(self) -> None:
        if self._ready is not None:
            Service.privilegedStartService(self)
            return
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            reason = getattr(e.socketError, "strerror", None) or str(e.socketError)
            raise SystemExit(f"gridlike: cannot listen on {self.description}: {reason}") from None
