"""
Tests for L{gridlike.server.config}: defaults, validation messages that name the key,
sizes, paths, types, listen endpoints and the anonymous-exposure refusal.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.endpoints import quoteStringArgument

from gridlike.server.config import (
    AuthSettings,
    RedisSettings,
    RegistrySettings,
    S3Settings,
    SchedulingSettings,
    ServerSettings,
    Settings,
    StorageSettings,
    TypeSettings,
    WorkerSettings,
    load_settings,
    parse_settings,
    parse_size,
    state_directory,
)
from gridlike.server.errors import ConfigError

ETC = Path(__file__).parent.parent / "etc"
BASE = Path("/srv/gridlike")


def toml(value: str) -> str:
    """
    Write a string as a TOML basic string (JSON's escapes are TOML's).
    """
    return json.dumps(value)


def parse(text: str, listen: tuple[str, ...] = ()) -> Settings:
    """
    Parse configuration text with L{BASE} as the directory of the file.
    """
    return parse_settings(text, BASE, "test.toml", listen)


def error(text: str, listen: tuple[str, ...] = ()) -> str:
    """
    Parse configuration text that must be refused; return the message.
    """
    with pytest.raises(ConfigError) as caught:
        parse(text, listen)
    return str(caught.value)


# Defaults


def test_embedded_defaults() -> None:
    """
    Without a file, every key has its documented default and relative paths
    resolve against the current directory.
    """
    settings = load_settings(None)
    here = Path.cwd()
    assert settings == Settings(
        server=ServerSettings(
            listen=("tcp:8080:interface=127.0.0.1",),
            path_prefix="",
            max_payload=1024**3,
            max_wait=300.0,
            max_uploads=256,
            idle_timeout=60.0,
            access_log=False,
            allowed_origins=(),
        ),
        registry=RegistrySettings(
            kind="journal",
            path=here / "gridlike-data" / "journal",
            fsync="always",
            fsync_interval=1.0,
            compact_ratio=4.0,
            compact_min=64 * 1024**2,
            url=None,
        ),
        storage=StorageSettings(
            kind="filesystem", path=here / "gridlike-data" / "payloads"
        ),
        auth=AuthSettings(
            api_keys=(),
            worker_token="",
            kick_after_ms=2000,
            dashboard_user=None,
            dashboard_password=None,
            allow_anonymous=False,
        ),
        workers=WorkerSettings(
            ping_interval=20.0,
            ping_timeout=20.0,
            max_registering=1000,
            forget_after=600.0,
            max_message=2 * 1024 * 1024,
        ),
        scheduling=SchedulingSettings(batch_size=100, max_attempts=3),
        types={},
        source=None,
    )


def test_empty_text_is_defaults() -> None:
    """
    An empty file is the embedded defaults, with paths under the file's
    directory and the file as C{source}.
    """
    settings = parse("")
    assert settings.registry.path == BASE / "gridlike-data" / "journal"
    assert settings.storage.path == BASE / "gridlike-data" / "payloads"
    assert settings.source == "test.toml"
    assert (
        attrs.evolve(
            settings,
            registry=attrs.evolve(settings.registry, path=RegistrySettings().path),
            storage=attrs.evolve(settings.storage, path=StorageSettings().path),
            source=None,
        )
        == Settings()
    )


def test_settings_are_frozen() -> None:
    """
    Settings and their tables cannot be changed, and C{types} is read-only.
    """
    settings = parse('[types.a]\ndescription = "x"')
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        settings.server = ServerSettings()  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        settings.scheduling.max_attempts = 9  # type: ignore[misc]
    with pytest.raises(TypeError):
        settings.types["b"] = TypeSettings("b")  # type: ignore[index]


def test_etc_file_equals_defaults() -> None:
    """
    C{etc/gridlike.toml} loads, and equals the embedded defaults except that
    its paths are relative to C{etc/} and its C{source} is the file.
    """
    path = str(ETC / "gridlike.toml")
    from_file = load_settings(path)
    defaults = load_settings(None)
    assert from_file.source == path
    assert from_file.registry.path == ETC.absolute() / "gridlike-data" / "journal"
    assert from_file.storage.path == ETC.absolute() / "gridlike-data" / "payloads"
    assert from_file == attrs.evolve(
        defaults,
        registry=attrs.evolve(defaults.registry, path=from_file.registry.path),
        storage=attrs.evolve(defaults.storage, path=from_file.storage.path),
        source=path,
    )


def test_etc_file_example_types_load() -> None:
    """
    The commented-out example types in C{etc/gridlike.toml} are valid once
    uncommented, with the webhook secret their webhooks need.
    """
    text = (ETC / "gridlike.toml").read_text()
    start = text.index("# [types.stage1]")
    example = "\n".join(line.removeprefix("# ") for line in text[start:].splitlines())
    secret = '# webhook_secret = "a long random string"'
    settings = parse(text[:start].replace(secret, secret.removeprefix("# ")) + example)
    assert settings.types == {
        "stage1": TypeSettings(
            name="stage1",
            description="first stage",
            result_becomes="stage2",
            timeout=600.0,
            max_attempts=5,
            keep_done=7 * 86400.0,
            keep_failed=30 * 86400.0,
            on_done="https://hooks.example/done",
            on_failed="https://hooks.example/failed",
            quorum=2,
            quarantine_after=3,
        ),
        "stage2": TypeSettings(name="stage2", straggler_factor=3.0),
    }


def test_s3_keys() -> None:
    """
    C{[storage] kind = "s3"} reads the keys of PROTOCOL.md section 5.4: the
    endpoint loses a trailing slash, credential files resolve against the
    data directory, and the endpoint defaults to AWS's for the region.
    """
    settings = parse("""
        [storage]
        kind = "s3"
        endpoint = "http://127.0.0.1:8333/"
        bucket = "grid.like-1"
        region = "eu-west-3"
        prefix = "jobs/"
        path_style = false
        access_key_id = "AKIDEXAMPLE"
        secret_access_key_file = "secrets/s3"
    """)
    assert settings.storage.kind == "s3"
    assert settings.storage.s3 == S3Settings(
        bucket="grid.like-1",
        endpoint="http://127.0.0.1:8333",
        region="eu-west-3",
        prefix="jobs/",
        path_style=False,
        access_key_id="AKIDEXAMPLE",
        secret_access_key_file=BASE / "secrets" / "s3",
    )
    minimal = parse('[storage]\nkind = "s3"\nbucket = "b-1"\nregion = "eu-north-1"')
    assert minimal.storage.s3 == S3Settings(
        bucket="b-1", endpoint="https://s3.eu-north-1.amazonaws.com", region="eu-north-1"
    )
    assert parse("").storage.s3 is None


def test_every_key_set() -> None:
    """
    Every key of every table is read from the file.
    """
    settings = parse("""
        [server]
        listen = ["tcp:9000:interface=127.0.0.1", "unix:/run/g.sock"]
        path_prefix = "/grid/like/"
        max_payload = "10MB"
        max_wait = 2.5
        max_uploads = 4
        allowed_origins = ["https://app.example"]
        max_uploads_per_address = 2
        min_upload_rate = "10KiB"
        upload_rate_window = 5
        max_request = "1GiB"
        max_form_parts = 10
        max_form_text = "1KiB"
        log_format = "json"
        [registry]
        kind = "journal"
        path = "/var/lib/g/journal"
        fsync = "interval"
        fsync_interval = 0.25
        compact_ratio = 1.5
        compact_min = 0
        url = "redis://localhost/1"
        [storage]
        kind = "filesystem"
        path = "payloads"
        inline_max = "4KiB"
        [auth]
        api_keys = ["k1", "k 2"]
        worker_token = "tok"
        kick_after_ms = 1
        dashboard_user = "admin"
        dashboard_password = "secret"
        allow_anonymous = true
        webhook_secret = "hook key"
        [workers]
        ping_interval = 0.5
        ping_timeout = 3
        max_registering = 1
        forget_after = 0
        max_message = "1KB"
        [scheduling]
        batch_size = 1
        max_attempts = 1
        on_done = "https://hooks.example/d?x=1"
        on_failed = "http://127.0.0.1:9000/f"
        """)
    assert settings.server == ServerSettings(
        listen=("tcp:9000:interface=127.0.0.1", "unix:/run/g.sock"),
        path_prefix="/grid/like",
        max_payload=10_000_000,
        max_wait=2.5,
        max_uploads=4,
        allowed_origins=("https://app.example",),
        max_uploads_per_address=2,
        min_upload_rate=10 * 1024,
        upload_rate_window=5.0,
        max_request=1024**3,
        max_form_parts=10,
        max_form_text=1024,
        log_format="json",
    )
    assert settings.registry == RegistrySettings(
        kind="journal",
        path=Path("/var/lib/g/journal"),
        fsync="interval",
        fsync_interval=0.25,
        compact_ratio=1.5,
        compact_min=0,
        url="redis://localhost/1",
    )
    assert settings.storage == StorageSettings("filesystem", BASE / "payloads", 4096)
    assert settings.auth == AuthSettings(
        api_keys=("k1", "k 2"),
        worker_token="tok",
        kick_after_ms=1,
        dashboard_user="admin",
        dashboard_password="secret",
        allow_anonymous=True,
        webhook_secret="hook key",
    )
    assert settings.workers == WorkerSettings(0.5, 3.0, 1, 0.0, 1000)
    assert settings.scheduling == SchedulingSettings(
        batch_size=1,
        max_attempts=1,
        on_done="https://hooks.example/d?x=1",
        on_failed="http://127.0.0.1:9000/f",
    )


def test_straggler_factor() -> None:
    """
    C{straggler_factor} is read per type and for the untyped jobs, each
    table alone covering its jobs.
    """
    settings = parse("[scheduling]\nstraggler_factor = 4\n[types.a]\nstraggler_factor = 1.5\n[types.b]")
    assert settings.straggler_factor_for(None) == 4.0
    assert settings.straggler_factor_for("a") == 1.5
    assert settings.straggler_factor_for("b") is None
    assert settings.straggler_factor_for("gone") is None
    assert parse("").straggler_factor_for(None) is None


def test_numbers_are_floats() -> None:
    """
    Keys in seconds accept TOML integers and store floats.
    """
    settings = parse("[server]\nmax_wait = 7\n[types.a]\ntimeout = 3")
    assert type(settings.server.max_wait) is float
    assert type(settings.types["a"].timeout) is float


# Errors


@pytest.mark.parametrize(
    "text, message",
    [
        ("[bogus]\nx = 1", "[bogus]: unknown table"),
        ("[bogus.sub]", "[bogus]: unknown table"),
        (
            "listen = []",
            "listen: unknown key (keys belong in a table such as [server])",
        ),
        ("server = 5", "[server]: must be a table, not 5"),
        ("[server]\nlisen = []", "[server] lisen: unknown key"),
        ("[server.extra]", "[server] extra: unknown key"),
        ("[registry]\nfoo = 1", "[registry] foo: unknown key"),
        ("[storage]\nbucket = 'b'", '[storage] bucket: only for kind = "s3"'),
        ("[auth]\napi_key = 'k'", "[auth] api_key: unknown key"),
        ("[workers]\nping = 1", "[workers] ping: unknown key"),
        ("[scheduling]\nmax_attemps = 3", "[scheduling] max_attemps: unknown key"),
        ("[types.a]\ntimout = 3", "[types.a] timout: unknown key"),
    ],
)
def test_unknown_tables_and_keys(text: str, message: str) -> None:
    """
    An unknown table or key is refused, naming it.
    """
    assert error(text) == message


@pytest.mark.parametrize(
    "text, message",
    [
        # [server]
        (
            "[server]\nlisten = []",
            "[server] listen: must be a non-empty list of endpoint strings such"
            ' as "tcp:8080:interface=127.0.0.1", not []',
        ),
        (
            "[server]\nlisten = 'tcp:8080'",
            "[server] listen: must be a non-empty list of endpoint strings such"
            " as \"tcp:8080:interface=127.0.0.1\", not 'tcp:8080'",
        ),
        (
            "[server]\nlisten = ['']",
            "[server] listen: must be a non-empty list of endpoint strings such"
            " as \"tcp:8080:interface=127.0.0.1\", not ['']",
        ),
        (
            "[server]\npath_prefix = 5",
            "[server] path_prefix: must be a string, not 5",
        ),
        (
            "[server]\nmax_payload = 'lots'",
            "[server] max_payload: not a size: 'lots'",
        ),
        ("[server]\nmax_payload = -1", "[server] max_payload: not a size: -1"),
        ("[server]\nmax_payload = 1.5", "[server] max_payload: not a size: 1.5"),
        ("[server]\nmax_payload = true", "[server] max_payload: not a size: True"),
        (
            "[server]\nmax_payload = 0",
            "[server] max_payload: must be a size > 0, not 0",
        ),
        (
            "[server]\nmax_wait = -1",
            "[server] max_wait: must be a number >= 0, not -1",
        ),
        (
            "[server]\nmax_wait = 'long'",
            "[server] max_wait: must be a number >= 0, not 'long'",
        ),
        (
            "[server]\nmax_wait = inf",
            "[server] max_wait: must be a number >= 0, not inf",
        ),
        (
            "[server]\nmax_wait = nan",
            "[server] max_wait: must be a number >= 0, not nan",
        ),
        (
            "[server]\nmax_wait = true",
            "[server] max_wait: must be a number >= 0, not True",
        ),
        (
            "[server]\nmax_uploads = 0",
            "[server] max_uploads: must be an integer >= 1, not 0",
        ),
        (
            "[server]\nmax_uploads = 2.0",
            "[server] max_uploads: must be an integer >= 1, not 2.0",
        ),
        (
            "[server]\nmax_uploads_per_address = 0",
            "[server] max_uploads_per_address: must be an integer > 0, not 0",
        ),
        (
            "[server]\nmin_upload_rate = -1",
            "[server] min_upload_rate: not a size: -1",
        ),
        (
            "[server]\nupload_rate_window = 0",
            "[server] upload_rate_window: must be a number > 0, not 0",
        ),
        (
            "[server]\nmax_request = '1 lot'",
            "[server] max_request: not a size: '1 lot'",
        ),
        (
            "[server]\nmax_form_parts = 0",
            "[server] max_form_parts: must be an integer > 0, not 0",
        ),
        (
            "[server]\nmax_form_text = 0",
            "[server] max_form_text: must be a size > 0, not 0",
        ),
        # [registry]
        (
            "[registry]\nkind = 'redis'\nurl = 'http://x'",
            "[registry] url: not a Redis URL (redis://[:password@]host[:port][/db] or"
            " rediss://...)",
        ),
        (
            "[registry]\nkind = 'redis'\nurl = 'redis://x'\nurl_file = 'f'",
            "[registry] url_file: set either url or url_file, not both",
        ),
        (
            "[registry]\ninstance_timeout = 3",
            '[registry] instance_timeout: only for kind = "redis"',
        ),
        (
            "[registry]\nkind = 'redis'\ninstance_timeout = 0",
            "[registry] instance_timeout: must be a number > 0, not 0",
        ),
        (
            "[registry]\nkind = 'mysql'",
            "[registry] kind: must be one of 'journal', 'redis', not 'mysql'",
        ),
        (
            "[registry]\npath = ''",
            "[registry] path: must be a non-empty string, not ''",
        ),
        ("[registry]\npath = 3", "[registry] path: must be a non-empty string, not 3"),
        (
            "[server]\nlog_format = 'xml'",
            "[server] log_format: must be one of 'text', 'json', not 'xml'",
        ),
        (
            "[registry]\nfsync = 'sometimes'",
            "[registry] fsync: must be one of 'always', 'interval', 'never',"
            " not 'sometimes'",
        ),
        (
            "[registry]\nfsync = true",
            "[registry] fsync: must be one of 'always', 'interval', 'never',"
            " not True",
        ),
        (
            "[registry]\nfsync_interval = 0",
            "[registry] fsync_interval: must be a number > 0, not 0",
        ),
        (
            "[registry]\ncompact_ratio = 1",
            "[registry] compact_ratio: must be a number > 1, not 1",
        ),
        (
            "[registry]\ncompact_min = '1 potato'",
            "[registry] compact_min: not a size: '1 potato'",
        ),
        ("[registry]\nurl = ''", "[registry] url: must be a non-empty string, not ''"),
        # [storage]
        (
            "[storage]\nkind = 's3'",
            '[storage] bucket: must be set for kind = "s3"',
        ),
        (
            "[storage]\nkind = 's3'\nbucket = 'ab'",
            "[storage] bucket: not an S3 bucket name: 'ab' (3 to 63 lower-case"
            " letters, digits, '.' and '-', starting and ending with a letter or"
            " digit)",
        ),
        (
            "[storage]\nbucket = 'gridlike'",
            '[storage] bucket: only for kind = "s3"',
        ),
        (
            "[storage]\nkind = 's3'\nbucket = 'gridlike'\nendpoint = 's3.example.com'",
            "[storage] endpoint: must be http(s)://host[:port], not 's3.example.com'",
        ),
        (
            "[storage]\nkind = 's3'\nbucket = 'gridlike'\nprefix = '/jobs/'",
            "[storage] prefix: '/jobs/' is not a plain key prefix (letters, digits"
            " and !_.*'()- between single slashes, no leading slash)",
        ),
        (
            "[storage]\nkind = 's3'\nbucket = 'gridlike'\npath_style = 'yes'",
            "[storage] path_style: must be true or false, not 'yes'",
        ),
        (
            "[storage]\nkind = 's3'\nbucket = 'gridlike'\nsecret_access_key = 's'"
            "\nsecret_access_key_file = 'f'",
            "[storage] secret_access_key_file: set either secret_access_key or"
            " secret_access_key_file, not both",
        ),
        (
            "[storage]\ninline_max = '2MiB'",
            "[storage] inline_max: at most 1048576 bytes, not 2097152",
        ),
        (
            "[storage]\ninline_max = 'lots'",
            "[storage] inline_max: not a size: 'lots'",
        ),
        (
            "[storage]\nkind = 'ftp'",
            "[storage] kind: must be one of 'filesystem', 's3', not 'ftp'",
        ),
        ("[storage]\npath = []", "[storage] path: must be a non-empty string, not []"),
        # [auth]
        (
            "[auth]\napi_keys = 'k'",
            "[auth] api_keys: must be a list of non-empty strings of printable"
            " ASCII without surrounding spaces",
        ),
        (
            "[auth]\napi_keys = ['']",
            "[auth] api_keys: must be a list of non-empty strings of printable"
            " ASCII without surrounding spaces",
        ),
        (
            "[auth]\napi_keys = [' k']",
            "[auth] api_keys: must be a list of non-empty strings of printable"
            " ASCII without surrounding spaces",
        ),
        (
            "[auth]\napi_keys = [1]",
            "[auth] api_keys: must be a list of non-empty strings of printable"
            " ASCII without surrounding spaces",
        ),
        (
            "[auth]\nworker_token = 1",
            "[auth] worker_token: must be a string, not 1",
        ),
        (
            "[auth]\nkick_after_ms = 'abc'",
            "[auth] kick_after_ms: must be an integer > 0, not 'abc'",
        ),
        (
            "[auth]\nkick_after_ms = 0",
            "[auth] kick_after_ms: must be an integer > 0, not 0",
        ),
        (
            "[auth]\nkick_after_ms = true",
            "[auth] kick_after_ms: must be an integer > 0, not True",
        ),
        (
            "[auth]\ndashboard_user = ''\ndashboard_password = 'p'",
            "[auth] dashboard_user: must be a non-empty string, not ''",
        ),
        (
            "[auth]\ndashboard_user = 'u'\ndashboard_password = 5",
            "[auth] dashboard_password: must be a non-empty string, not 5",
        ),
        (
            "[auth]\ndashboard_user = 'u'",
            "[auth] dashboard_password: must be set when dashboard_user is",
        ),
        (
            "[auth]\ndashboard_password = 'p'",
            "[auth] dashboard_user: must be set when dashboard_password is",
        ),
        (
            "[auth]\nallow_anonymous = 1",
            "[auth] allow_anonymous: must be true or false, not 1",
        ),
        (
            "[auth]\nallow_anonymous = 'yes'",
            "[auth] allow_anonymous: must be true or false, not 'yes'",
        ),
        # [workers]
        (
            "[workers]\nping_interval = 0",
            "[workers] ping_interval: must be a number > 0, not 0",
        ),
        (
            "[workers]\nping_timeout = -1",
            "[workers] ping_timeout: must be a number > 0, not -1",
        ),
        (
            "[workers]\nmax_registering = 0",
            "[workers] max_registering: must be an integer >= 1, not 0",
        ),
        (
            "[workers]\nforget_after = -0.5",
            "[workers] forget_after: must be a number >= 0, not -0.5",
        ),
        (
            "[workers]\nmax_message = 0",
            "[workers] max_message: must be a size > 0, not 0",
        ),
        (
            "[workers]\nmax_message = '64 KiBs'",
            "[workers] max_message: not a size: '64 KiBs'",
        ),
        # [scheduling]
        (
            "[scheduling]\nbatch_size = 0",
            "[scheduling] batch_size: must be an integer > 0, not 0",
        ),
        (
            "[scheduling]\nbatch_size = false",
            "[scheduling] batch_size: must be an integer > 0, not False",
        ),
        (
            "[scheduling]\nmax_attempts = 0",
            "[scheduling] max_attempts: must be an integer >= 1, not 0",
        ),
        (
            "[scheduling]\nmax_attempts = '3'",
            "[scheduling] max_attempts: must be an integer >= 1, not '3'",
        ),
        # [types]
        (
            "[types.stage1]\ntimeout = -1",
            "[types.stage1] timeout: must be a number >= 0, not -1",
        ),
        (
            "[types.stage1]\ntimeout = '10s'",
            "[types.stage1] timeout: must be a number >= 0, not '10s'",
        ),
        (
            "[types.stage1]\nmax_attempts = 0",
            "[types.stage1] max_attempts: must be an integer >= 1, not 0",
        ),
        (
            "[types.stage1]\nmax_attempts = true",
            "[types.stage1] max_attempts: must be an integer >= 1, not True",
        ),
        (
            "[types.stage1]\ndescription = 5",
            "[types.stage1] description: must be a string, not 5",
        ),
        (
            "[types.stage1]\nresult_becomes = ''",
            "[types.stage1] result_becomes: must be a non-empty string, not ''",
        ),
        (
            "types = 3",
            "[types]: must be a table of types such as [types.stage1], not 3",
        ),
        (
            "[types.a]\nstraggler_factor = 1",
            "[types.a] straggler_factor: must be a number > 1, not 1",
        ),
        (
            "[types.a]\nstraggler_factor = '2'",
            "[types.a] straggler_factor: must be a number > 1, not '2'",
        ),
        (
            "[scheduling]\nstraggler_factor = 0.5",
            "[scheduling] straggler_factor: must be a number > 1, not 0.5",
        ),
        (
            "[types.a]\nstraggler_factor = 2\n[types.b]\nquorum = 2\nstraggler_factor = 2",
            "[types.b] straggler_factor: not with quorum: a quorum job already"
            " runs on several workers (docs/straggler.md)",
        ),
        (
            "[scheduling]\nquorum = 2\nstraggler_factor = 3\n[types.a]\nquorum = 2",
            "[scheduling] straggler_factor: not with quorum: a quorum job already"
            " runs on several workers (docs/straggler.md)",
        ),
        (
            "[registry]\nkind = 'redis'\nurl = 'redis://x'\n[types.a]\n[types.b]\nstraggler_factor = 2",
            '[types.b] straggler_factor: needs the journaled registry, not [registry] kind = "redis"'
            " (docs/straggler.md)",
        ),
        (
            "[registry]\nkind = 'redis'\nurl = 'redis://x'\n[scheduling]\ncache = true\nquorum = 2",
            '[scheduling] cache: needs the journaled registry, not [registry] kind = "redis"'
            " (docs/cache.md)",
        ),
        (
            "[types]\ndescription = 'x'",
            "[types] description: must be a table such as [types.description],"
            " not 'x'",
        ),
    ],
)
def test_bad_values(text: str, message: str) -> None:
    """
    A value of the wrong kind or out of range is refused with a message
    naming the table and the key; booleans are not taken for numbers.
    """
    assert error(text) == message


def test_toml_syntax_error() -> None:
    """
    Text that is not TOML is refused, naming the source and tomllib's reason.
    """
    message = error("[server\nlisten = 1")
    assert message.startswith("test.toml: not valid TOML: ")
    assert "line 1" in message


def test_toml_syntax_error_without_source() -> None:
    """
    Without a source file, a syntax error names C{<string>}.
    """
    with pytest.raises(ConfigError) as caught:
        parse_settings("= 1", BASE)
    assert str(caught.value).startswith("<string>: not valid TOML: ")


def test_missing_file(tmp_path: Path) -> None:
    """
    A file that cannot be read is refused, naming it and the reason.
    """
    path = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(caught.value) == f"{path}: cannot read: No such file or directory"


def test_not_utf8(tmp_path: Path) -> None:
    """
    A file that is not UTF-8 is refused as not valid TOML.
    """
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"[types.caf\xe9]\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(str(path))
    assert str(caught.value) == f"{path}: not valid TOML: not UTF-8 at byte 10"


def test_config_error_is_gridlike_error() -> None:
    """
    The message is also the error's C{problem}.
    """
    with pytest.raises(ConfigError) as caught:
        parse("[scheduling]\nmax_attemps = 3")
    assert caught.value.problem == "[scheduling] max_attemps: unknown key"


# Sizes

UNITS = {
    "": 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
}


@pytest.mark.parametrize(
    "value, size",
    [
        (0, 0),
        (1234, 1234),
        ("1234", 1234),
        ("64KiB", 65536),
        ("512MiB", 512 * 1024**2),
        ("1GiB", 1024**3),
        ("1TiB", 1024**4),
        ("10KB", 10_000),
        ("10MB", 10_000_000),
        ("1GB", 1_000_000_000),
        ("7B", 7),
        ("1 gib", 1024**3),
        (" 3\tmib ", 3 * 1024**2),
        ("2kb", 2000),
    ],
)
def test_parse_size(value: int | str, size: int) -> None:
    """
    Sizes are integers or strings with an optional, case-insensitive unit.
    """
    assert parse_size(value, "[x] y") == size


@pytest.mark.parametrize(
    "value",
    ["", "lots", "-1", "-1KiB", "1.5GiB", "1 K", "KiB", "1 KiB B", "1e3", "١٢"],
)
def test_parse_size_garbage(value: str) -> None:
    """
    Negative, fractional, unitless-but-lettered or otherwise odd strings are
    refused, naming the key.
    """
    with pytest.raises(ConfigError) as caught:
        parse_size(value, "[server] max_payload")
    assert str(caught.value) == f"[server] max_payload: not a size: {value!r}"


@pytest.mark.parametrize("value", [-1, True, False])
def test_parse_size_bad_integers(value: int) -> None:
    """
    Negative integers and booleans are not sizes.
    """
    with pytest.raises(ConfigError) as caught:
        parse_size(value, "[workers] max_message")
    assert str(caught.value) == f"[workers] max_message: not a size: {value!r}"


@given(
    number=st.integers(min_value=0, max_value=10**15),
    unit=st.sampled_from(sorted(UNITS)),
    upper=st.booleans(),
    space=st.sampled_from(["", " ", "  ", "\t"]),
)
def test_parse_size_round_trip(number: int, unit: str, upper: bool, space: str) -> None:
    """
    Any non-negative number followed by any unit, in any case and with any
    spacing, reads as the number times the unit.
    """
    text = f"{number}{space}{unit.upper() if upper else unit.lower()}"
    assert parse_size(text, "[x] y") == number * UNITS[unit]


@given(st.integers(min_value=0))
def test_parse_size_integers(number: int) -> None:
    """
    A non-negative integer, or its decimal string, is that many bytes.
    """
    assert parse_size(number, "[x] y") == number
    assert parse_size(str(number), "[x] y") == number


# Paths and path_prefix


def test_relative_paths_follow_the_file(tmp_path: Path) -> None:
    """
    Relative paths resolve against the configuration file's directory, not
    the current one; absolute paths and C{~} are kept as written.
    """
    config = tmp_path / "conf" / "g.toml"
    config.parent.mkdir()
    config.write_text(
        '[registry]\npath = "state/journal"\n[storage]\npath = "/data/payloads"\n'
    )
    settings = load_settings(str(config))
    assert settings.registry.path == tmp_path / "conf" / "state" / "journal"
    assert settings.storage.path == Path("/data/payloads")
    assert settings.source == str(config)
    home = parse('[storage]\npath = "~/payloads"')
    assert home.storage.path == Path.home() / "payloads"


def test_data_paths_in_state_directory(tmp_path: Path) -> None:
    """
    With a data directory (systemd's StateDirectory), relative data paths
    resolve against it rather than the file's directory; absolute ones stay.
    """
    config = tmp_path / "etc" / "g.toml"
    config.parent.mkdir()
    config.write_text('[storage]\npath = "/data/payloads"\n')
    settings = load_settings(str(config), data_dir=tmp_path / "state")
    assert settings.registry.path == tmp_path / "state" / "gridlike-data" / "journal"
    assert settings.storage.path == Path("/data/payloads")


def test_state_directory() -> None:
    """
    C{$STATE_DIRECTORY} names the data directory; of several, the first.
    """
    assert state_directory({}) is None
    assert state_directory({"STATE_DIRECTORY": ""}) is None
    assert state_directory({"STATE_DIRECTORY": "/var/lib/gridlike"}) == Path("/var/lib/gridlike")
    assert state_directory({"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}) == Path("/var/lib/a")


def test_relative_config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A configuration file given by a relative path still yields absolute
    paths, under its directory.
    """
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "g.toml").write_text("")
    monkeypatch.chdir(tmp_path)
    settings = load_settings("etc/g.toml")
    assert settings.registry.path == tmp_path / "etc" / "gridlike-data" / "journal"
    assert settings.registry.path.is_absolute()
    assert settings.source == "etc/g.toml"


def test_relative_base_dir_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    C{parse_settings} makes a relative C{base_dir} absolute.
    """
    monkeypatch.chdir(tmp_path)
    settings = parse_settings("", Path("sub"))
    assert settings.storage.path == tmp_path / "sub" / "gridlike-data" / "payloads"


@pytest.mark.parametrize(
    "value, prefix",
    [
        ("", ""),
        ("/", ""),
        ("/api", "/api"),
        ("api", "/api"),
        ("/api/", "/api"),
        ("/a/b.c/d_e-f~", "/a/b.c/d_e-f~"),
    ],
)
def test_path_prefix_normalised(value: str, prefix: str) -> None:
    """
    C{path_prefix} is C{""} or a leading-slash path without a trailing slash.
    """
    settings = parse(f"[server]\npath_prefix = {toml(value)}")
    assert settings.server.path_prefix == prefix


@pytest.mark.parametrize(
    "value",
    ["//", "/a//b", "/a/../b", "/./a", "/a?b=1", "/a#b", "/a b", "/caf%C3%A9", "/é"],
)
def test_path_prefix_must_be_plain(value: str) -> None:
    """
    A C{path_prefix} with empty, dot or dot-dot segments, a query, a
    fragment, escapes or other characters is refused.
    """
    assert error(f"[server]\npath_prefix = {toml(value)}") == (
        "[server] path_prefix: must be a plain URL path such as '/gridlike'"
        " (letters, digits, '.', '_', '~' and '-' between single slashes),"
        f" not {value!r}"
    )


def test_allowed_origins_canonical() -> None:
    """
    C{allowed_origins} are kept as browsers write origins: lower case,
    without the scheme's default port.
    """
    settings = parse(
        '[server]\nallowed_origins = ["HTTPS://App.Example:443", "http://localhost:3000"]'
    )
    assert settings.server.allowed_origins == ("https://app.example", "http://localhost:3000")


@pytest.mark.parametrize(
    "value", ['"http://x.example"', '[3]', '["x.example"]', '["http://x.example/"]', '["*"]']
)
def test_allowed_origins_must_be_origins(value: str) -> None:
    """Anything but a list of http(s) origins is refused, naming the key."""
    message = error(f"[server]\nallowed_origins = {value}")
    assert message.startswith("[server] allowed_origins: ")


def test_null_origin_cannot_be_allowed() -> None:
    """
    C{"null"} is refused: every web site can send it from a sandboxed frame,
    so allowing it would allow them all.
    """
    message = error('[server]\nallowed_origins = ["null"]')
    assert message.startswith('[server] allowed_origins: "null" cannot be allowed')


# Types


def test_types() -> None:
    """
    Each C{[types.NAME]} table is a type, kept in file order in a read-only
    mapping; unset keys take their defaults.
    """
    settings = parse("""
        [types.stage1]
        description = "first stage"
        result_becomes = "stage2"
        timeout = 600
        max_attempts = 5
        [types.stage2]
        [types.Z_9-x]
        """)
    assert list(settings.types) == ["stage1", "stage2", "Z_9-x"]
    assert settings.types["stage1"] == TypeSettings(
        "stage1", "first stage", "stage2", 600.0, 5
    )
    assert settings.types["stage2"] == TypeSettings(
        name="stage2",
        description=None,
        result_becomes=None,
        timeout=0.0,
        max_attempts=None,
    )


def test_no_types() -> None:
    """
    Without types, or with an empty C{[types]} table, the instance is
    untyped.
    """
    assert parse("").types == {}
    assert parse("[types]").types == {}


def test_attempts_for() -> None:
    """
    A type's C{max_attempts} wins; otherwise, and for untyped jobs or types
    no longer configured, C{[scheduling] max_attempts} applies.
    """
    settings = parse(
        "[scheduling]\nmax_attempts = 4\n[types.a]\nmax_attempts = 9\n[types.b]"
    )
    assert settings.attempts_for("a") == 9
    assert settings.attempts_for("b") == 4
    assert settings.attempts_for(None) == 4
    assert settings.attempts_for("gone") == 4


@pytest.mark.parametrize(
    "name", ["a.b", "-a", "_a", "a/b", "a b", "é", "a" * 65, "a:b", '""']
)
def test_bad_type_names(name: str) -> None:
    """
    Type names appear in URL paths: only letters, digits, C{_} and C{-},
    starting with a letter or digit, at most 64 characters.
    """
    key = name if name == '""' else f'"{name}"'
    shown = "" if name == '""' else name
    assert error(f"[types.{key}]") == (
        f"[types.{shown}]: bad type name {shown!r}: 1 to 64 letters, digits,"
        " '_' or '-', starting with a letter or digit"
    )


def test_longest_type_name() -> None:
    """
    A 64-character type name is allowed.
    """
    name = "a" * 64
    assert list(parse(f"[types.{name}]").types) == [name]


def test_unknown_result_becomes() -> None:
    """
    C{result_becomes} must name a configured type.
    """
    assert error('[types.a]\nresult_becomes = "zzz"') == (
        "[types.a] result_becomes: no type 'zzz' is configured"
    )


def test_result_becomes_chain() -> None:
    """
    A chain of types without a cycle is accepted.
    """
    settings = parse(
        '[types.a]\nresult_becomes = "b"\n[types.b]\nresult_becomes = "c"\n[types.c]'
    )
    assert settings.types["a"].result_becomes == "b"
    assert settings.types["b"].result_becomes == "c"


@pytest.mark.parametrize(
    "text, message",
    [
        (
            '[types.a]\nresult_becomes = "a"',
            "[types.a] result_becomes: cycle a -> a",
        ),
        (
            '[types.a]\nresult_becomes = "b"\n[types.b]\nresult_becomes = "a"',
            "[types.a] result_becomes: cycle a -> b -> a",
        ),
        (
            '[types.x]\nresult_becomes = "a"\n'
            '[types.a]\nresult_becomes = "b"\n'
            '[types.b]\nresult_becomes = "c"\n'
            '[types.c]\nresult_becomes = "a"',
            "[types.a] result_becomes: cycle a -> b -> c -> a",
        ),
        (
            '[types.b]\nresult_becomes = "b"\n[types.a]\nresult_becomes = "b"',
            "[types.b] result_becomes: cycle b -> b",
        ),
    ],
)
def test_result_becomes_cycles(text: str, message: str) -> None:
    """
    C{result_becomes} links that come back to a type are refused, naming the
    first type of the file on the cycle and the whole cycle; a type leading
    into a cycle without being on it is not blamed.
    """
    assert error(text) == message


# Listen


@pytest.mark.parametrize(
    "endpoint",
    [
        "tcp:8080:interface=127.0.0.1",
        "tcp:0:interface=127.1.2.3",
        "tcp:8080:interface=localhost",
        "tcp:8080:interface=LOCALHOST",
        r"tcp:8080:interface=\:\:1",
        r"tcp6:8080:interface=\:\:1",
        r"tcp:8080:interface=\:\:ffff\:127.0.0.1",
        "tcp:port=8080:interface=127.0.0.1",
        "tcp:8080:backlog=10:interface=127.0.0.1",
        "unix:/run/gridlike.sock",
        "unix:/run/gridlike.sock:mode=600:lockfile=0",
    ],
)
def test_local_listeners_need_no_auth(endpoint: str) -> None:
    """
    Loopback TCP ports (IPv4 or IPv6, escaped colons included) and UNIX
    sockets may serve with no credentials at all.
    """
    text = f"[server]\nlisten = [{toml(endpoint)}]"
    assert parse(text).server.listen == (endpoint,)


EXPOSED = [
    "tcp:8080",
    "tcp:8080:interface=",
    "tcp:8080:interface=0.0.0.0",
    r"tcp:8080:interface=\:\:",
    "tcp6:8080",
    "tcp:8080:interface=192.168.1.10",
    "tcp:8080:interface=gridlike.example",
]


@pytest.mark.parametrize("endpoint", EXPOSED)
def test_exposed_listener_refused(endpoint: str) -> None:
    """
    Serving beyond loopback with no API key, no worker token and no
    C{allow_anonymous} is refused, naming the endpoint.
    """
    assert error(f"[server]\nlisten = [{toml(endpoint)}]") == (
        f"[server] listen: {endpoint!r} serves beyond this machine with no"
        " [auth] api_keys and no worker_token; set them, or"
        " [auth] allow_anonymous = true"
    )


def test_one_exposed_listener_among_local_ones() -> None:
    """
    One exposed listener among loopback ones is enough to refuse.
    """
    message = error(
        "[server]\nlisten = ['unix:/run/g.sock', 'tcp:1:interface=127.0.0.1',"
        " 'tcp:8080']"
    )
    assert message.startswith("[server] listen: 'tcp:8080' serves beyond")


@pytest.mark.parametrize(
    "auth",
    [
        "allow_anonymous = true",
        'api_keys = ["k"]',
        'worker_token = "t"',
        'api_keys = ["k"]\nworker_token = "t"',
    ],
)
@pytest.mark.parametrize("endpoint", EXPOSED)
def test_exposure_allowed_with_auth(endpoint: str, auth: str) -> None:
    """
    An API key, a worker token or C{allow_anonymous} lifts the refusal.
    """
    settings = parse(f"[server]\nlisten = [{toml(endpoint)}]\n[auth]\n{auth}")
    assert settings.server.listen == (endpoint,)


@pytest.mark.parametrize(
    "endpoint, reason",
    [
        ("tcp:http", "invalid literal for int() with base 10: 'http'"),
        ("tcp:99999:interface=127.0.0.1", "port 99999 is out of range"),
        ("tcp:-1:interface=127.0.0.1", "port -1 is out of range"),
        ("nope:8080", "Unknown endpoint type: 'nope'"),
        (
            "tcp:8080:bogus=1",
            "_parseTCP() got an unexpected keyword argument 'bogus'",
        ),
        (
            "unix:/tmp/x:mode=rwx",
            "invalid literal for int() with base 8: 'rwx'",
        ),
    ],
)
def test_bad_endpoints(endpoint: str, reason: str) -> None:
    """
    An endpoint string Twisted cannot listen on is refused, naming it and
    Twisted's reason.
    """
    assert error(f"[server]\nlisten = [{toml(endpoint)}]") == (
        f"[server] listen: bad endpoint {endpoint!r}: {reason}"
    )


def self_signed_pem() -> bytes:
    """
    Make a throwaway self-signed certificate for C{localhost}.

    @return: its private key and certificate, PEM-encoded, in one blob.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ) + certificate.public_bytes(serialization.Encoding.PEM)


def test_ssl_endpoint_loads_certificate(tmp_path: Path) -> None:
    """
    An C{ssl:} endpoint is checked by loading its key and certificate: a
    missing file is refused, a good one accepted; without a loopback
    interface it counts as exposed.
    """
    missing = quoteStringArgument(str(tmp_path / "missing.pem"))
    bad = f"ssl:8443:privateKey={missing}:interface=127.0.0.1"
    assert error(f"[server]\nlisten = [{toml(bad)}]").startswith(
        f"[server] listen: bad endpoint {bad!r}: [Errno 2] No such file"
    )

    pem = tmp_path / "server.pem"
    pem.write_bytes(self_signed_pem())
    key = quoteStringArgument(str(pem))
    good = f"ssl:8443:privateKey={key}:interface=127.0.0.1"
    assert parse(f"[server]\nlisten = [{toml(good)}]").server.listen == (good,)

    exposed = f"ssl:8443:privateKey={key}"
    assert "serves beyond this machine" in error(
        f"[server]\nlisten = [{toml(exposed)}]"
    )
    assert parse(
        f"[server]\nlisten = [{toml(exposed)}]\n[auth]\napi_keys = ['k']"
    ).server.listen == (exposed,)


def test_listen_override() -> None:
    """
    A non-empty C{listen} argument (the C{--listen} option) replaces the
    file's C{[server] listen}, whose endpoints are then not checked.
    """
    settings = parse(
        "[server]\nlisten = ['nope:1']",
        listen=("tcp:9999:interface=127.0.0.1", "unix:/tmp/g.sock"),
    )
    assert settings.server.listen == (
        "tcp:9999:interface=127.0.0.1",
        "unix:/tmp/g.sock",
    )
    assert load_settings(None, ["unix:/tmp/other.sock"]).server.listen == (
        "unix:/tmp/other.sock",
    )
    assert parse("", listen=()).server.listen == ("tcp:8080:interface=127.0.0.1",)


def test_listen_override_is_checked() -> None:
    """
    Endpoints given as the C{listen} argument are validated, and subject to
    the exposure rule, like those of the file.
    """
    assert error("", listen=("tcp:x",)).startswith(
        "[server] listen: bad endpoint 'tcp:x': "
    )
    assert error("", listen=("tcp:8080",)).startswith(
        "[server] listen: 'tcp:8080' serves beyond this machine"
    )
    assert error("", listen=("",)) == (
        "[server] listen: must be a non-empty endpoint string, not ''"
    )
    settings = parse("[auth]\nworker_token = 't'", listen=("tcp:8080",))
    assert settings.server.listen == ("tcp:8080",)


def test_documented_defaults() -> None:
    """
    The whole-file listing at the end of C{docs/configuration.md} loads and
    equals the embedded defaults.
    """
    document = (ETC.parent / "docs" / "configuration.md").read_text()
    block = document.rsplit("```toml\n", 1)[1].split("```", 1)[0]
    assert attrs.evolve(parse(block), source=None) == attrs.evolve(
        parse(""), source=None
    )


def test_redis_registry() -> None:
    """
    C{kind = "redis"} reads the URL (by default the local server's) and the
    instance timeout; the URL may come from a file instead.
    """
    settings = parse_settings("[registry]\nkind = 'redis'\ninstance_timeout = 2.5", BASE)
    assert settings.registry.redis == RedisSettings("redis://127.0.0.1:6379/0", None, 2.5)
    settings = parse_settings("[registry]\nkind = 'redis'\nurl_file = 'redis.url'", BASE)
    assert settings.registry.redis == RedisSettings(None, BASE / "redis.url", 10.0)
    assert parse_settings("", BASE).registry.redis is None
