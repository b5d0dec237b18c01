"""The command line. This interface is relied on by users and scripts: keep it stable.

agentmx serve [--host H] [--http-port P] [--smtp-port S] [--data-dir D] [--database-url URL] [--domain D]
              [--smtp-relay HOST:PORT]
agentmx keys create [--name N] [--pod POD_ID] [--inbox INBOX_ID] [--data-dir D | --database-url URL]
agentmx db upgrade [--data-dir D | --database-url URL]
agentmx suppressions remove ADDRESS [--data-dir D | --database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, NoReturn

from pydantic import ValidationError

from agentmx import __version__, log_setup
from agentmx.settings import ConfigError, Settings, cannot_open_database


def _storage_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="data folder (default ./data, or AGENTMX_DATA_DIR)")
    parser.add_argument("--database-url", help="database URL (default SQLite in the data folder)")


class _Parser(argparse.ArgumentParser):
    """A bad command line is one line on stderr and exit status 2 (the usage is for --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _text(value: str) -> str:
    # Bytes that are not UTF-8 arrive as lone surrogates, which no database stores (a traceback).
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("must be UTF-8 text") from None
    return value


def _key_name(value: str) -> str:
    # The API's rule for key names; a longer one broke the insert on PostgreSQL (a traceback).
    if not 1 <= len(value) <= 256:
        raise argparse.ArgumentTypeError("a key name must be 1-256 characters")
    return _text(value)


def _scope_id(value: str) -> str:
    # An empty id (``--pod "$POD"`` with POD unset) made an organization key: more than was asked for.
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return _text(value)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="agentmx", description="Self-hosted email for AI agents.")
    parser.add_argument("--version", action="version", version=f"agentmx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the HTTP API, SMTP listener and job runner")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--http-port", type=int, help="HTTP port (default 8080)")
    serve.add_argument("--smtp-port", type=int, help="SMTP port (default 2525; 0 disables)")
    serve.add_argument("--domain", help="default inbox domain (default agentmx.localhost)")
    serve.add_argument("--smtp-relay", help="host:port of an outbound relay (default: deliver to MX)")
    _storage_args(serve)

    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    create = keys_sub.add_parser("create", help="create an API key and print its secret")
    create.add_argument("--name", type=_key_name, default="cli", help="a name for the key (1-256 characters)")
    create.add_argument("--pod", type=_scope_id, help="scope the key to this pod id")
    create.add_argument(
        "--inbox", type=_scope_id, help="scope the key to this inbox id (its address; in --pod if given)"
    )
    _storage_args(create)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    _storage_args(db_sub.add_parser("upgrade", help="apply migrations"))

    suppressions = sub.add_parser("suppressions", help="addresses blocked after a bounce or complaint")
    suppressions_sub = suppressions.add_subparsers(
        dest="suppressions_command", required=True, metavar="COMMAND"
    )
    remove = suppressions_sub.add_parser(
        "remove", help="lift the block of an address (the API may not: its entries are read-only)"
    )
    remove.add_argument("address", type=_text, help="the blocked address or domain")
    _storage_args(remove)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for name in ("host", "http_port", "smtp_port", "data_dir", "database_url", "domain", "smtp_relay"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    return Settings(**overrides)


async def _create_key(settings: Settings, name: str, pod: str | None, inbox: str | None) -> str:
    from agentmx.db.engine import Database
    from agentmx.errors import NotFound
    from agentmx.services import keys
    from agentmx.services.caller import Caller
    from agentmx.services.inboxes import get_inbox
    from agentmx.services.pods import get_pod

    db = Database(settings.effective_database_url)
    try:
        async with db.transaction() as s:
            org = await keys.ensure_organization(s)
            root = Caller(organization_id=org.id)
            if inbox:  # pinned: the key must not outlive an inbox or pod being deleted now
                row = await get_inbox(s, root, inbox, pod_id=pod, lock="pin")
                inbox, pod = row.id, row.pod_id
            elif pod:
                await get_pod(s, root, pod, lock="pin")
            _, secret = await keys.issue_key(s, organization_id=org.id, name=name, pod_id=pod, inbox_id=inbox)
        return secret
    except NotFound as exc:
        raise SystemExit(f"agentmx: {exc.message}") from exc
    finally:
        await db.dispose()


def _prepare(settings: Settings) -> None:
    """Create the data folder and migrate; a server down or unknown, a folder we may not write are
    the operator's to fix: one line (ConfigError), not a traceback."""
    from sqlalchemy.exc import DBAPIError

    from agentmx.db.prepare import prepare

    try:
        prepare(settings)
    except (DBAPIError, OSError) as exc:  # OSError: refused or unresolvable (asyncpg), mkdir denied
        raise cannot_open_database(exc) from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except ValidationError as exc:
        named: set[str] = set()
        for error in exc.errors():
            # A union (AGENTMX_SMTP_WORKERS: a number or auto) reports each member as loc[1]: one line per setting.
            name = str(error["loc"][0]) if error["loc"] else ""
            if name in named:
                continue
            named.add(name)
            where = f"AGENTMX_{name.upper()}: " if name else ""
            message = error["msg"].removeprefix("Value error, ")  # a validator's own words
            print(f"agentmx: invalid setting {where}{message}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"agentmx: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    log_setup.configure(settings.log_level)
    if args.command == "serve":
        from agentmx import serve_lock

        # Before the migrations: an upgrade must not change the schema under a running server.
        serve_lock.hold(settings.effective_database_url)
    _prepare(settings)
    if args.command == "serve":
        from agentmx import server

        try:
            with asyncio.Runner(loop_factory=server.loop_factory(settings)) as runner:
                runner.run(server.run(settings))
        except KeyboardInterrupt:
            pass
        return 0
    if args.command == "keys":
        secret = asyncio.run(_create_key(settings, args.name, args.pod, args.inbox))
        print(
            f"API key ({'inbox ' + args.inbox if args.inbox else 'pod ' + args.pod if args.pod else 'organization'} scope):",
            file=sys.stderr,
        )
        print(secret)
        return 0
    if args.command == "db":
        print("database is up to date", file=sys.stderr)
        return 0
    if args.command == "suppressions":
        if asyncio.run(_remove_suppression(settings, args.address)):
            print(f"{args.address} may be sent to again", file=sys.stderr)
            return 0
        print(f"agentmx: {args.address} is not suppressed", file=sys.stderr)
        return 1
    return 2


async def _remove_suppression(settings: Settings, address: str) -> bool:
    from agentmx.db.engine import Database
    from agentmx.services import keys, lists

    db = Database(settings.effective_database_url)
    try:
        async with db.transaction() as s:
            org = await keys.ensure_organization(s)
            return await lists.remove_suppression(s, org.id, address)
    finally:
        await db.dispose()
