"""A full blob folder: the request or the SMTP transaction fails cleanly, nothing half-stored, and mail
that fits still flows. The folder is a small tmpfs (skipped where mounting is not allowed)."""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import smtplib
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from agentmail.core.api_error import ApiError
from agentmail.errors import NotFoundError

from agentmx.testing.server import ServerProcess
from conftest import NO_RETRY, Harness
from send_support import new_inbox, wait_for

TMPFS_BYTES = 256 * 1024
TOO_BIG = 1024 * 1024  # bytes of attachment: does not fit


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    root = tmp_path_factory.mktemp("storage-full")
    blobs = root / "blobs"
    blobs.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(blobs)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    server = ServerProcess(
        root / "data", env={"AGENTMX_BLOB_DIR": str(blobs), "AGENTMX_BLOB_INLINE_MAX_BYTES": "1024"}
    )
    try:
        server.start()
        yield Harness(server, "sqlite")
    finally:
        server.stop()
        subprocess.run(["umount", str(blobs)], check=False)


def _count(harness: Harness, inbox: str) -> int:
    return len(harness.client().inboxes.messages.list(inbox).messages)


def test_sending_more_than_fits_is_a_503_and_stores_nothing(small_disk: Harness) -> None:
    client = small_disk.client()
    a, b = new_inbox(client), new_inbox(client)
    attachment = {"filename": "big.bin", "content": base64.b64encode(os.urandom(TOO_BIG)).decode()}
    with pytest.raises(ApiError) as info:
        client.inboxes.messages.send(
            a, to=b, subject="big", text="x", attachments=[attachment], request_options=NO_RETRY
        )
    assert info.value.status_code == 503, info.value.body
    assert info.value.body["code"] == "insufficient_storage"
    assert _count(small_disk, a) == 0 and _count(small_disk, b) == 0
    sent = client.inboxes.messages.send(a, to=b, subject="small", text="fits " + "y" * 2000)
    wait_for(lambda: _count(small_disk, b) == 1)
    assert client.inboxes.messages.get(b, sent.message_id).subject == "small"


def test_smtp_mail_more_than_fits_gets_452_and_the_next_fits(small_disk: Harness) -> None:
    client = small_disk.client()
    rcpt = new_inbox(client)

    def mail(size: int) -> EmailMessage:
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "a@remote.test", rcpt, f"size {size}"
        msg["Message-ID"] = f"<{secrets.token_hex(8)}@remote.test>"
        msg.set_content("z" * size)
        return msg

    with smtplib.SMTP("127.0.0.1", small_disk.server.smtp_port, timeout=30) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as info:
            smtp.send_message(mail(TOO_BIG))
        assert info.value.smtp_code == 452, info.value
        assert b"4.3.1" in info.value.smtp_error
        smtp.send_message(mail(3000))
    assert _count(small_disk, rcpt) == 1


@contextlib.contextmanager
def _fill(folder: Path) -> Iterator[None]:
    """Fill ``folder``'s file system up while the context lasts."""
    filler = folder / f"filler-{secrets.token_hex(4)}"
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError:
            pass  # full
        try:
            yield
        finally:
            out.close()
            filler.unlink()


def test_a_scheduled_send_that_meets_a_full_disk_is_retried_not_failed(small_disk: Harness) -> None:
    client = small_disk.client()
    a, b = new_inbox(client), new_inbox(client)
    attachment = {"filename": "doc.bin", "content": base64.b64encode(os.urandom(40_000)).decode()}
    draft = client.inboxes.drafts.create(
        a,
        to=[b],
        subject="scheduled into a full disk",
        attachments=[attachment],
        send_at=datetime.now(UTC) + timedelta(seconds=1),
    )
    blobs = Path(small_disk.server.extra_env["AGENTMX_BLOB_DIR"])
    log_start = len(small_disk.server.log())
    with _fill(blobs):
        wait_for(lambda: "storage is full" in small_disk.server.log()[log_start:])
        # The full disk is the server's trouble, not the draft's: it stays queued ("sending").
        assert client.inboxes.drafts.get(a, draft.draft_id).send_status == "sending"
    wait_for(lambda: _count(small_disk, b) == 1, timeout=30)
    with pytest.raises(NotFoundError):
        client.inboxes.drafts.get(a, draft.draft_id, request_options=NO_RETRY)
