"""Custom domains through the official SDK, verified against a real DNS server on loopback."""

from __future__ import annotations

import asyncio
import secrets
import smtplib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dkim
import dns.rdatatype
import dns.resolver
import dns.zone
import httpx
import pytest
from agentmail import AgentMail
from agentmail.core.api_error import ApiError
from agentmail.environment import AgentMailEnvironment
from agentmail.errors import NotFoundError, UnprocessableError
from aiosmtpd.controller import Controller
from sqlalchemy import select

from agentmx.db.engine import Database
from agentmx.db.models import Event
from agentmx.settings import normalize_database_url
from agentmx.testing import postgres
from agentmx.testing.certs import unverified_client_context, write_self_signed
from agentmx.testing.dns import LoopbackDNS
from agentmx.testing.server import ServerProcess, free_port
from conftest import BACKENDS, NO_RETRY, make_server
from events_support import Receiver
from events_support import verify as verify_signature

MAIL_HOST = "mx.agentmx.test"


class DomainEnv:
    """A private agentmx whose DNS checks go to our loopback DNS server."""

    def __init__(self, server: ServerProcess, dns_server: LoopbackDNS, database_url: str) -> None:
        self.server = server
        self.dns = dns_server
        self.database_url = database_url
        self.api_key = server.create_key()

    def client(self, api_key: str | None = None) -> AgentMail:
        env = AgentMailEnvironment(http=self.server.base_url, websockets=self.server.ws_url)
        return AgentMail(api_key=api_key or self.api_key, environment=env)

    relay: RelaySink

    def zone(self, domain_id: str, client: AgentMail | None = None) -> str:
        return b"".join((client or self.client()).domains.get_zone_file(domain_id)).decode()

    def events(self, event_type: str) -> list[dict[str, Any]]:
        async def run() -> list[dict[str, Any]]:
            db = Database(normalize_database_url(self.database_url))
            try:
                async with db.read() as s:
                    rows = await s.scalars(select(Event).where(Event.event_type == event_type))
                    return [r.body for r in rows]
            finally:
                await db.dispose()

        return asyncio.run(run())


@pytest.fixture(scope="module")
def dns_server() -> Iterator[LoopbackDNS]:
    with LoopbackDNS() as server:
        yield server


class RelaySink:
    """The outbound relay: an aiosmtpd server that keeps every message it is given."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append((list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"

    def wait_for(self, rcpt: str, timeout: float = 20.0) -> bytes:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for rcpts, raw in self.messages:
                if rcpt in rcpts:
                    return raw
            time.sleep(0.1)
        raise AssertionError(f"nothing relayed to {rcpt}")


@pytest.fixture(scope="module")
def relay() -> Iterator[RelaySink]:
    sink = RelaySink()
    sink.controller.start()
    yield sink
    sink.controller.stop()


@pytest.fixture(scope="module", params=BACKENDS)
def env(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    dns_server: LoopbackDNS,
    relay: RelaySink,
) -> Iterator[DomainEnv]:
    tmp: Path = tmp_path_factory.mktemp(f"domains-{request.param}")
    write_self_signed(tmp)  # for SMTP submission
    server, url = make_server(
        tmp,
        request.param,
        env={
            "AGENTMX_DNS_RESOLVER": dns_server.address,
            "AGENTMX_PUBLIC_HOST": MAIL_HOST,
            "AGENTMX_DNS_TIMEOUT": "2",
            "AGENTMX_SMTP_RELAY": f"127.0.0.1:{relay.port}",
            "AGENTMX_SMTP_TLS_CERT": str(tmp / "cert.pem"),
            "AGENTMX_SMTP_TLS_KEY": str(tmp / "key.pem"),
            "AGENTMX_SUBMISSION_PORT": str(free_port()),
        },
    )
    server.start()
    try:
        domain_env = DomainEnv(server, dns_server, url or f"sqlite:///{tmp / 'agentmx.db'}")
        domain_env.relay = relay
        yield domain_env
    finally:
        server.stop()
        if url:
            postgres.drop_database(url)


def new_domain() -> str:
    return f"d{secrets.token_hex(5)}.example.test"


def verify_with_zone(env: DomainEnv, client: AgentMail, domain_id: str, zone: str) -> Any:
    env.dns.set_zone(zone)
    client.domains.verify(domain_id)
    return client.domains.get(domain_id)


def by_purpose(domain: Any) -> dict[str, Any]:
    """Records keyed by what they are for."""
    out: dict[str, Any] = {}
    for r in domain.records:
        if r.type == "TXT":
            key = "dkim" if "._domainkey." in r.name else "dmarc" if r.name.startswith("_dmarc.") else "spf"
        elif r.type == "MX":
            key = "wildcard_mx" if r.name.startswith("*.") else "mx"
        else:
            key = "tracking"
        out[key] = r
    return out


def test_create_lists_records_and_zone_file(env: DomainEnv) -> None:
    client = env.client()
    name = new_domain()
    created = client.domains.create(domain=name, subdomains_enabled=True, tracking_enabled=True)
    assert created.domain == name and created.domain_id
    assert created.status == "NOT_STARTED"
    assert created.feedback_enabled is True and created.inbound_enabled is True
    assert created.subdomains_enabled is True and created.tracking_enabled is True
    records = by_purpose(created)
    assert set(records) == {"spf", "dkim", "dmarc", "mx", "wildcard_mx", "tracking"}
    assert records["spf"].name == name and records["spf"].value.startswith("v=spf1 ")
    assert MAIL_HOST in records["spf"].value
    assert records["dkim"].name.endswith(f"._domainkey.{name}")
    assert records["dkim"].value.startswith("v=DKIM1; k=rsa; p=MII")
    assert records["dmarc"].name == f"_dmarc.{name}" and records["dmarc"].value.startswith("v=DMARC1;")
    assert (records["mx"].name, records["mx"].value, records["mx"].priority) == (name, MAIL_HOST, 10)
    assert (records["wildcard_mx"].name, records["wildcard_mx"].value) == (f"*.{name}", MAIL_HOST)
    assert (records["tracking"].name, records["tracking"].value) == (f"link.{name}", MAIL_HOST)
    assert all(r.status == "MISSING" for r in created.records)
    assert "private" not in created.json().lower()

    # The zone file holds every record and parses with standard tooling.
    text = env.zone(created.domain_id)
    zone = dns.zone.from_text(text, check_origin=False)
    found = set()
    for rname, node in zone.nodes.items():
        fqdn = rname.derelativize(zone.origin).to_text().rstrip(".")
        for rdataset in node.rdatasets:
            for rdata in rdataset:
                if rdataset.rdtype == dns.rdatatype.TXT:
                    value = b"".join(rdata.strings).decode()
                elif rdataset.rdtype == dns.rdatatype.MX:
                    value = rdata.exchange.to_text().rstrip(".")
                else:
                    value = rdata.target.to_text().rstrip(".")
                found.add((dns.rdatatype.to_text(rdataset.rdtype), fqdn, value))
    assert found == {(r.type, r.name, r.value) for r in created.records}

    # Get by id and by name; list items carry no records; idempotent create via client_id.
    assert client.domains.get(name).domain_id == created.domain_id
    listed = client.domains.list(limit=100).domains
    item = next(d for d in listed if d.domain_id == created.domain_id)
    assert item.domain == name and getattr(item, "records", None) is None
    org = client.organizations.get()
    assert org.domain_count >= 1


def test_verification_pending_invalid_verified(env: DomainEnv) -> None:
    client = env.client()
    name = new_domain()
    created = client.domains.create(domain=name)
    good = env.zone(created.domain_id)

    # Nothing published yet: PENDING, every record MISSING.
    pending = verify_with_zone(env, client, created.domain_id, "")
    assert pending.status == "PENDING" and pending.reason == "dns_records_missing"
    assert {r.status for r in pending.records} == {"MISSING"}

    # One record wrong (another DKIM key at the selector): INVALID with the reason on that record.
    wrong = good.replace("p=MII", "p=AII")
    invalid = verify_with_zone(env, client, created.domain_id, wrong)
    assert invalid.status == "INVALID" and invalid.reason == "dns_records_invalid"
    records = by_purpose(invalid)
    assert records["dkim"].status == "INVALID" and records["dkim"].reason == "value_mismatch"
    assert all(r.status == "VALID" for k, r in records.items() if k != "dkim")

    # Two SPF records at the apex: duplicate_records.
    spf_line = next(line for line in good.splitlines() if "v=spf1" in line)
    doubled = good + spf_line.replace("~all", "-all") + "\n"
    dup = by_purpose(verify_with_zone(env, client, created.domain_id, doubled))
    assert dup["spf"].status == "INVALID" and dup["spf"].reason == "duplicate_records"

    assert env.events("domain.verified") == [] or all(
        e["domain"]["domain_id"] != created.domain_id for e in env.events("domain.verified")
    )
    # The zone agentmx produced, served as is: VERIFIED, and domain.verified fires once.
    verified = verify_with_zone(env, client, created.domain_id, good)
    assert verified.status == "VERIFIED" and verified.reason is None
    assert {r.status for r in verified.records} == {"VALID"}
    client.domains.verify(created.domain_id)
    mine = [e for e in env.events("domain.verified") if e["domain"]["domain_id"] == created.domain_id]
    assert len(mine) == 1
    assert mine[0]["type"] == "event" and mine[0]["event_id"]
    assert mine[0]["domain"]["status"] == "VERIFIED" and mine[0]["domain"]["domain"] == name


def test_domain_verified_webhook(env: DomainEnv) -> None:
    client = env.client()
    receiver = Receiver()
    try:
        hook = client.webhooks.create(url=receiver.url, event_types=["domain.verified"])
        created = client.domains.create(domain=new_domain())
        verify_with_zone(env, client, created.domain_id, env.zone(created.domain_id))
        receiver.wait(1)
        body = verify_signature(hook.secret, receiver.deliveries[0])
        assert body["type"] == "event" and body["event_type"] == "domain.verified"
        assert body["domain"]["domain_id"] == created.domain_id and body["domain"]["status"] == "VERIFIED"
        assert {r["status"] for r in body["domain"]["records"]} == {"VALID"}
        client.webhooks.delete(hook.webhook_id)
    finally:
        receiver.close()


def test_inboxes_need_a_verified_domain(env: DomainEnv) -> None:
    client = env.client()
    name = new_domain()
    created = client.domains.create(domain=name)
    with pytest.raises(ApiError) as unverified:
        client.inboxes.create(request={"username": "agent", "domain": name}, request_options=NO_RETRY)
    assert unverified.value.status_code == 422
    assert unverified.value.body.code == "domain_not_verified"

    verify_with_zone(env, client, created.domain_id, env.zone(created.domain_id))
    inbox = client.inboxes.create(request={"username": "agent", "domain": name})
    assert inbox.inbox_id == f"agent@{name}"

    # Subdomains only once subdomains_enabled is on and the wildcard MX verifies.
    sub = f"team.{name}"
    with pytest.raises(UnprocessableError):
        client.inboxes.create(request={"username": "a", "domain": sub}, request_options=NO_RETRY)
    updated = client.domains.update(created.domain_id, subdomains_enabled=True)
    assert updated.status == "PENDING"
    assert by_purpose(updated)["wildcard_mx"].status == "MISSING"
    with pytest.raises(UnprocessableError):
        client.inboxes.create(request={"username": "a", "domain": sub}, request_options=NO_RETRY)
    # The domain stays usable for its own inboxes while the new record propagates.
    client.inboxes.create(request={"username": "second", "domain": name})
    verify_with_zone(env, client, created.domain_id, env.zone(created.domain_id))
    assert client.inboxes.create(request={"username": "a", "domain": sub}).inbox_id == f"a@{sub}"

    # Inbox-scoped keys cannot manage domains.
    inbox_key = client.inboxes.api_keys.create(inbox.inbox_id, request={"name": "inbox key"}).api_key
    with pytest.raises(ApiError) as forbidden:
        env.client(inbox_key).domains.list(request_options=NO_RETRY)
    assert forbidden.value.status_code == 403


def test_update_delete_and_errors(env: DomainEnv) -> None:
    client = env.client()
    name = new_domain()
    created = client.domains.create(domain=name, feedback_enabled=False, inbound_enabled=False)
    assert created.feedback_enabled is False and created.inbound_enabled is False
    assert "mx" not in by_purpose(created)
    updated = client.domains.update(created.domain_id, tracking_enabled=True)
    assert updated.tracking_enabled is True and "tracking" in by_purpose(updated)
    with pytest.raises(ApiError) as empty:
        client.domains.update(created.domain_id, request_options=NO_RETRY)
    assert empty.value.status_code == 400

    with pytest.raises(ApiError) as taken:
        client.domains.create(domain=name.upper(), request_options=NO_RETRY)
    assert taken.value.status_code == 403
    with pytest.raises(ApiError) as bad:
        client.domains.create(domain="not a domain", request_options=NO_RETRY)
    assert bad.value.status_code == 400

    # Permissions: a read-only key reads but cannot create, verify or delete.
    reader = env.client(
        client.api_keys.create(request={"name": "reader", "permissions": {"domain_read": True}}).api_key
    )
    assert reader.domains.get(created.domain_id).domain == name
    for call in (
        lambda: reader.domains.create(domain=new_domain(), request_options=NO_RETRY),
        lambda: reader.domains.verify(created.domain_id, request_options=NO_RETRY),
        lambda: reader.domains.delete(created.domain_id, request_options=NO_RETRY),
    ):
        with pytest.raises(ApiError) as denied:
            call()
        assert denied.value.status_code == 403

    link = client.domains.get_setup_link(created.domain_id)
    assert link.supported is False

    client.domains.delete(name)  # by name
    with pytest.raises(NotFoundError):
        client.domains.get(created.domain_id, request_options=NO_RETRY)
    with pytest.raises(NotFoundError):
        client.domains.verify(created.domain_id, request_options=NO_RETRY)

    # A shared domain: pod-scoped keys may read it but not change it.
    pod = client.pods.create(name="readers")
    pod_key = client.pods.api_keys.create(pod.pod_id, request={"name": "pod key"}).api_key
    shared = client.domains.create(domain=new_domain())
    assert env.client(pod_key).domains.get(shared.domain_id).domain == shared.domain
    for change in (env.client(pod_key).domains.delete, env.client(pod_key).domains.verify):
        with pytest.raises(ApiError) as refused:
            change(shared.domain_id, request_options=NO_RETRY)  # verify was answered 204
        assert refused.value.status_code == 403


def test_client_id_makes_create_idempotent(env: DomainEnv) -> None:
    client = env.client()
    cid = "dom-" + secrets.token_hex(4)
    first = client.domains.create(
        domain=new_domain(), request_options={"additional_body_parameters": {"client_id": cid}}
    )
    again = client.domains.create(
        domain=new_domain(), request_options={"additional_body_parameters": {"client_id": cid}}
    )
    assert again.domain_id == first.domain_id and first.client_id == cid

    # Retries racing the original request (each with its own name): one domain, no error.
    cid = "dom-" + secrets.token_hex(4)

    def create(_: int) -> str:
        options = {"additional_body_parameters": {"client_id": cid}, "max_retries": 0}
        return env.client().domains.create(domain=new_domain(), request_options=options).domain_id

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert len(set(pool.map(create, range(8)))) == 1


def test_verifies_and_deletes_at_once_all_answer(env: DomainEnv) -> None:
    """Each verify replaces the domain's scheduled check; at once, one of them broke the job key's
    uniqueness with a 500."""
    domain_id = env.client().domains.create(domain=new_domain()).domain_id

    def verify(_: int) -> None:
        env.client().domains.verify(domain_id, request_options=NO_RETRY)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(verify, range(16)))

    def delete(_: int) -> int:  # deletions at once: the one that waited finds it gone (was a 500)
        try:
            env.client().domains.delete(domain_id, request_options=NO_RETRY)
        except ApiError as exc:
            return int(exc.status_code or 0)
        return 204

    with ThreadPoolExecutor(max_workers=4) as pool:
        codes = list(pool.map(delete, range(4)))
    assert set(codes) <= {204, 404} and 204 in codes, codes


def test_an_older_check_finishing_last_does_not_overwrite_a_newer_one(env: DomainEnv) -> None:
    """Checks query DNS outside any lock: a verify whose resolver was slow stored its answers (taken
    before the records were published) over those of a later verify, un-verifying the domain."""
    client = env.client()
    domain_id = client.domains.create(domain=new_domain()).domain_id
    good = env.zone(domain_id)
    env.dns.set_zone("")
    env.dns.hold()
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            slow = pool.submit(client.domains.verify, domain_id, request_options=NO_RETRY)
            deadline = time.monotonic() + 5
            while env.dns.resolver.held == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert env.dns.resolver.held, "the slow verify never asked"
            env.dns.stop_holding()
            assert verify_with_zone(env, client, domain_id, good).status == "VERIFIED"
            env.dns.release()
            slow.result(timeout=10)
    finally:
        env.dns.stop_holding()
        env.dns.release()
    assert client.domains.get(domain_id).status == "VERIFIED"


def test_pod_scope(env: DomainEnv) -> None:
    client = env.client()
    pod = client.pods.create(name="domains")
    other_pod = client.pods.create(name="other")
    name = new_domain()
    created = client.pods.domains.create(pod.pod_id, domain=name)
    assert created.pod_id == pod.pod_id
    assert client.pods.domains.get(pod.pod_id, name).domain_id == created.domain_id
    assert [d.domain_id for d in client.pods.domains.list(pod.pod_id).domains] == [created.domain_id]
    assert client.pods.domains.list(other_pod.pod_id).domains == []
    with pytest.raises(NotFoundError):
        client.pods.domains.get(other_pod.pod_id, created.domain_id, request_options=NO_RETRY)

    env.dns.set_zone(b"".join(client.pods.domains.get_zone_file(pod.pod_id, created.domain_id)).decode())
    client.pods.domains.verify(pod.pod_id, created.domain_id)
    assert client.pods.domains.get(pod.pod_id, created.domain_id).status == "VERIFIED"

    # Only inboxes of that pod may use it.
    assert client.pods.inboxes.create(pod.pod_id, username="p", domain=name).pod_id == pod.pod_id
    with pytest.raises(UnprocessableError):
        client.pods.inboxes.create(other_pod.pod_id, username="q", domain=name, request_options=NO_RETRY)

    # A pod-scoped key sees its pod's domains, not another pod's.
    key = client.pods.api_keys.create(other_pod.pod_id, request={"name": "pod key"}).api_key
    with pytest.raises(NotFoundError):
        env.client(key).domains.get(created.domain_id, request_options=NO_RETRY)

    # A pod with domains cannot be deleted.
    client.pods.inboxes.delete(pod.pod_id, f"p@{name}")
    with pytest.raises(ApiError) as refused:
        client.pods.delete(pod.pod_id, request_options=NO_RETRY)
    assert refused.value.status_code == 409
    client.pods.domains.update(pod.pod_id, created.domain_id, feedback_enabled=False)
    client.pods.domains.delete(pod.pod_id, created.domain_id)
    client.pods.delete(pod.pod_id)


def rcpt_code(env: DomainEnv, address: str) -> int:
    with smtplib.SMTP("127.0.0.1", env.server.smtp_port, timeout=10) as smtp:
        smtp.ehlo("sender.example")
        smtp.mail("someone@sender.example")
        code, _ = smtp.rcpt(address)
        return code


def test_deleted_domain_stops_sending_and_receiving(env: DomainEnv) -> None:
    client = env.client()
    name = new_domain()
    created = client.domains.create(domain=name)
    verify_with_zone(env, client, created.domain_id, env.zone(created.domain_id))
    inbox = client.inboxes.create(request={"username": "rcpt", "domain": name})

    # Mail for the custom-domain inbox is accepted and stored.
    with smtplib.SMTP("127.0.0.1", env.server.smtp_port, timeout=10) as smtp:
        smtp.sendmail(
            "someone@sender.example",
            [inbox.inbox_id],
            f"From: someone@sender.example\r\nTo: {inbox.inbox_id}\r\nSubject: hi custom\r\n\r\nbody\r\n",
        )
    assert [m.subject for m in client.inboxes.messages.list(inbox.inbox_id).messages] == ["hi custom"]

    client.domains.delete(created.domain_id)
    assert rcpt_code(env, inbox.inbox_id) >= 500
    with pytest.raises(ApiError) as rejected:
        client.inboxes.messages.send(
            inbox.inbox_id, to="someone@remote.test", subject="x", text="x", request_options=NO_RETRY
        )
    assert rejected.value.status_code == 403
    # Its data stays.
    assert client.inboxes.get(inbox.inbox_id).inbox_id == inbox.inbox_id
    assert len(client.inboxes.messages.list(inbox.inbox_id).messages) == 1


def test_send_only_domain_receives_nothing(env: DomainEnv) -> None:
    client = env.client()
    name = new_domain()
    created = client.domains.create(domain=name, inbound_enabled=False)
    verify_with_zone(env, client, created.domain_id, env.zone(created.domain_id))
    inbox = client.inboxes.create(request={"username": "noreply", "domain": name})
    assert rcpt_code(env, inbox.inbox_id) >= 500
    client.domains.update(created.domain_id, inbound_enabled=True)
    assert rcpt_code(env, inbox.inbox_id) == 250


def _published(env: DomainEnv) -> Any:
    def published(qname: bytes, timeout: float = 5) -> bytes:
        """dkimpy's DNS hook, answered by the loopback DNS server that serves the zone."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = env.dns.port
        answer = resolver.resolve(qname.decode().rstrip("."), "TXT")
        return b"".join(b"".join(r.strings) for r in answer)

    return published


def test_outbound_mail_is_dkim_signed_with_the_domain_key(env: DomainEnv) -> None:
    client = env.client()
    name = new_domain()
    created = client.domains.create(domain=name, subdomains_enabled=True)
    verify_with_zone(env, client, created.domain_id, env.zone(created.domain_id))
    selector = by_purpose(created)["dkim"].name.split(".", 1)[0]
    published = _published(env)

    for domain in (name, f"team.{name}"):  # subdomain inboxes sign with the parent's key
        inbox = client.inboxes.create(request={"username": "signer", "domain": domain})
        rcpt = f"r{secrets.token_hex(4)}@remote.test"
        client.inboxes.messages.send(
            inbox.inbox_id, to=rcpt, subject="Signed", text="Hello from a custom domain"
        )
        raw = env.relay.wait_for(rcpt)
        assert f"d={name};".encode() in raw.replace(b" ", b"").replace(b"\r\n\t", b"")
        assert f"s={selector};".encode() in raw.replace(b" ", b"").replace(b"\r\n\t", b"")
        assert dkim.verify(raw, dnsfunc=published)
        assert not dkim.verify(raw.replace(b"Hello from", b"Jello from"), dnsfunc=published)


def test_a_submitted_message_is_signed_as_it_goes_on_the_wire(env: DomainEnv) -> None:
    """Line breaks a submission client wrote as bare CR or LF go out as CRLF: the signature covers
    those bytes (made over a bare CR, it failed at every receiver)."""
    client = env.client()
    name = new_domain()
    created = client.domains.create(domain=name)
    verify_with_zone(env, client, created.domain_id, env.zone(created.domain_id))
    inbox = client.inboxes.create(request={"username": "submitter", "domain": name}).inbox_id
    rcpt = f"r{secrets.token_hex(4)}@remote.test"
    raw = f"From: {inbox}\r\nTo: {rcpt}\r\nSubject: breaks\r\n\r\ncr\ronly\nlf only\r\n".encode()
    with smtplib.SMTP("127.0.0.1", int(env.server.extra_env["AGENTMX_SUBMISSION_PORT"]), timeout=30) as smtp:
        smtp.starttls(context=unverified_client_context())
        smtp.login(inbox, env.api_key)
        smtp.sendmail(inbox, [rcpt], raw)
    got = env.relay.wait_for(rcpt)
    assert got.endswith(b"\r\n\r\ncr\r\nonly\r\nlf only\r\n")
    assert dkim.verify(got, dnsfunc=_published(env))


@pytest.mark.parametrize("backend", BACKENDS)
def test_job_runner_rechecks_until_verified(backend: str, fresh_server: Any) -> None:
    with LoopbackDNS() as dns_server:
        server = fresh_server(
            backend,
            env={
                "AGENTMX_DNS_RESOLVER": dns_server.address,
                "AGENTMX_PUBLIC_HOST": MAIL_HOST,
                "AGENTMX_DOMAIN_CHECK_INTERVAL": "0.5",
                "AGENTMX_DNS_TIMEOUT": "1",
            },
        ).start()
        client = DomainEnv(server, dns_server, "").client()
        created = client.domains.create(domain=new_domain())
        zone = b"".join(client.domains.get_zone_file(created.domain_id)).decode()
        client.domains.verify(created.domain_id)
        assert client.domains.get(created.domain_id).status == "PENDING"

        # Publishing the records is enough: the periodic check notices without another verify.
        dns_server.set_zone(zone)
        deadline = time.monotonic() + 20
        while client.domains.get(created.domain_id).status != "VERIFIED":
            assert time.monotonic() < deadline, "domain was not re-checked"
            time.sleep(0.2)

    # The DNS server is gone: a failing resolver leaves the verified state alone.
    client.domains.verify(created.domain_id)
    assert client.domains.get(created.domain_id).status == "VERIFIED"


def test_list_pages(env: DomainEnv) -> None:
    client = env.client()
    pod = client.pods.create(name="paging")
    made = [client.pods.domains.create(pod.pod_id, domain=new_domain()).domain_id for _ in range(3)]
    first = client.pods.domains.list(pod.pod_id, limit=2)
    assert first.count == 2 and first.next_page_token
    second = client.pods.domains.list(pod.pod_id, limit=2, page_token=first.next_page_token)
    assert second.count == 1 and second.next_page_token is None
    newest_first = [d.domain_id for d in first.domains + second.domains]
    assert newest_first == list(reversed(made))
    oldest_first = client.pods.domains.list(pod.pod_id, ascending=True).domains
    assert [d.domain_id for d in oldest_first] == made
    with pytest.raises(ApiError) as bad:
        client.pods.domains.list(pod.pod_id, page_token="nonsense", request_options=NO_RETRY)
    assert bad.value.status_code == 400


def test_google_workspace_mx_needs_allow_conflicting_provider(env: DomainEnv) -> None:
    client = env.client()
    name = new_domain()
    env.dns.set_zone(f"{name}. 300 IN MX 1 aspmx.l.google.com.\n")
    with pytest.raises(UnprocessableError):
        client.domains.create(domain=name, request_options=NO_RETRY)
    send_only = client.domains.create(domain=name, inbound_enabled=False)
    client.domains.delete(send_only.domain_id)
    allowed = client.domains.create(domain=name, allow_conflicting_provider=True)
    assert allowed.domain == name


def test_a_null_mx_is_a_record_with_another_value(env: DomainEnv) -> None:
    """A domain that says it takes no mail (RFC 7505 null MX, "0 .") is refused nothing and breaks nothing:
    create succeeds and verify reports the MX as wrong (both were 500s)."""
    client = env.client()
    name = new_domain()
    env.dns.set_zone(f"{name}. 300 IN MX 0 .\n")
    created = client.domains.create(domain=name, request_options=NO_RETRY)
    zone = env.zone(created.domain_id)
    with_null_mx = "\n".join(line for line in zone.splitlines() if f"{name}.\t3600\tIN\tMX" not in line)
    checked = verify_with_zone(env, client, created.domain_id, with_null_mx + f"\n{name}. 300 IN MX 0 .\n")
    assert checked.status == "INVALID"
    mx = by_purpose(checked)["mx"]
    assert (mx.status, mx.reason) == ("INVALID", "value_mismatch")
    assert all(r.status == "VALID" for k, r in by_purpose(checked).items() if k != "mx")


def test_a_name_too_long_for_its_dkim_record_is_refused(env: DomainEnv) -> None:
    """<selector>._domainkey.<domain> must fit in DNS's 253 characters; a longer domain was accepted, then
    its zone file did not parse and verify answered 500."""
    client = env.client()
    label = secrets.token_hex(3)

    def name_of(length: int) -> str:
        name = f"{label}.test"
        while len(name) < length:
            name = "a" * min(62, length - len(name) - 1) + "." + name
        return name

    longest = name_of(230)
    assert len(longest) == 230
    made = client.domains.create(domain=longest, allow_conflicting_provider=True)
    dns.zone.from_text(env.zone(made.domain_id), check_origin=False)
    client.domains.verify(made.domain_id)
    assert client.domains.get(made.domain_id).status == "PENDING"
    client.domains.delete(made.domain_id)
    too_long = name_of(231)
    assert len(too_long) == 231
    with pytest.raises(ApiError) as refused:
        client.domains.create(domain=too_long, request_options=NO_RETRY)
    assert refused.value.status_code == 400 and "230" in str(refused.value.body)


def test_a_client_id_never_hands_over_another_pods_domain(env: DomainEnv) -> None:
    """A pod key naming another pod's client_id was handed that pod's domain; now refused (403)."""
    client = env.client()
    pod_a = client.pods.create(name="cid-a").pod_id
    pod_b = client.pods.create(name="cid-b").pod_id
    cid = "dom-" + secrets.token_hex(4)
    with httpx.Client(base_url=env.server.base_url, timeout=30) as http:

        def create(key: str, path: str) -> httpx.Response:
            body = {"domain": new_domain(), "client_id": cid}
            return http.post(path, json=body, headers={"Authorization": f"Bearer {key}"})

        theirs = create(env.api_key, f"/v0/pods/{pod_a}/domains").json()
        pod_key = client.pods.api_keys.create(pod_b, request={"name": "b"}).api_key
        for path in ("/v0/domains", f"/v0/pods/{pod_b}/domains"):
            refused = create(pod_key, path)
            assert refused.status_code == 403 and refused.json()["code"] == "resource_taken"
            assert theirs["domain_id"] not in refused.text and theirs["domain"] not in refused.text
        assert create(env.api_key, "/v0/domains").json()["domain_id"] == theirs["domain_id"]


def test_a_domain_registered_again_sends_once_verified_again(env: DomainEnv) -> None:
    """Deleting a domain stops its inboxes sending; registering it again gave them back sending at once,
    unsigned (the new DKIM key unpublished, unverified), until it is verified again."""
    client = env.client()
    name = new_domain()
    first = client.domains.create(domain=name)
    verify_with_zone(env, client, first.domain_id, env.zone(first.domain_id))
    inbox = client.inboxes.create(request={"username": "again", "domain": name})
    client.domains.delete(first.domain_id)
    again = client.domains.create(domain=name)
    with pytest.raises(ApiError) as rejected:
        client.inboxes.messages.send(inbox.inbox_id, to="x@remote.test", text="x", request_options=NO_RETRY)
    assert rejected.value.status_code == 403 and again.domain_id in str(rejected.value.body)

    verify_with_zone(env, client, again.domain_id, env.zone(again.domain_id))
    rcpt = f"r{secrets.token_hex(4)}@remote.test"
    client.inboxes.messages.send(inbox.inbox_id, to=rcpt, subject="again", text="signed again")
    selector = by_purpose(again)["dkim"].name.split(".", 1)[0]
    assert f"s={selector};".encode() in env.relay.wait_for(rcpt).replace(b" ", b"").replace(b"\r\n\t", b"")


def test_another_pods_subdomain_of_a_shared_domain_is_not_open_to_inboxes(env: DomainEnv) -> None:
    """A pod's team.<shared> governs its addresses even though the shared parent allows subdomains: another
    pod's key took them (its inboxes could never receive, and the pod was refused its own)."""
    client = env.client()
    pod_a = client.pods.create(name="owner").pod_id
    pod_b = client.pods.create(name="other").pod_id
    parent = new_domain()
    shared = client.domains.create(domain=parent, subdomains_enabled=True)
    team = client.pods.domains.create(pod_a, domain=f"team.{parent}")
    env.dns.set_zone(env.zone(shared.domain_id) + env.zone(team.domain_id))
    client.domains.verify(shared.domain_id)
    other = env.client(client.pods.api_keys.create(pod_b, request={"name": "b"}).api_key)
    for verified in (False, True):
        with pytest.raises(UnprocessableError):
            other.pods.inboxes.create(
                pod_b, username="ceo", domain=f"team.{parent}", request_options=NO_RETRY
            )
        if not verified:
            client.pods.domains.verify(pod_a, team.domain_id)
    assert (
        other.pods.inboxes.create(pod_b, username="ceo", domain=f"ops.{parent}").inbox_id
        == f"ceo@ops.{parent}"
    )
    own = client.pods.inboxes.create(pod_a, username="ceo", domain=f"team.{parent}")
    assert own.inbox_id == f"ceo@team.{parent}"


def test_a_pod_cannot_register_a_name_that_governs_another_pods_addresses(env: DomainEnv) -> None:
    """Registering sales.<another pod's domain> took over the addresses there: that pod's inboxes on it
    stopped receiving (550) and sending (403)."""
    client = env.client()
    pod_a = client.pods.create(name="owner").pod_id
    pod_b = client.pods.create(name="other").pod_id
    parent = new_domain()
    owned = client.pods.domains.create(pod_a, domain=parent, subdomains_enabled=True)
    verify_with_zone(env, client, owned.domain_id, env.zone(owned.domain_id))
    inbox = client.pods.inboxes.create(pod_a, username="boss", domain=f"sales.{parent}")
    other = env.client(client.pods.api_keys.create(pod_b, request={"name": "b"}).api_key)
    for name in (f"sales.{parent}", f"new.{parent}"):
        with pytest.raises(ApiError) as refused:
            other.domains.create(domain=name, request_options=NO_RETRY)
        assert refused.value.status_code == 403
    assert rcpt_code(env, inbox.inbox_id) == 250
    client.inboxes.messages.send(inbox.inbox_id, to=f"r{secrets.token_hex(4)}@remote.test", text="still mine")

    # A shared domain's subdomain may be a pod's own, unless another pod's inboxes live there.
    shared = client.domains.create(domain=new_domain(), subdomains_enabled=True)
    verify_with_zone(env, client, shared.domain_id, env.zone(shared.domain_id))
    client.pods.inboxes.create(pod_a, username="ops", domain=f"ops.{shared.domain}")
    with pytest.raises(ApiError) as taken:
        other.domains.create(domain=f"ops.{shared.domain}", request_options=NO_RETRY)
    assert taken.value.status_code == 403
    assert other.domains.create(domain=f"team.{shared.domain}").pod_id == pod_b
    assert client.pods.domains.create(pod_a, domain=f"ops.{shared.domain}").pod_id == pod_a


def test_a_unicode_name_is_registered_as_its_a_label(env: DomainEnv) -> None:
    """IDN names were refused; they are kept in the form DNS holds (the A-label) and found by either."""
    client = env.client()
    label = f"bücher{secrets.token_hex(3)}"
    a_label = label.encode("idna").decode()  # IDNA 2003 and 2008 agree on this name
    created = client.domains.create(domain=f"{label.upper()}.Example.TEST.")
    assert created.domain == f"{a_label}.example.test"
    assert all(r.name.endswith(f"{a_label}.example.test") for r in created.records)
    assert client.domains.get(f"{label}.example.test").domain_id == created.domain_id
    with pytest.raises(ApiError) as again:
        client.domains.create(domain=f"{a_label}.example.test", request_options=NO_RETRY)
    assert again.value.status_code == 403

    verify_with_zone(env, client, created.domain_id, env.zone(created.domain_id))
    inbox = client.inboxes.create(request={"username": "leser", "domain": f"{label}.example.test"})
    assert inbox.inbox_id == f"leser@{a_label}.example.test"
    # The address as people write it finds the inbox too (was a 404: only lower-cased).
    assert client.inboxes.get(f"Leser@{label}.Example.test").inbox_id == inbox.inbox_id

    for bad in ("xn--zz.example.test", "☃.example.test", "a\u200db.example.test"):
        with pytest.raises(ApiError) as refused:
            client.domains.create(domain=bad, request_options=NO_RETRY)
        assert refused.value.status_code == 400, bad


def test_a_public_suffix_is_refused(env: DomainEnv) -> None:
    """Registered, co.uk blocked every name under it for every other organization."""
    client = env.client()
    for suffix in ("co.uk", "github.io", "Com.AU."):
        with pytest.raises(ApiError) as refused:
            client.domains.create(domain=suffix, request_options=NO_RETRY)
        assert refused.value.status_code == 400 and "public suffix" in str(refused.value.body)
    name = f"d{secrets.token_hex(4)}.github.io"
    assert client.domains.create(domain=name).domain == name


def test_spf_is_judged_by_what_receivers_evaluate(env: DomainEnv) -> None:
    """An equal mechanism in another spelling ("+", a final dot, upper case) was value_mismatch; ours
    placed after "all" (never evaluated: the mail would fail SPF) was VALID."""
    client = env.client()
    created = client.domains.create(domain=new_domain())
    good = env.zone(created.domain_id)
    spf_line = next(line for line in good.splitlines() if "v=spf1" in line)
    owner = spf_line.split("\t")[0]
    verdicts = {}
    for value in (
        f"v=spf1 +a:{MAIL_HOST.upper()}. ~all",
        f"v=spf1 include:_spf.example.net a:{MAIL_HOST}. -all",
        f"v=spf1 -all a:{MAIL_HOST}",
        f"v=spf1 -a:{MAIL_HOST} ~all",
    ):
        zone = good.replace(spf_line, f'{owner}\t3600\tIN\tTXT\t"{value}"')
        verdicts[value] = by_purpose(verify_with_zone(env, client, created.domain_id, zone))["spf"].status
    assert list(verdicts.values()) == ["VALID", "VALID", "INVALID", "INVALID"], verdicts
