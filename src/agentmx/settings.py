"""One typed settings schema. Every key has a default and a description.

Read from the environment with the prefix ``AGENTMX_`` (``AGENTMX_HTTP_PORT=9000``),
and overridden by CLI flags. Settings are frozen once built.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Re-exported: they live apart so that code without pydantic (an SMTP front end) may raise them.
from agentmx.config_errors import ConfigError as ConfigError
from agentmx.config_errors import cannot_listen as cannot_listen
from agentmx.config_errors import cannot_open_database as cannot_open_database
from agentmx.event_loops import Choice as LoopChoice
from agentmx.host_port import is_ip_address, split_host_port
from agentmx.smtp.front_settings import IPNetwork, networks_of

# 0 picks a free port (tests) or, for the optional listeners, disables them; past 65535 bind() raised a traceback.
Port = Annotated[int, Field(ge=0, le=65535)]


class Settings(BaseSettings):
    # No NaN or infinity: no timeout, interval or count means either.
    model_config = SettingsConfigDict(env_prefix="AGENTMX_", frozen=True, extra="ignore", allow_inf_nan=False)

    host: str = Field(
        "127.0.0.1",
        description="Address the HTTP API binds to, and the SMTP listeners unless AGENTMX_SMTP_HOST.",
    )
    http_port: Port = Field(8080, description="HTTP API port (REST under /v0, WebSocket at /v0).")
    smtp_port: Port = Field(2525, description="Inbound SMTP port. 0 disables the SMTP listener.")
    smtp_host: str = Field(
        "",
        description="Address the SMTP listeners (inbound and submission) bind to, when not AGENTMX_HOST: "
        "0.0.0.0 takes mail from the world while the HTTP API stays on 127.0.0.1 behind a proxy.",
    )
    http_max_connections: int = Field(
        10000,
        ge=1,
        description="Simultaneous HTTP and WebSocket connections. At the cap, a newcomer from an address with fewer "
        "connections waiting for their request headers or body than the most crowded address closes that address's "
        "longest-waiting one; otherwise the newcomer is closed. Fitted to the open-file limit with "
        "AGENTMX_SMTP_MAX_CONNECTIONS.",
    )
    http_header_timeout: float = Field(
        20.0,
        ge=0,
        description="Seconds a client has, from connecting or from the previous response, to send a request's "
        "headers; slower (slowloris) connections are closed. 0 disables the limit.",
    )
    http_body_min_rate: int = Field(
        500,
        ge=0,
        description="Bytes per second a request body must keep up on average: each AGENTMX_HTTP_HEADER_TIMEOUT "
        "window must bring this many times the timeout in bytes (or the rest of the body), or the connection "
        "is closed. The clock stops while the server is not reading. 0 disables the limit.",
    )
    http_send_timeout: float = Field(
        60.0,
        ge=0,
        description="Seconds a response may wait for a client that stopped reading (writes paused, its receive "
        "window closed) before the connection is reset: a download nobody reads no longer holds its connection, "
        "buffer and file. Reading again starts the wait afresh. 0 disables the limit.",
    )
    data_dir: Path = Field(Path("./data"), description="Folder for the SQLite database and the blob folder.")
    blob_dir: Path | None = Field(
        None,
        description="Folder for raw .eml and attachment bytes bigger than blob_inline_max_bytes (default "
        "<data_dir>/blobs). Processes that share one PostgreSQL database must share this folder too.",
    )
    blob_inline_max_bytes: int = Field(
        65536,
        ge=0,
        description="Raw messages and attachments up to this size are stored in the database, in the "
        "transaction that names them, instead of as files in blob_dir (each file costs two fsyncs). "
        "0 stores every blob as a file.",
    )
    blob_gc_delay: float = Field(
        3600.0,
        gt=0,
        description="Seconds the bytes of deleted mail (raw .eml, attachments, draft attachments) are kept after "
        "their last use before they are deleted, when no message or draft names them any more. It must exceed the "
        "longest transaction: one that stores the same bytes again keeps them.",
    )
    database_url: str = Field(
        "",
        description="SQLAlchemy URL. Empty means SQLite at <data_dir>/agentmx.db. "
        "postgresql://… is accepted and run on asyncpg.",
    )
    database_pool_size: int = Field(
        40,
        ge=1,
        le=1000,
        description="PostgreSQL connections this process keeps open at most (requests beyond it wait for one), "
        "plus one for LISTEN. Processes sharing one database need all of theirs below its max_connections "
        "(100 by default). SQLite: ignored.",
    )
    domain: str = Field("agentmx.localhost", description="Default domain for new inboxes.")
    event_loop: LoopChoice = Field(
        "asyncio",
        description=(
            "Event loop the server runs on: asyncio, uvloop, or auto (uvloop when installed). "
            "asyncio gave a REST p99 at 64 connections 3-5x lower; uvloop gives a WebSocket fan-out p99 "
            "at 1,000 connections on PostgreSQL somewhat lower, with fewer outliers (BENCHMARKS.md)."
        ),
    )
    public_host: str = Field(
        "",
        description="Public host name of this server: MX target in domain records, HELO name, authserv-id.",
    )
    public_url: str = Field(
        "",
        description="Base URL clients use to reach the API (for download links). Empty: the scheme and Host of "
        "each request.",
    )
    smtp_max_message_size: int = Field(
        10 * 1024 * 1024, ge=1, description="Largest inbound message in bytes (552)."
    )
    smtp_workers: Annotated[int, Field(ge=0, le=64)] | Literal["auto"] = Field(
        "auto",
        description="SMTP front-end processes: they serve the SMTP sessions and parse the mail on other cores; "
        "this process still checks each recipient and stores each message before its 250. 0 serves SMTP in "
        "this process. auto: 1 when this process may use 2 or more CPUs (affinity and cgroup quota), else 0. On 2 cores, 1 took "
        "SQLite ingest up by a half or more, and PostgreSQL ingest (the database on the same cores) up by about a "
        "sixth (BENCHMARKS.md).",
    )
    smtp_frontend_loop: LoopChoice = Field(
        "auto",
        description="Event loop of the SMTP front ends (smtp_workers): asyncio, uvloop, or auto (uvloop when "
        "installed). On uvloop a front end spent about a fifth less CPU per message, and ingest went up by about a "
        "tenth (BENCHMARKS.md).",
    )
    smtp_max_connections: int = Field(
        2000,
        ge=1,
        description="Simultaneous inbound SMTP connections (more get 421). At start the server raises its "
        "soft open-file limit as far as this needs (up to the hard limit) and lowers the cap if it still does not fit.",
    )
    smtp_max_connections_per_ip: int = Field(
        50,
        ge=1,
        description="Simultaneous inbound SMTP connections from one client IP, an IPv6 /64 counting as one "
        "(more get 421).",
    )
    smtp_timeout: float = Field(
        300.0,
        gt=0,
        description="Seconds a client may take for each SMTP command (the whole DATA body counts as one) "
        "before the connection is closed.",
    )
    smtp_stress_timeout: float = Field(
        10.0,
        gt=0,
        description="The same limit while more than half of AGENTMX_SMTP_MAX_CONNECTIONS are open (Postfix's "
        "stress mode): idle and byte-dribbling clients are closed with 421 so they cannot hold the listener.",
    )
    smtp_error_limit: int = Field(
        20,
        ge=0,
        description="Permanent error replies (5xx) an SMTP session may get without delivering a message before it "
        "is closed with 421, as Postfix's smtpd_hard_error_limit: bad commands, unknown recipients (address "
        "harvesting), refused mail. 0 disables the limit.",
    )
    smtp_junk_command_limit: int = Field(
        100,
        ge=0,
        description="NOOP, RSET, VRFY and HELP commands (together) an SMTP session may send without delivering a "
        "message before it is closed with 421, as Postfix's smtpd_junk_command_limit. 0 disables the limit.",
    )
    smtp_hop_limit: int = Field(
        50,
        ge=0,
        description="Received fields a message's header may have, the one this server adds included, as "
        "Postfix's hopcount_limit: more is a mail loop (RFC 5321 6.3), refused after DATA with 554 5.4.6 and not "
        "stored. Inbound SMTP and submission. 0 disables the limit.",
    )
    smtp_tls_cert: str = Field(
        "",
        description="PEM certificate chain file (with AGENTMX_SMTP_TLS_KEY) for inbound STARTTLS and for submission. "
        "Empty: the SMTP listener offers no STARTTLS. The files are read again when they change (certificate "
        "renewals need no restart).",
    )
    smtp_tls_key: str = Field("", description="PEM private key file of AGENTMX_SMTP_TLS_CERT.")
    submission_port: Port = Field(
        0,
        description="SMTP submission port (RFC 6409, as AgentMail's 587) for agents sending with any SMTP client: "
        "STARTTLS (AGENTMX_SMTP_TLS_CERT, required) then AUTH PLAIN or LOGIN with the inbox address and an API key "
        "that may send from it. 0 disables it.",
    )
    submissions_port: Port = Field(
        0,
        description="SMTP submission over implicit TLS (RFC 8314, as AgentMail's 465): the same sessions as "
        "AGENTMX_SUBMISSION_PORT, TLS from the first byte. 0 disables it.",
    )
    smtp_relay: str = Field(
        "",
        description="host[:port] (port 25 if none; [IPv6]:port) of a relay for all outbound mail; empty means MX lookup.",
    )
    smtp_relay_username: str = Field("", description="Relay AUTH user name (optional).")
    smtp_relay_password: str = Field("", description="Relay AUTH password (optional).")
    smtp_relay_starttls: bool = Field(False, description="Use STARTTLS with the relay.")
    smtp_relay_tls_verify: bool = Field(
        True,
        description="Check the relay's certificate (the system's CAs and AGENTMX_SMTP_RELAY_CA_FILE) and that it "
        "names the relay's host. false takes any certificate: then a man in the middle can read the relay password.",
    )
    smtp_relay_ca_file: str = Field(
        "", description="PEM file of certificates to trust for the relay besides the system's (a private CA)."
    )
    outbound_port: int = Field(
        25, ge=1, le=65535, description="Port used when delivering to MX hosts (tests point it at a sink)."
    )
    outbound_capture: bool = Field(
        False,
        description="Test mode: mail to remote recipients is not sent. Each is recorded as delivered (label "
        "'delivered', event message.delivered), except local parts that simulate an outcome: bounce… bounces "
        "(and is suppressed), complaint… is delivered and then complained about. Mail between inboxes of this "
        "server is delivered as always.",
    )
    outbound_max_lifetime: float = Field(
        4 * 24 * 3600.0,
        ge=0,
        description="Seconds a temporarily failing outbound message is retried before it bounces.",
    )
    outbound_retry_schedule: str = Field(
        "60,300,900,1800,3600,7200",
        description="Comma-separated seconds between outbound delivery retries (the last repeats).",
    )
    dns_resolver: str = Field(
        "",
        description="IP[:port] (port 53 if none; [IPv6]:port) of the DNS server used for MX and domain checks.",
    )
    dns_timeout: float = Field(
        5.0, gt=0, description="Seconds a DNS lookup for domain verification may take."
    )
    webhook_retry_schedule: str = Field(
        "0,5,300,1800,7200,18000,36000,36000",
        description="Comma-separated seconds before each webhook attempt (Svix schedule).",
    )
    webhook_timeout: float = Field(15.0, gt=0, description="Seconds a webhook receiver has to answer.")
    webhook_allow_private: bool = Field(
        False, description="Allow webhook URLs that resolve to loopback, private or link-local addresses."
    )
    attachment_url_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds the URL attachments of one message may take to download, all of them together "
        "(lookups, connections, redirects and bytes): a server that sends slowly or never ends is refused.",
    )
    attachment_url_allow_private: bool = Field(
        False,
        description="Allow send attachment URLs that resolve to loopback, private or link-local addresses.",
    )
    event_poll_interval: float = Field(
        0.5,
        gt=0,
        description="Seconds between event log polls for live WebSocket streams (commits also wake them).",
    )
    ws_ping_interval: float = Field(
        20.0,
        gt=0,
        description="Seconds between keepalive pings on an idle WebSocket stream; a client that has not "
        "answered one within as long again is disconnected, also when it stopped reading (its unsent events "
        "are dropped).",
    )
    event_retention_days: float = Field(
        0,
        ge=0,
        description="Days the event log and webhook attempt records are kept (WebSocket resume, polling "
        "reads and metrics read them); 0 keeps them forever. The newest event always stays, so the log's "
        "positions never start again below a saved cursor.",
    )
    domain_check_interval: float = Field(600.0, gt=0, description="Seconds between automatic DNS re-checks.")
    job_poll_interval: float = Field(
        0.5, gt=0, description="Seconds between job runner polls of the database."
    )
    job_lease: float = Field(
        300.0,
        gt=0,
        description="Seconds a claimed job (an outbound delivery, a webhook attempt) stays claimed without word "
        "from its process. The process renews the claim every third of that while the job runs, so only the "
        "jobs of a process that died (or stopped for longer than this) are run again elsewhere; one stopped with "
        "SIGTERM hands its unfinished jobs back at once.",
    )
    cache_ttl: float = Field(
        2.0,
        ge=0,
        description="Seconds a process may answer from its in-memory caches of API keys, recipient inboxes and "
        "allow/block list lookups. A change applies at once in the process that made it and, on PostgreSQL, in "
        "the others too (NOTIFY); this bounds how long another process may miss it while its LISTEN connection "
        "is down.",
    )
    rate_limit_per_minute: int = Field(0, ge=0, description="Requests per API key per minute; 0 disables.")
    inbox_send_limit_per_hour: int = Field(
        0,
        ge=0,
        description="Messages an inbox may send in a rolling hour (API send, reply, forward, drafts, scheduled "
        "drafts, SMTP submission), counted from the database: a runaway agent loop stops there. Over it the API "
        "answers 429 rate_limit_exceeded with Retry-After, submission 451 4.7.1, and a scheduled draft waits for "
        "room. 0 disables.",
    )
    download_url_ttl: int = Field(
        3600, gt=0, description="Seconds a signed attachment or raw-message download_url stays valid."
    )
    inbound_sender_checks: bool = Field(
        True,
        description="Check SPF, DKIM and DMARC (RFC 7208, 6376, 7489) of mail from SMTP clients outside "
        "AGENTMX_SMTP_TRUSTED_NETWORKS and record the outcome in an Authentication-Results field at the top "
        "of the stored message. Needs DNS (AGENTMX_DNS_RESOLVER or the system's).",
    )
    inbound_dmarc_policy: Literal["label", "reject", "ignore"] = Field(
        "label",
        description="Checked mail that fails DMARC when its domain asks for quarantine or reject: label gives it "
        "the 'spam' label (hidden from lists, event message.received.spam); reject refuses it with 550 5.7.1 when "
        "the domain asks for reject (and labels the quarantine kind); ignore only records the result.",
    )
    inbound_dnsbl: str = Field(
        "",
        description="Comma-separated DNS blocklist zones (RFC 5782, such as zen.spamhaus.org): checked mail from a "
        "listed client address is labelled 'spam'. Most lists refuse queries from public resolvers: use your own.",
    )
    smtp_trusted_networks: str = Field(
        "127.0.0.0/8,::1/128",
        description="Comma-separated networks (CIDR) of SMTP clients whose mail is not checked: this host, a "
        "relay or filter in front of agentmx. Empty: every client is checked.",
    )
    inbound_label_unauthenticated: bool = Field(
        False,
        description="Label inbound SMTP mail 'unauthenticated' (hidden from lists by default) when its From "
        "domain is not authenticated: no SPF or DKIM pass aligned with it (the DMARC test, whatever the "
        "domain publishes). Mail that was not checked (trusted networks, checks off) is labelled when it has "
        "no DKIM-Signature, Authentication-Results or Received-SPF header.",
    )
    secret_key: str = Field(
        "",
        description="Key for signing download URLs and encrypting DKIM keys; if empty, one is generated once and kept in the database (shared by every process).",
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info",
        description="Log level: debug, info, warning, error, critical. SMTP session transcripts (every command line, "
        "envelope addresses included: aiosmtpd's mail.log) are logged at debug only.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: object) -> object:
        return (
            value.lower() if isinstance(value, str) else value
        )  # INFO worked before the choices were checked

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        # Any other scheme, or a URL SQLAlchemy cannot parse, stopped every command with a traceback.
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        url = normalize_database_url(value)
        try:
            parsed = url.startswith(SUPPORTED_DATABASES) and make_url(url) is not None
        except (ArgumentError, ValueError):
            parsed = False
        if value and not parsed:
            raise ValueError("must be sqlite:///PATH or postgresql://USER@HOST/DATABASE")
        return value

    @field_validator("webhook_retry_schedule", "outbound_retry_schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        # Read when mail arrives or is sent: a bad one refused every message (451) instead of the start.
        try:
            delays = parse_schedule(value)
        except ValueError:
            delays = [-1.0]
        if not all(0 <= delay <= MAX_RETRY_DELAY for delay in delays):
            raise ValueError(f"must be comma-separated seconds from 0 to {MAX_RETRY_DELAY:.0f}")
        return value

    @field_validator("smtp_relay", "dns_resolver")
    @classmethod
    def _host_port(cls, value: str, info: ValidationInfo) -> str:
        # Read at the first delivery or lookup: a bad one failed every message there instead of the start.
        # Blank is empty, unset (MX lookup, the system's resolver): kept as "  ", it read as set, and
        # then every lookup failed (a 500) or the start stopped naming no variable.
        value = value.strip()
        if value:
            host, _ = split_host_port(value, 1)
            if info.field_name == "dns_resolver" and not is_ip_address(host):
                # dnspython takes a nameserver's address only: a name raised at every lookup (a 500).
                raise ValueError(f"{host!r} is not an IP address (as in 127.0.0.1:53 or [::1]:53)")
        return value

    @field_validator("smtp_trusted_networks")
    @classmethod
    def _networks(cls, value: str) -> str:
        for item in filter(None, (part.strip() for part in value.split(","))):
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not a network such as 192.0.2.0/24 or 2001:db8::/32") from None
        return value

    @functools.cached_property
    def trusted_networks(self) -> tuple[IPNetwork, ...]:
        return networks_of(self.smtp_trusted_networks)

    @model_validator(mode="after")
    def _tls_settings(self) -> Settings:
        if bool(self.smtp_tls_cert) != bool(self.smtp_tls_key):
            raise ValueError("AGENTMX_SMTP_TLS_CERT and AGENTMX_SMTP_TLS_KEY must be set together")
        relay_host = split_host_port(self.smtp_relay, 25)[0] if self.smtp_relay else ""
        if self.smtp_relay_username and not self.smtp_relay_starttls and not _loopback(relay_host):
            raise ValueError(
                "AGENTMX_SMTP_RELAY_USERNAME needs AGENTMX_SMTP_RELAY_STARTTLS=true: "
                "the relay password must not cross the network in plain text"
            )
        for name in ("submission_port", "submissions_port"):
            if getattr(self, name) and not self.smtp_tls:  # API keys travel in AUTH: never in plain text
                raise ValueError(
                    f"AGENTMX_{name.upper()} needs AGENTMX_SMTP_TLS_CERT and AGENTMX_SMTP_TLS_KEY"
                )
        return self

    @property
    def effective_smtp_host(self) -> str:
        return self.smtp_host or self.host

    @property
    def smtp_tls(self) -> bool:
        return bool(self.smtp_tls_cert)

    @property
    def effective_database_url(self) -> str:
        return normalize_database_url(self.database_url or f"sqlite:///{self.data_dir / 'agentmx.db'}")

    @property
    def effective_blob_dir(self) -> Path:
        return (self.blob_dir or self.data_dir / "blobs").expanduser().resolve()

    @property
    def effective_smtp_workers(self) -> int:
        if self.smtp_workers != "auto":
            return self.smtp_workers
        return 1 if usable_cpus() >= 2 else 0

    @property
    def hostname(self) -> str:
        return self.public_host or self.domain


def _loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (docker --cpus)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_cpu_quota()
    return count if quota is None else min(count, max(1, math.ceil(quota)))


def _cgroup_cpu_quota() -> float | None:
    """CPUs' worth of time per period under the cgroup's quota (v2 cpu.max, else v1 cfs files); None if unlimited."""
    cgroup = Path("/sys/fs/cgroup")
    try:
        if (cgroup / "cpu.max").exists():
            quota, period = (cgroup / "cpu.max").read_text().split()
        else:
            quota = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1"):
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):  # no cgroup files here, or not in the format expected
        return None


MAX_RETRY_DELAY = 366 * 24 * 3600.0  # seconds; a year: longer is a typo (and past timedelta's range)

SUPPORTED_DATABASES = ("sqlite+aiosqlite://", "postgresql+asyncpg://")


def normalize_database_url(url: str) -> str:
    """Plain postgresql:// and sqlite:/// URLs run on the async drivers agentmx ships with."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    return url


def parse_schedule(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]
