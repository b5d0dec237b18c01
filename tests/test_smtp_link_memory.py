"""Large messages through SMTP front ends (AGENTMX_SMTP_WORKERS) with bounded memory.

A message near the size limit is held by its session until stored; what must not happen is that it
is held many times over, as when several threads parsed large messages at once.
"""

from __future__ import annotations

import os
import secrets
import smtplib
from concurrent.futures import ThreadPoolExecutor
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from agentmail import AgentMail
from agentmail.environment import AgentMailEnvironment

from agentmx.testing.server import ServerProcess
from mail_support import download
from test_smtp_frontends import front_ends

MESSAGES = 8  # more than the threads of a default executor on 2 cores (6)
MESSAGE_BYTES = 9_500_000  # near the default limit (10 MiB)


def _large_message(to: str) -> bytes:
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = "sender@example.com"
    msg["To"] = to
    msg["Subject"] = "large"
    msg["Message-ID"] = f"<{secrets.token_hex(8)}@example.com>"
    msg.set_content("attached")
    # Random bytes: base64 of them is what large mail mostly is, and nothing compresses them.
    data = os.urandom(MESSAGE_BYTES * 3 // 4)
    msg.add_attachment(data, maintype="application", subtype="octet-stream", filename="a.bin")
    return msg.as_bytes()


def _kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise LookupError(field)


@pytest.mark.parametrize("loop", ["auto", "asyncio"])
def test_large_messages_at_once_are_stored_whole_in_bounded_memory(tmp_path: Path, loop: str) -> None:
    """SQLite only: the front end's memory does not depend on the database. asyncio's own loop
    copies into its transport's buffer whatever the link cannot take at once (uvloop keeps the
    frames): frames encoded ahead of the link piled up there."""
    server_env = {"AGENTMX_SMTP_WORKERS": "1", "AGENTMX_SMTP_FRONTEND_LOOP": loop}
    server = ServerProcess(tmp_path, env=server_env).start()
    try:
        env = AgentMailEnvironment(http=server.base_url, websockets=server.ws_url)
        client = AgentMail(api_key=server.create_key(), environment=env)
        inbox = client.inboxes.create().inbox_id
        messages = [_large_message(inbox) for _ in range(MESSAGES)]
        (front_end,) = front_ends(server)
        at_start = _kib(front_end, "VmRSS") * 1024

        def send(raw: bytes) -> None:
            with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=120) as smtp:
                smtp.sendmail("sender@example.com", [inbox], raw)

        with ThreadPoolExecutor(MESSAGES) as pool:
            list(pool.map(send, messages))
        grown = _kib(front_end, "VmHWM") * 1024 - at_start
        size = len(messages[0])
        # Each session holds its message until stored, and a parse peaks near 8 times the message.
        # Parsed in the default executor, 6 at once, it grew by 530-580 MB; one at a time, 220-270.
        # On asyncio's loop, with every frame encoded as soon as parsed, 380 MB; one at a time, 270-290.
        assert grown < (MESSAGES + 26) * size, f"front end grew {grown >> 20} MB"
        for raw in messages:
            message_id = raw.split(b"Message-ID: ")[1].split(b"\r\n")[0].decode()
            stored = download(client.inboxes.messages.get_raw(inbox, message_id).download_url).content
            assert stored.endswith(raw)
    finally:
        server.stop()
