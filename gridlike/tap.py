# -*- test-case-name: tests.test_tap -*-
"""
The C{twistd gridlike} command line: L{Options} reads and checks the
configuration, L{makeService} wires the service tree.  Neither does I/O
beyond reading the configuration file.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.python import usage

from gridlike.api import GridLikeAPI
from gridlike.config import Settings, load_settings
from gridlike.errors import ConfigError
from gridlike.service import GridLikeService
from gridlike.upload import UploadSite


class Options(usage.Options):
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

    def postOptions(self) -> None:
        try:
            self["settings"] = load_settings(self["config"], listen=self["listen"])
        except ConfigError as e:
            raise usage.UsageError(e.problem) from None


def makeService(options: Options, reactor: Any = None) -> IService:
    """
    The service tree: the core first (it replays the journal when started),
    then one listener per configured endpoint.
    """
    if reactor is None:
        from twisted.internet import reactor  # installed by twistd by now
    settings: Settings = options["settings"]
    root = MultiService()
    core = GridLikeService(settings, reactor)
    core.setServiceParent(root)
    api = GridLikeAPI(core)
    site = UploadSite(
        api.root(),
        api.upload_policy,
        access_log=settings.server.access_log,
        reactor=reactor,
        timeout=settings.server.idle_timeout,
    )
    site.displayTracebacks = False
    for description in settings.server.listen:
        Listener(description, serverFromString(reactor, description), site).setServiceParent(root)
    return root


class Listener(StreamServerEndpointService):
    """
    One configured endpoint.  A port that cannot be bound stops start-up
    with one line naming it, rather than a traceback.
    """

    _raiseSynchronously = True

    def __init__(self, description: str, endpoint: Any, factory: Any) -> None:
        super().__init__(endpoint, factory)
        self.description = description

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            reason = getattr(e.socketError, "strerror", None) or str(e.socketError)
            raise SystemExit(f"gridlike: cannot listen on {self.description}: {reason}") from None
