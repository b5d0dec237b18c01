"""The command line's maintenance commands: they set up storage without loading the HTTP server."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from agentmx.settings import normalize_database_url
from agentmx.testing.server import ServerProcess
from conftest import Harness, run_agentmx

# Runs a command in-process and prints which of the server's modules it loaded.
_PROBE = """
import sys
from agentmx.cli import main
code = main(sys.argv[1:])
print(sorted(m for m in ("agentmx.server", "agentmx.http.app", "uvicorn") if m in sys.modules))
raise SystemExit(code)
"""


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, check=True, timeout=120
    )


def test_db_upgrade_builds_the_schema_without_the_http_app(tmp_path: Path) -> None:
    out = _run("db", "upgrade", "--data-dir", str(tmp_path / "d"))
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert "database is up to date" in out.stderr
    with sqlite3.connect(tmp_path / "d" / "agentmx.db") as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"inboxes", "messages", "api_keys", "alembic_version"} <= tables


def test_keys_create_prints_a_key_without_the_http_app(tmp_path: Path) -> None:
    out = _run("keys", "create", "--name", "script", "--data-dir", str(tmp_path / "d"))
    secret, loaded = out.stdout.strip().splitlines()
    assert secret.startswith("am_") and len(secret) > 20
    assert loaded == "[]"
    assert "organization scope" in out.stderr


def test_an_invalid_setting_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    out = run_agentmx("keys", "create", "--data-dir", str(tmp_path / "d"), env={"AGENTMX_HTTP_PORT": "abc"})
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.startswith(
        "agentmx: invalid setting AGENTMX_HTTP_PORT: Input should be a valid integer"
    )
    assert len(out.stderr.strip().splitlines()) == 1


def test_a_log_level_is_read_in_any_case(tmp_path: Path) -> None:
    out = run_agentmx(
        "db", "upgrade", "--data-dir", str(tmp_path / "d"), env={"AGENTMX_LOG_LEVEL": "WARNING"}
    )
    assert out.returncode == 0 and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"AGENTMX_SMTP_RELAY": "smtp.example.com:587", "AGENTMX_SMTP_RELAY_USERNAME": "u"},
            "AGENTMX_SMTP_RELAY_USERNAME needs AGENTMX_SMTP_RELAY_STARTTLS=true",
        ),
        ({"AGENTMX_SMTP_TRUSTED_NETWORKS": "10.0.0.0/8,bogus"}, "'bogus' is not a network"),
        # Read only when mail arrived or was sent: each message was refused (451) instead.
        (
            {"AGENTMX_WEBHOOK_RETRY_SCHEDULE": "0,5,abc"},
            "AGENTMX_WEBHOOK_RETRY_SCHEDULE: must be comma-separated seconds",
        ),
        (
            {"AGENTMX_OUTBOUND_RETRY_SCHEDULE": "60,inf"},
            "AGENTMX_OUTBOUND_RETRY_SCHEDULE: must be comma-separated seconds",
        ),
        # Read at the first delivery or lookup: every message failed there instead.
        ({"AGENTMX_SMTP_RELAY": "relay.example:smtp"}, "AGENTMX_SMTP_RELAY: port 'smtp' is not 1-65535"),
        ({"AGENTMX_DNS_RESOLVER": "[::1"}, "AGENTMX_DNS_RESOLVER: must be host, host:port"),
        # Two colons without brackets is an IPv6 address or nothing: a doubled port was taken as a host name.
        ({"AGENTMX_SMTP_RELAY": "127.0.0.1:25:25"}, "AGENTMX_SMTP_RELAY: must be host, host:port"),
        ({"AGENTMX_DNS_RESOLVER": "dns.example:53:53"}, "AGENTMX_DNS_RESOLVER: must be host, host:port"),
        # A name, not an address: serve started, then POST /v0/domains was a 500 and every delivery a traceback.
        ({"AGENTMX_DNS_RESOLVER": "localhost:53"}, "AGENTMX_DNS_RESOLVER: 'localhost' is not an IP address"),
        # These three ended serve (or every command) with a traceback and exit status 1.
        ({"AGENTMX_LOG_LEVEL": "verbose"}, "AGENTMX_LOG_LEVEL: Input should be 'debug'"),
        ({"AGENTMX_HTTP_PORT": "70000"}, "AGENTMX_HTTP_PORT: Input should be less than or equal to 65535"),
        ({"AGENTMX_SMTP_PORT": "-1"}, "AGENTMX_SMTP_PORT: Input should be greater than or equal to 0"),
        # A union: each member's error named a variable of its own (AGENTMX_SMTP_WORKERS_CONSTRAINED-INT).
        ({"AGENTMX_SMTP_WORKERS": "-1"}, "AGENTMX_SMTP_WORKERS: Input should be greater than or equal to 0"),
    ],
)
def test_settings_that_would_be_unsafe_or_unreadable_stop_the_command(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    out = run_agentmx("keys", "create", "--data-dir", str(tmp_path / "d"), env=env)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


# Once each, not after every case above: the same three commands whatever setting was refused
# (each a new interpreter and a migration, 39 of them in all).
@pytest.mark.parametrize("relay", ["127.0.0.1:25", "[::1]:2525", "::1"])
def test_a_relay_login_without_starttls_is_allowed_on_loopback(tmp_path: Path, relay: str) -> None:
    local = {"AGENTMX_SMTP_RELAY": relay, "AGENTMX_SMTP_RELAY_USERNAME": "u"}  # loopback: no network
    assert run_agentmx("keys", "create", "--data-dir", str(tmp_path / "d"), env=local).returncode == 0


def test_blank_relay_and_resolver_mean_unset(fresh_server: Callable[..., ServerProcess]) -> None:
    # "  " read as set: a blank relay stopped serve naming no variable, a blank resolver made every
    # lookup fail (POST /v0/domains was a 500). Blank is empty: MX lookup and the system's resolver.
    blank = {"AGENTMX_SMTP_RELAY": "  ", "AGENTMX_DNS_RESOLVER": " ", "AGENTMX_DNS_TIMEOUT": "1"}
    server = fresh_server(env=blank).start()
    headers = {"Authorization": f"Bearer {server.create_key()}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=30) as http:
        created = http.post("/v0/domains", json={"domain": f"blank-{secrets.token_hex(4)}.example.com"})
    assert created.status_code == 200, created.text


def test_keys_created_at_once_on_a_new_database_share_one_organization(empty_database: str) -> None:
    """Setup scripts that create keys in parallel: every key must reach the same inboxes.

    The commands' transactions, interleaved as two processes' would be: each looks for the
    organization before either has made one.
    """
    from agentmx.db.engine import Database
    from agentmx.services import keys

    assert run_agentmx("db", "upgrade", env={"AGENTMX_DATABASE_URL": empty_database}).returncode == 0

    async def create_keys() -> set[str]:
        db = Database(normalize_database_url(empty_database))

        async def create(name: str) -> str:
            async with db.transaction() as s:
                org = await keys.ensure_organization(s)
                await keys.issue_key(s, organization_id=org.id, name=name)
                return org.id

        try:
            return set(await asyncio.gather(*(create(f"k{i}") for i in range(4))))
        finally:
            await db.dispose()

    assert len(asyncio.run(create_keys())) == 1
    assert _organizations(empty_database) == 1


def _organizations(url: str) -> int:
    async def count() -> int:
        engine = create_async_engine(normalize_database_url(url))
        try:
            async with engine.connect() as conn:
                return int((await conn.execute(text("SELECT count(*) FROM organizations"))).scalar_one())
        finally:
            await engine.dispose()

    return asyncio.run(count())


@pytest.mark.parametrize("name", ["", "x" * 257])
def test_keys_create_refuses_a_name_the_api_would(tmp_path: Path, name: str) -> None:
    """Key names are 1-256 characters, as through the API: an empty one was stored, a longer one was
    stored on SQLite and a traceback on PostgreSQL."""
    out = run_agentmx("keys", "create", "--name", name, "--data-dir", str(tmp_path / "d"), env={})
    assert out.returncode == 2
    assert "--name" in out.stderr and "1-256 characters" in out.stderr
    assert "am_" not in out.stdout
    longest = run_agentmx("keys", "create", "--name", "x" * 256, "--data-dir", str(tmp_path / "d"), env={})
    assert longest.returncode == 0 and longest.stdout.strip().startswith("am_")


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["keys", "create", "--pod", ""], "--pod"),  # was an organization key: more than asked for
        (["keys", "create", "--inbox", " "], "--inbox"),
        (["keys", "create", "--name", "bad\udcffname"], "--name"),  # not UTF-8: a traceback on PostgreSQL
        (["keys", "create", "--pod", "\udcff"], "--pod"),
        (["keys", "create", "--bogus"], "--bogus"),
        (["keys"], "COMMAND"),
        (["serve", "--http-port", "abc"], "--http-port"),
        (["suppressions", "remove", "\udcff"], "address"),
    ],
)
def test_a_bad_command_line_is_one_line_and_exit_2(empty_database: str, args: list[str], named: str) -> None:
    out = run_agentmx(*args, env={"AGENTMX_DATABASE_URL": empty_database})
    assert out.returncode == 2, out.stderr
    assert named in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert out.stdout == ""


def test_keys_create_with_pod_and_inbox_needs_the_inbox_in_that_pod(harness: Harness) -> None:
    """--inbox won and --pod was ignored: naming a pod the inbox is not in gave a key anyway."""
    admin = harness.client()
    pod = admin.pods.create(name="cli-" + harness.new_username()).pod_id
    inbox = admin.pods.inboxes.create(pod, username=harness.new_username()).inbox_id
    elsewhere = admin.pods.create(name="cli-" + harness.new_username()).pod_id
    server = harness.server
    env = {"AGENTMX_DATA_DIR": str(server.data_dir)}
    if server.database_url:
        env["AGENTMX_DATABASE_URL"] = server.database_url
    refused = run_agentmx("keys", "create", "--pod", elsewhere, "--inbox", inbox, env=env)
    assert refused.returncode == 1 and refused.stderr.strip() == "agentmx: Inbox not found", refused.stderr
    assert "am_" not in refused.stdout
    made = run_agentmx("keys", "create", "--pod", pod, "--inbox", inbox, env=env)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip().splitlines()[-1]
    assert [i.inbox_id for i in harness.client(api_key=key).inboxes.list().inboxes] == [inbox]


def test_serve_refuses_counts_and_timeouts_that_make_no_sense(tmp_path: Path) -> None:
    # Each started a server: no HTTP connection admitted at 0, slowloris and SMTP deadlines that fired at once.
    bad = {
        "AGENTMX_HTTP_MAX_CONNECTIONS": "0",
        "AGENTMX_HTTP_HEADER_TIMEOUT": "-1",
        "AGENTMX_SMTP_MAX_CONNECTIONS": "-5",
        "AGENTMX_SMTP_TIMEOUT": "0",
        "AGENTMX_WEBHOOK_TIMEOUT": "-2",
        "AGENTMX_DNS_TIMEOUT": "nan",
        "AGENTMX_JOB_POLL_INTERVAL": "0",
        "AGENTMX_DATABASE_POOL_SIZE": "0",
    }
    out = run_agentmx(
        "serve", "--data-dir", str(tmp_path / "d"), "--http-port", "0", "--smtp-port", "0", env=bad
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == len(bad)
    for name in bad:
        assert sum(line.startswith(f"agentmx: invalid setting {name}: ") for line in lines) == 1
