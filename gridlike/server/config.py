# -*- test-case-name: tests.test_config -*-
"""
GridLike's static configuration: one TOML file read with L{tomllib} into a
frozen, validated L{Settings}.

Every key has a default, so an empty file (or no file at all) is a working
configuration: L{load_settings} with C{None} gives the embedded defaults.
Unknown tables and keys, and values of the wrong kind or out of range, are
start-up errors: L{ConfigError} with a message that names the table and key,
such as C{"[scheduling] max_attemps: unknown key"}.

Relative paths resolve against the directory of the configuration file (or
the current directory when there is none), except under a systemd unit with
a C{StateDirectory=}: there the data paths resolve against it (see
L{state_directory}), as C{/etc} is read-only to the service. Listen addresses are Twisted
server endpoint strings, checked here by parsing them against a
L{MemoryReactor}, so that a typo stops start-up rather than the first
request.

L{parse_settings} is the from-string twin of L{load_settings}, for tests.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

from attrs import field, frozen

from gridlike.server._config_auth import AuthSettings, _auth, _refuse_unsigned_webhooks
from gridlike.server._config_quorum import quorum_keys, refuse_bad_quorums
from gridlike.server._config_redis import RedisSettings, _redis
from gridlike.server._config_s3 import S3Settings, _s3
from gridlike.server._config_server import ServerSettings, _server
from gridlike.server._config_stragglers import refuse_bad_stragglers, straggler_factor
from gridlike.server._config_workers import WorkerSettings, _workers
from gridlike.server._config_table import (
    KiB,
    MiB,
    _refuse_anonymous_exposure,
    _Table,
    parse_size,
)
from gridlike.server.errors import ConfigError
from gridlike.server.model import Status

__all__ = [
    "AuthSettings",
    "EventSettings",
    "RedisSettings",
    "RegistrySettings",
    "SchedulingSettings",
    "ServerSettings",
    "Settings",
    "S3Settings",
    "StorageSettings",
    "TYPE_NAME_PATTERN",
    "TypeSettings",
    "WorkerSettings",
    "load_settings",
    "parse_settings",
    "parse_size",
    "state_directory",
]


TYPE_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
"""
What a job type's name must fully match: it appears in URL paths, so no dots
and no slashes.
"""


_REGISTRY_KINDS = ("journal", "redis")
_STORAGE_KINDS = ("filesystem", "s3")
_STORAGE_KINDS_LATER: tuple[str, ...] = ()
_FSYNC_MODES = ("always", "interval", "never")

_TABLES = ("server", "registry", "storage", "auth", "workers", "scheduling", "events", "types")


@frozen
class RegistrySettings:
    """
    The C{[registry]} table: where job metadata is kept.

    @ivar kind: the registry provider: C{"journal"} or C{"redis"}.
    @ivar path: the journal file. L{parse_settings} makes it absolute; the
        class default is relative.
    @ivar fsync: C{"always"} (group commit before acknowledging),
        C{"interval"} (every C{fsync_interval} seconds) or C{"never"}.
    @ivar fsync_interval: seconds between flushes when C{fsync} is
        C{"interval"} (a GridLike extension).
    @ivar compact_ratio: compact the journal when it is this many times the
        size of the live state (a GridLike extension).
    @ivar compact_min: never compact a journal smaller than this many bytes
        (a GridLike extension).
    @ivar url: the Redis URL as given; C{None} when unset.
    @ivar redis: the Redis keys, for C{kind = "redis"}; else C{None}.
    """

    kind: str = "journal"
    path: Path = Path("gridlike-data/journal")
    fsync: str = "always"
    fsync_interval: float = 1.0
    compact_ratio: float = 4.0
    compact_min: int = 64 * MiB
    url: str | None = None
    redis: RedisSettings | None = None


MAX_INLINE = 1 * MiB
"""The largest C{[storage] inline_max}: a bulk of 1,000 such payloads is one
journal record."""


@frozen
class StorageSettings:
    """
    The C{[storage]} table: where payloads and results are kept.

    @ivar kind: the storage provider: C{"filesystem"} (under C{path}) or
        C{"s3"} (as C{s3} says).
    @ivar path: the payload directory. L{parse_settings} makes it absolute;
        the class default is relative.
    @ivar inline_max: payloads and results up to this many bytes travel
        inside their journal record (one durable write per change) and are
        filed in storage afterwards; C{0} turns that off.
    @ivar inline_memory: the bytes of such objects held in memory before
        the oldest are filed; C{0} files each at once.
    """

    kind: str = "filesystem"
    path: Path = Path("gridlike-data/payloads")
    inline_max: int = 64 * KiB
    inline_memory: int = 64 * MiB
    s3: S3Settings | None = None
    """The S3 keys, when C{kind} is C{"s3"}."""


@frozen
class EventSettings:
    """
    The C{[events]} table: the event stream of C{GET /api/events}.

    @ivar keep: how many of the latest events are retained for clients that
        resume with C{Last-Event-ID}.
    @ivar keep_bytes: the most bytes those events may take (a GridLike
        extension).
    @ivar heartbeat: seconds between the comment lines that keep idle
        streams open (a GridLike extension).
    """

    keep: int = 10_000
    keep_bytes: int = 64 * MiB
    heartbeat: float = 15.0


@frozen
class SchedulingSettings:
    """
    The C{[scheduling]} table.

    @ivar batch_size: the most jobs in one numbered batch.
    @ivar max_attempts: how many failed attempts make a job C{failed} for
        good, unless its type says otherwise.
    @ivar keep_done: seconds an untyped job is kept once done, then removed
        (L{gridlike.server.retention}); C{None}: for ever.
    @ivar keep_failed: the same for an untyped job failed for good.
    @ivar on_done: the http(s) URL an untyped job's view is posted to
        once it is done (L{gridlike.server.webhooks}); C{None}: none.
    @ivar on_failed: the same once it has failed for good.
    @ivar straggler_factor: an untyped job running longer than this many
        times their median run time is also given to an idle worker
        (L{gridlike.server._stragglers}); C{None}: never.
    @ivar quorum: how many workers of distinct ids must return equal
        results for an untyped job to be done (docs/quorum.md); C{None}:
        the first result is the job's.
    @ivar quarantine_after: disagreements after which a worker gets no
        more quorum jobs of its type; C{None}: never.
    @ivar cache: whether the result cache answers untyped submits (docs/cache.md).
    """

    batch_size: int = 100
    max_attempts: int = 3
    keep_done: float | None = None
    keep_failed: float | None = None
    on_done: str | None = None
    on_failed: str | None = None
    straggler_factor: float | None = None
    quorum: int | None = None
    quarantine_after: int | None = None
    cache: bool = False


@frozen
class TypeSettings:
    """
    One C{[types.NAME]} table: a configured job type.

    @ivar name: the type's name, matching L{TYPE_NAME_PATTERN}.
    @ivar description: text for people, or C{None}.
    @ivar result_becomes: the name of the type that a done job's result is
        submitted as, or C{None}.
    @ivar timeout: seconds an attempt may run; C{0} means no limit.
    @ivar max_attempts: this type's attempt limit, or C{None} for
        C{[scheduling] max_attempts}.
    @ivar keep_done: seconds a job of this type is kept once done, then
        removed (L{gridlike.server.retention}); C{None}: for ever.
    @ivar keep_failed: the same for a job failed for good.
    @ivar on_done: the http(s) URL a job's view is posted to once it is
        done (L{gridlike.server.webhooks}); C{None}: none.
    @ivar on_failed: the same once it has failed for good.
    @ivar straggler_factor: as C{[scheduling] straggler_factor}, for this
        type's jobs.
    @ivar quorum: as C{[scheduling] quorum}, for this type's jobs.
    @ivar quarantine_after: as C{[scheduling] quarantine_after}.
    @ivar cache: whether the result cache answers this type's submits (docs/cache.md).
    """

    name: str
    description: str | None = None
    result_becomes: str | None = None
    timeout: float = 0.0
    max_attempts: int | None = None
    keep_done: float | None = None
    keep_failed: float | None = None
    on_done: str | None = None
    on_failed: str | None = None
    straggler_factor: float | None = None
    quorum: int | None = None
    quarantine_after: int | None = None
    cache: bool = False


def _no_types() -> Mapping[str, TypeSettings]:
    """
    @return: an empty, read-only type mapping.
    """
    return MappingProxyType({})


@frozen
class Settings:
    """
    A whole, validated GridLike configuration.

    @ivar server: the C{[server]} table.
    @ivar registry: the C{[registry]} table.
    @ivar storage: the C{[storage]} table.
    @ivar auth: the C{[auth]} table.
    @ivar workers: the C{[workers]} table.
    @ivar scheduling: the C{[scheduling]} table.
    @ivar events: the C{[events]} table.
    @ivar types: the configured types by name, read-only, in the file's
        order; empty for an untyped instance.
    @ivar source: the configuration file's path, or C{None} for the embedded
        defaults.
    """

    server: ServerSettings = field(factory=ServerSettings)
    registry: RegistrySettings = field(factory=RegistrySettings)
    storage: StorageSettings = field(factory=StorageSettings)
    auth: AuthSettings = field(factory=AuthSettings)
    workers: WorkerSettings = field(factory=WorkerSettings)
    scheduling: SchedulingSettings = field(factory=SchedulingSettings)
    events: EventSettings = field(factory=EventSettings)
    types: Mapping[str, TypeSettings] = field(factory=_no_types)
    source: str | None = None

    def attempts_for(self, type_name: str | None) -> int:
        """
        How many failed attempts end a job of the given type.

        @param type_name: the job's type, or C{None} for an untyped job. A name
            no longer configured (a job journaled under an older
            configuration) gets the instance-wide limit.
        @return: the type's C{max_attempts} when it sets one, otherwise
            C{[scheduling] max_attempts}.
        """
        if type_name is not None:
            job_type = self.types.get(type_name)
            if job_type is not None and job_type.max_attempts is not None:
                return job_type.max_attempts
        return self.scheduling.max_attempts

    def keep_for(self, type_name: str | None, status: Status) -> float | None:
        """
        How long a terminal job is kept (PROTOCOL.md 5.6).

        @param type_name: the job's type, or C{None} for an untyped job,
            which C{[scheduling]} covers.  A type's own table alone covers
            its jobs; a name no longer configured keeps them for ever.
        @param status: done, or failed.
        @return: seconds, or C{None} for ever.
        """
        table = self._policies(type_name)
        if table is None:
            return None
        return table.keep_done if status is Status.DONE else table.keep_failed

    def webhook_for(self, type_name: str | None, status: Status) -> str | None:
        """
        Where a job that ended is announced (C{on_done}, C{on_failed}),
        read as L{keep_for} reads its keys.

        @param type_name: the job's type, or C{None} for an untyped job.
        @param status: done, or failed.
        @return: the URL, or C{None} for none.
        """
        table = self._policies(type_name)
        if table is None:
            return None
        return table.on_done if status is Status.DONE else table.on_failed

    def straggler_factor_for(self, type_name: str | None) -> float | None:
        """
        @return: the C{straggler_factor} that covers a job's type, read as
            L{keep_for} reads its keys; C{None}: its stragglers get no copy.
        """
        table = self._policies(type_name)
        return None if table is None else table.straggler_factor

    def quorum_for(self, type_name: str | None) -> tuple[int, int | None] | None:
        """
        The quorum policy of a job's type (PROTOCOL.md 5.6), read as
        L{keep_for} reads its keys.

        @param type_name: the job's type, or C{None} for an untyped job.
        @return: C{(quorum, quarantine_after)}, or C{None} without a quorum.
        """
        table = self._policies(type_name)
        if table is None or table.quorum is None:
            return None
        return table.quorum, table.quarantine_after

    def caches(self, type_name: str | None) -> bool:
        """Whether the result cache answers a type's submits (C{cache})."""
        table = self._policies(type_name)
        return table is not None and table.cache

    def _policies(self, type_name: str | None) -> SchedulingSettings | TypeSettings | None:
        """
        @return: the table of per-type policies that covers a job's type:
            C{[scheduling]} for untyped jobs, the type's own table, or
            C{None} for a name no longer configured.
        """
        return self.scheduling if type_name is None else self.types.get(type_name)


def state_directory(environ: Mapping[str, str]) -> Path | None:
    """
    The state directory systemd made for the service, if any.

    A unit with C{StateDirectory=gridlike} gets C{/var/lib/gridlike},
    writable even under C{ProtectSystem=strict}, in C{$STATE_DIRECTORY}
    (a colon-separated list when the unit names several; the first is
    GridLike's).

    @param environ: the process environment.
    @return: the directory, or C{None} outside such a unit.
    """
    value = environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(value) if value else None


def load_settings(
    path: str | os.PathLike[str] | None,
    listen: Sequence[str] = (),
    data_dir: Path | None = None,
) -> Settings:
    """
    Read the configuration file, or take the embedded defaults.

    @param path: the TOML file, or C{None} for the embedded defaults (relative
        paths then resolve against the current directory).
    @param listen: endpoint strings that, when given, replace
        C{[server] listen} (from the C{--listen} command-line option).
    @param data_dir: the directory that relative C{[registry] path} and
        C{[storage] path} resolve against instead (L{state_directory}), so
        that the shipped file keeps its data out of C{/etc}; C{None} for the
        configuration file's.
    @return: the validated settings.
    @raise ConfigError: the file cannot be read, is not TOML, or has an
        unknown or bad key.
    """
    if path is None:
        return parse_settings("", Path.cwd(), None, listen, data_dir)
    source = os.fspath(path)
    try:
        raw = Path(source).read_bytes()
    except OSError as e:
        raise ConfigError(f"{source}: cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{source}: not valid TOML: not UTF-8 at byte {e.start}"
        ) from None
    return parse_settings(text, Path(source).absolute().parent, source, listen, data_dir)


def parse_settings(
    text: str,
    base_dir: Path,
    source: str | None = None,
    listen: Sequence[str] = (),
    data_dir: Path | None = None,
) -> Settings:
    """
    Read a configuration from TOML text: the from-string twin of
    L{load_settings}.

    @param text: the TOML document.
    @param base_dir: the directory relative paths resolve against.
    @param source: the file the text came from, for messages and
        L{Settings.source}; C{None} for none.
    @param listen: endpoint strings that, when given, replace
        C{[server] listen}.
    @param data_dir: the directory relative data paths (C{[registry] path},
        C{[storage] path}) resolve against instead of C{base_dir}; C{None}
        for C{base_dir}.
    @return: the validated settings.
    @raise ConfigError: the text is not TOML, or has an unknown or bad key.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        label = source if source is not None else "<string>"
        raise ConfigError(f"{label}: not valid TOML: {e}") from None
    for name, value in document.items():
        if name not in _TABLES:
            if isinstance(value, dict):
                raise ConfigError(f"[{name}]: unknown table")
            raise ConfigError(
                f"{name}: unknown key (keys belong in a table such as [server])"
            )
    data = Path(base_dir if data_dir is None else data_dir).absolute()
    server, exposed = _server(_Table.of("server", document), listen)
    registry = _registry(_Table.of("registry", document), data)
    storage = _storage(_Table.of("storage", document), data)
    auth = _auth(_Table.of("auth", document), data)
    workers = _workers(_Table.of("workers", document))
    scheduling = _scheduling(_Table.of("scheduling", document))
    events = _events(_Table.of("events", document))
    types = _types(document.get("types", {}))
    _refuse_anonymous_exposure(exposed, auth)
    hooks = [
        f"[{name}] {key}"
        for name, table in [("scheduling", scheduling), *((f"types.{t}", types[t]) for t in types)]
        for key in ("on_done", "on_failed")
        if getattr(table, key) is not None
    ]
    _refuse_unsigned_webhooks(hooks, auth)
    refuse_bad_stragglers(scheduling, types)
    refuse_bad_quorums(scheduling, types)
    _refuse_journal_only(scheduling, types, registry.kind)
    return Settings(
        server=server,
        registry=registry,
        storage=storage,
        auth=auth,
        workers=workers,
        scheduling=scheduling,
        events=events,
        types=MappingProxyType(types),
        source=source,
    )


# The per-type policies that need a lone, journaled instance, and the page
# that says why: an index of payload digests (cache), the results of several
# attempts at one job (quorum), a second attempt while the first still runs
# (straggler_factor; Redis claims a job for one), and one sender of each
# webhook (over Redis every instance hears every change).
_JOURNAL_ONLY = {
    "cache": "cache.md",
    "quorum": "quorum.md",
    "straggler_factor": "straggler.md",
    "on_done": "webhooks.md",
    "on_failed": "webhooks.md",
}


def _refuse_journal_only(
    scheduling: SchedulingSettings, types: Mapping[str, TypeSettings], registry_kind: str
) -> None:
    """
    @raise ConfigError: a key of L{_JOURNAL_ONLY} is set with the Redis
        registry; the first such table and key are named.
    """
    if registry_kind != "redis":
        return
    tables: list[tuple[str, SchedulingSettings | TypeSettings]] = [("scheduling", scheduling)]
    tables += [(f"types.{name}", table) for name, table in types.items()]
    for name, table in tables:
        for key, page in _JOURNAL_ONLY.items():
            if getattr(table, key):
                raise ConfigError(
                    f"[{name}] {key}: needs the journaled registry,"
                    f' not [registry] kind = "redis" (docs/{page})'
                )


def _registry(table: _Table, base: Path) -> RegistrySettings:
    """
    @param table: the C{[registry]} table.
    @param base: the directory relative paths resolve against.
    @return: its settings.
    @raise ConfigError: a key is unknown or bad.
    """
    defaults = RegistrySettings()
    kind, url = table.choice("kind", defaults.kind, _REGISTRY_KINDS), table.string("url", None)
    settings = RegistrySettings(
        kind=kind,
        path=table.path("path", defaults.path, base),
        fsync=table.choice("fsync", defaults.fsync, _FSYNC_MODES),
        fsync_interval=table.number("fsync_interval", defaults.fsync_interval, above=0),
        compact_ratio=table.number("compact_ratio", defaults.compact_ratio, above=1),
        compact_min=table.size("compact_min", defaults.compact_min),
        url=url,
        redis=_redis(table, kind, url, base),
    )
    table.finish()
    return settings


def _storage(table: _Table, base: Path) -> StorageSettings:
    """
    @param table: the C{[storage]} table.
    @param base: the directory relative paths resolve against.
    @return: its settings.
    @raise ConfigError: a key is unknown or bad.
    """
    defaults = StorageSettings()
    settings = StorageSettings(
        kind=table.choice("kind", defaults.kind, _STORAGE_KINDS, _STORAGE_KINDS_LATER),
        path=table.path("path", defaults.path, base),
        inline_max=table.size("inline_max", defaults.inline_max),
        inline_memory=table.size("inline_memory", defaults.inline_memory),
        s3=_s3(table, base),
    )
    if settings.inline_max > MAX_INLINE:
        raise ConfigError(
            f"{table.where('inline_max')}: at most {MAX_INLINE} bytes,"
            f" not {settings.inline_max}"
        )
    table.finish()
    return settings


def _scheduling(table: _Table) -> SchedulingSettings:
    """
    @param table: the C{[scheduling]} table.
    @return: its settings.
    @raise ConfigError: a key is unknown or bad.
    """
    defaults = SchedulingSettings()
    settings = SchedulingSettings(
        batch_size=table.integer("batch_size", defaults.batch_size, above=0),
        max_attempts=table.integer("max_attempts", defaults.max_attempts, at_least=1),
        keep_done=table.duration("keep_done", defaults.keep_done),
        keep_failed=table.duration("keep_failed", defaults.keep_failed),
        on_done=table.http_url("on_done"),
        on_failed=table.http_url("on_failed"),
        straggler_factor=straggler_factor(table),
        **quorum_keys(table),
        cache=table.boolean("cache", False),
    )
    table.finish()
    return settings


def _events(table: _Table) -> EventSettings:
    """
    @param table: the C{[events]} table.
    @return: its settings.
    @raise ConfigError: a key is unknown or bad.
    """
    defaults = EventSettings()
    settings = EventSettings(
        keep=table.integer("keep", defaults.keep, above=0),
        keep_bytes=table.size("keep_bytes", defaults.keep_bytes, above=0),
        heartbeat=table.number("heartbeat", defaults.heartbeat, above=0),
    )
    table.finish()
    if settings.heartbeat > 15:
        raise ConfigError(
            f"{table.where('heartbeat')}: at most 15 seconds (PROTOCOL.md 5.1),"
            f" not {settings.heartbeat:g}"
        )
    return settings


def _types(data: object) -> dict[str, TypeSettings]:
    """
    @param data: the C{[types]} table: one sub-table per type.
    @return: the types by name, in the file's order.
    @raise ConfigError: a name or key is bad, C{result_becomes} names no
        configured type, or C{result_becomes} links form a cycle.
    """
    if not isinstance(data, dict):
        raise ConfigError(
            f"[types]: must be a table of types such as [types.stage1], not {data!r}"
        )
    types: dict[str, TypeSettings] = {}
    for name, body in data.items():
        if not isinstance(body, dict):
            raise ConfigError(
                f"[types] {name}: must be a table such as [types.{name}],"
                f" not {body!r}"
            )
        if not TYPE_NAME_PATTERN.fullmatch(name):
            raise ConfigError(
                f"[types.{name}]: bad type name {name!r}: 1 to 64 letters,"
                " digits, '_' or '-', starting with a letter or digit"
            )
        types[name] = _type(_Table(f"types.{name}", body), name)
    for name, job_type in types.items():
        target = job_type.result_becomes
        if target is not None and target not in types:
            raise ConfigError(
                f"[types.{name}] result_becomes: no type {target!r} is configured"
            )
    _refuse_cycles(types)
    return types


def _type(table: _Table, name: str) -> TypeSettings:
    """
    @param table: one C{[types.NAME]} table.
    @param name: the type's name.
    @return: its settings.
    @raise ConfigError: a key is unknown or bad.
    """
    defaults = TypeSettings(name)
    settings = TypeSettings(
        name=name,
        description=table.string("description", defaults.description, empty=True),
        result_becomes=table.string("result_becomes", defaults.result_becomes),
        timeout=table.number("timeout", defaults.timeout),
        max_attempts=table.integer("max_attempts", defaults.max_attempts, at_least=1),
        keep_done=table.duration("keep_done", defaults.keep_done),
        keep_failed=table.duration("keep_failed", defaults.keep_failed),
        on_done=table.http_url("on_done"),
        on_failed=table.http_url("on_failed"),
        straggler_factor=straggler_factor(table),
        **quorum_keys(table),
        cache=table.boolean("cache", False),
    )
    table.finish()
    return settings


def _refuse_cycles(types: Mapping[str, TypeSettings]) -> None:
    """
    @param types: the configured types; every C{result_becomes} names one.
    @raise ConfigError: following C{result_becomes} from some type comes back
        to it, naming the first such type in the file, e.g.
        C{"[types.a] result_becomes: cycle a -> b -> a"}.
    """
    for start in types:
        chain = [start]
        following = types[start].result_becomes
        while following is not None and following not in chain:
            chain.append(following)
            following = types[following].result_becomes
        if following == start:
            raise ConfigError(
                f"[types.{start}] result_becomes: cycle"
                f" {' -> '.join([*chain, start])}"
            )
