# -*- test-case-name: tests.test_config -*-
"""
The C{[auth]} table: read into L{AuthSettings} by L{_auth}, and the check
that webhooks have a secret to be signed with, for
L{gridlike.server.config}.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from attrs import frozen

from gridlike.server._config_table import _Table
from gridlike.server.errors import ConfigError

__all__ = ["AuthSettings"]

# An API key travels in the X-API-KEY header: visible ASCII, with spaces only
# inside (a header value loses its surrounding whitespace).
_API_KEY = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")


@frozen
class AuthSettings:
    """
    The C{[auth]} table: who may use the job API and who may work.

    @ivar api_keys: keys accepted in C{X-API-KEY}; empty means the job API is
        open.
    @ivar worker_token: the token a worker must register with; empty means any
        token is accepted.
    @ivar kick_after_ms: milliseconds a new worker connection has to register.
    @ivar dashboard_user: the dashboard's user name, or C{None}.
    @ivar dashboard_password: the dashboard's password, or C{None}.
    @ivar allow_anonymous: serve beyond loopback with neither API keys nor a
        worker token.
    @ivar session_idle: seconds a dashboard session may go unused before it
        ends (a GridLike extension).
    @ivar session_lifetime: seconds a dashboard session lasts at most (a
        GridLike extension).
    @ivar webhook_secret: the key webhook bodies are signed with
        (L{gridlike.server.webhooks}), if given in the file.
    @ivar webhook_secret_file: a file holding it, read at start-up.
    """

    api_keys: tuple[str, ...] = ()
    worker_token: str = ""
    kick_after_ms: int = 2000
    dashboard_user: str | None = None
    dashboard_password: str | None = None
    allow_anonymous: bool = False
    session_idle: float = 3600.0
    session_lifetime: float = 43200.0
    webhook_secret: str | None = None
    webhook_secret_file: Path | None = None


def _auth(table: _Table, base: Path) -> AuthSettings:
    """
    @param table: the C{[auth]} table.
    @param base: the directory relative paths resolve against.
    @return: its settings.
    @raise ConfigError: a key is unknown or bad, only one of the dashboard
        user and password is set, or both the webhook secret and its file.
    """
    defaults = AuthSettings()
    api_keys = table.get("api_keys")
    if api_keys is _Table._missing:
        api_keys = defaults.api_keys
    elif not isinstance(api_keys, list) or not all(
        isinstance(key, str) and _API_KEY.fullmatch(key) for key in api_keys
    ):
        raise ConfigError(
            f"{table.where('api_keys')}: must be a list of non-empty strings of"
            " printable ASCII without surrounding spaces"
        )
    secret_file = table.string("webhook_secret_file", None)
    settings = AuthSettings(
        api_keys=tuple(api_keys),
        worker_token=table.string("worker_token", defaults.worker_token, empty=True),
        kick_after_ms=table.integer("kick_after_ms", defaults.kick_after_ms, above=0),
        dashboard_user=table.string("dashboard_user", defaults.dashboard_user),
        dashboard_password=table.string(
            "dashboard_password", defaults.dashboard_password
        ),
        allow_anonymous=table.boolean("allow_anonymous", defaults.allow_anonymous),
        session_idle=table.number("session_idle", defaults.session_idle, above=0),
        session_lifetime=table.number(
            "session_lifetime", defaults.session_lifetime, above=0
        ),
        webhook_secret=table.string("webhook_secret", defaults.webhook_secret),
        webhook_secret_file=None if secret_file is None else base / Path(secret_file).expanduser(),
    )
    table.finish()
    if settings.webhook_secret is not None and settings.webhook_secret_file is not None:
        raise ConfigError(
            f"{table.where('webhook_secret_file')}: set either webhook_secret or"
            " webhook_secret_file, not both"
        )
    user, password = settings.dashboard_user, settings.dashboard_password
    if user is not None and password is None:
        raise ConfigError(
            f"{table.where('dashboard_password')}: must be set when dashboard_user is"
        )
    if password is not None and user is None:
        raise ConfigError(
            f"{table.where('dashboard_user')}: must be set when dashboard_password is"
        )
    return settings


def _refuse_unsigned_webhooks(hooks: Sequence[str], auth: AuthSettings) -> None:
    """
    Webhooks are signed.

    @param hooks: how errors name each C{on_done} and C{on_failed} set,
        such as C{"[types.render] on_done"}.
    @raise ConfigError: a webhook is set while C{[auth]} has no
        C{webhook_secret} (nor its file).
    """
    if not hooks:
        return
    if auth.webhook_secret is None and auth.webhook_secret_file is None:
        raise ConfigError(
            "[auth] webhook_secret: must be set (or webhook_secret_file)"
            f" to sign the webhooks of {hooks[0]}"
        )
