"""One webhook receiver that hangs holds at most its share of the job slots: deliveries to other
receivers go on, and its own deliveries wait, none lost; receivers that hang together hold at most
their pool, so outbound mail goes on too; and requests that hang give their slots back, so a healthy
receiver is served however many others hang (jobs/lanes.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from agentmx.testing.server import ServerProcess
from conftest import Harness
from events_support import Receiver, new_inbox
from mail_support import make_message, smtp_send
from send_support import Sink, ext, wait_for

BACKENDS = ["sqlite", "postgres"]
BURST = 20  # events per receiver: more than its share of the job slots (16, half of 32)


def burst(server: ServerProcess, inboxes: list[str], subject: str) -> None:
    """One message to every inbox, in one SMTP transaction: one message.received event each, all
    committed together (so the jobs are due at once, before the slow-receiver guard could act)."""
    msg = make_message(inboxes[0], subject=subject)
    smtp_send(server, inboxes, msg.as_bytes())


def svix_ids(receiver: Receiver) -> set[str]:
    with receiver.lock:
        return {d.headers["svix-id"] for d in receiver.deliveries}


class Hang:
    """Receivers that hold every request until ``let_go`` (the server would wait 300 s for an answer),
    so nothing in these tests depends on the machine's speed."""

    def __init__(self) -> None:
        self.let_go = threading.Event()

    def answer(self, n: int) -> int:
        self.let_go.wait(120)
        return 200

    def receiver(self) -> Receiver:
        return Receiver(status=self.answer)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_hanging_receiver_does_not_starve_the_others(
    fresh_server: Callable[..., ServerProcess], backend: str
) -> None:
    server = fresh_server(backend, env={"AGENTMX_WEBHOOK_TIMEOUT": "300"}).start()
    client = Harness(server, backend).client()
    hang = Hang()
    hanging, fast = hang.receiver(), Receiver()
    try:
        inboxes = [new_inbox(client) for _ in range(BURST)]
        # Organization-wide webhooks: every inbox's events go to them.
        client.webhooks.create(url=hanging.url, event_types=["message.received"])
        burst(server, inboxes, "for the hanging one")
        hanging.wait(1)
        client.webhooks.create(url=fast.url, event_types=["message.received"])
        burst(server, inboxes, "for both")
        # Without the cap the hanging receiver's backlog took every slot (16) for the 300 s timeout.
        fast.wait(BURST, timeout=30)
        assert not hang.let_go.is_set()
        assert len(hanging.deliveries) <= 16  # its share; the rest wait, claimed or not
    finally:
        hang.let_go.set()
    try:
        # Every delivery to the hanging receiver is still made once it answers: none was lost.
        hanging.wait(2 * BURST, timeout=60)
        assert len(svix_ids(hanging)) == 2 * BURST
        assert len(svix_ids(fast)) == BURST
    finally:
        hanging.close()
        fast.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_receivers_hanging_together_leave_slots_for_outbound_mail(
    fresh_server: Callable[..., ServerProcess], backend: str
) -> None:
    sink = Sink().start()
    env = {"AGENTMX_WEBHOOK_TIMEOUT": "300", "AGENTMX_SMTP_RELAY": sink.address}
    server = fresh_server(backend, env=env).start()
    client = Harness(server, backend).client()
    hang = Hang()
    receivers = [hang.receiver(), hang.receiver()]
    try:
        inboxes = [new_inbox(client) for _ in range(BURST)]
        for n, receiver in enumerate(receivers):
            client.webhooks.create(url=receiver.url, event_types=["message.received"])
            burst(server, inboxes, f"for the hanging ones, {n + 1}")
            receiver.wait(1)
        # Without a pool for all receivers, their backlogs took every slot (16 each) for the 300 s
        # timeout: the send's delivery job was not even claimed.
        to = ext("out-")
        client.inboxes.messages.send(inboxes[0], to=to, subject="while two receivers hang", text="Hi.")
        wait_for(lambda: sink.handler.for_rcpt(to), timeout=60)
        assert not hang.let_go.is_set()
        assert all(len(r.deliveries) <= 16 for r in receivers)  # each its share; the rest wait
    finally:
        hang.let_go.set()
        for receiver in receivers:
            receiver.close()
        sink.stop()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hanging_count", [2, 3])
def test_a_healthy_receiver_is_served_however_many_receivers_hang(
    fresh_server: Callable[..., ServerProcess], backend: str, hanging_count: int
) -> None:
    server = fresh_server(backend, env={"AGENTMX_WEBHOOK_TIMEOUT": "300"}).start()
    client = Harness(server, backend).client()
    hang = Hang()
    hanging, fast = [hang.receiver() for _ in range(hanging_count)], Receiver()
    try:
        inboxes = [new_inbox(client) for _ in range(BURST)]
        for n, receiver in enumerate(hanging):  # each burst goes to every webhook made so far
            client.webhooks.create(url=receiver.url, event_types=["message.received"])
            burst(server, inboxes, f"for the hanging ones, {n + 1}")
            receiver.wait(1)
        client.webhooks.create(url=fast.url, event_types=["message.received"])
        burst(server, inboxes, "for all")
        # Was: the hanging requests held all 24 webhook slots (16 + 8) for the 300 s timeout, and the
        # hanging receivers' backlogs all the webhook claims.
        fast.wait(BURST, timeout=30)
        assert not hang.let_go.is_set()
        assert all(len(r.deliveries) <= 16 for r in hanging)  # each its share; the rest wait
    finally:
        hang.let_go.set()
    try:
        # Every delivery to the hanging receivers is still made once they answer: none handed back was lost.
        for n, receiver in enumerate(hanging):
            events = (hanging_count - n + 1) * BURST
            receiver.wait(events, timeout=60)
            assert len(svix_ids(receiver)) == events
        assert len(svix_ids(fast)) == BURST
    finally:
        for receiver in [*hanging, fast]:
            receiver.close()
