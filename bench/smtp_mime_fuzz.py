"""Mutation fuzz of inbound MIME for a bounded wall time: the malformed corpus test, run for minutes.

Seeds are tests/data/*.eml. Each round mutates one to five times (byte flips, deleted or
repeated ranges, splices of two seeds, MIME tokens such as boundaries, encoded words, transfer
encodings, NUL and 8-bit bytes inserted at random) and sends the result over SMTP. Every
message must get 250 (broken mail is still mail) or a permanent 5xx; a 4xx, a dropped
connection or a server exit is a failure. Every stored message must then read without a 5xx:
the message, its raw .eml, its thread and each attachment.

Goal (PERFORMANCE-RELIABILITY.md section 2.6): no crash, bounded time (<= 1 s per message of
<= 1 MB), so 0 failures and DATA -> reply max <= 1 s.

    python bench/smtp_mime_fuzz.py --minutes 5 --backend both
"""

from __future__ import annotations

import argparse
import random
import smtplib
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import quote

import httpx
from common import (
    ROOT,
    Agentmx,
    Report,
    add_common_args,
    agentmx_server,
    backends,
    header,
    latency_summary,
    run_script,
)

BENCH = "mime_fuzz"
SEEDS = sorted((ROOT / "tests" / "data").glob("*.eml"))
TOKENS = [
    b"\r\n--", b"--\r\n", b'Content-Type: multipart/mixed; boundary="b"\r\n', b"\r\n--b\r\n", b"\r\n--b--\r\n",
    b"Content-Type: message/rfc822\r\n", b"Content-Transfer-Encoding: base64\r\n", b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"=?utf-8?B?", b"=?iso-2022-jp?Q?=1B$B", b"?=", b"=\r\n", b"=ZZ", b"\r\n\r\n", b"\x00", b"\xff\xfe", b"\xc3(",
    b'; charset="x-unknown"', b"; filename*=utf-8''%FF%00.txt", b"Content-Disposition: attachment\r\n",
    b"Content-ID: <>\r\n", b"In-Reply-To: <", b"References: " + b"<a@b> " * 50, b"Message-ID: <>\r\n", b"\t", b" ",
    b"Date: Mon, 99 Foo 10000 25:61:61 +9999\r\n", b"From: =?utf-8?Q?=00?= <@>\r\n", b"To: ,,,;;<>\r\n",
    b"Subject: " + b"\xe2\x80\xae" * 20 + b"\r\n", b"<html><body><blockquote>" * 20, b"On Mon wrote:\r\n> ",
]  # fmt: skip
MAX_SIZE = 256 * 1024


def mutate(rng: random.Random, data: bytes, seeds: list[bytes]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 5)):
        pos = rng.randint(0, len(buf))
        op = rng.randrange(6)
        if op == 0 and buf:  # flip a byte
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op == 1:  # delete a range
            del buf[pos : pos + rng.randint(1, 64)]
        elif op == 2:  # repeat a range
            chunk = bytes(buf[pos : pos + rng.randint(1, 200)])
            buf[pos:pos] = chunk * rng.randint(1, 30)
        elif op == 3:  # splice with another seed
            other = rng.choice(seeds)
            cut = rng.randint(0, len(other))
            buf[pos:] = other[cut:]
        else:  # a MIME token
            buf[pos:pos] = rng.choice(TOKENS)
    return bytes(buf[:MAX_SIZE])


@dataclass
class FuzzResult:
    sent: int = 0
    replies: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    reads: int = 0
    read_failures: list[str] = field(default_factory=list)
    checked: set[str] = field(default_factory=set)


def send(app: Agentmx, inbox: str, raw: bytes, result: FuzzResult) -> None:
    result.sent += 1
    t0 = time.perf_counter()
    try:
        with smtplib.SMTP("127.0.0.1", app.server.smtp_port, timeout=30) as smtp:
            smtp.sendmail("fuzz@fuzz.example", [inbox], raw)
        result.replies["250"] += 1
    except smtplib.SMTPDataError as exc:
        result.replies[str(exc.smtp_code)] += 1
        if exc.smtp_code < 500:
            result.failures.append(f"{exc.smtp_code} {exc.smtp_error[:100]!r} for {raw[:300]!r}")
    except (smtplib.SMTPException, OSError) as exc:
        result.replies[type(exc).__name__] += 1
        result.failures.append(f"{type(exc).__name__}: {exc} for {raw[:300]!r}")
    result.latency.append(time.perf_counter() - t0)


def read_back(http: httpx.Client, inbox: str, result: FuzzResult) -> None:
    """Read every message not checked yet (newest page first): message, raw, thread, attachments."""
    page = http.get(f"/v0/inboxes/{inbox}/messages", params={"limit": 100})
    if page.status_code >= 500:
        result.read_failures.append(f"list -> {page.status_code} {page.text[:200]}")
        return
    for item in page.json()["messages"]:
        if item["message_id"] in result.checked:
            continue
        result.checked.add(item["message_id"])
        path = f"/v0/inboxes/{inbox}/messages/{quote(item['message_id'], safe='@+/')}"
        urls = [path, path + "/raw", f"/v0/threads/{item['thread_id']}"]
        message = http.get(path)
        if message.status_code < 500:
            urls += [
                f"{path}/attachments/{a['attachment_id']}" for a in message.json().get("attachments") or []
            ]
        for url in urls:
            resp = http.get(url)
            result.reads += 1
            if resp.status_code >= 500:
                result.read_failures.append(f"{url} -> {resp.status_code} {resp.text[:200]}")


def run(args: argparse.Namespace, report: Report) -> None:
    seeds = [p.read_bytes() for p in SEEDS]
    for backend in backends(args.backend):
        header(f"MIME mutation fuzz: {args.minutes} min on {backend}, seed {args.seed}")
        rng = random.Random(args.seed)
        result = FuzzResult()
        with agentmx_server(backend) as app:
            inbox = app.create_inbox("mimefuzz")
            end = time.monotonic() + args.minutes * 60
            while time.monotonic() < end:
                for _ in range(50):
                    raw = mutate(rng, rng.choice(seeds), seeds)
                    if rng.random() < 0.5:  # else the seed's Message-ID often dedupes it before parsing
                        raw = f"Message-ID: <fuzz-{result.sent}@fuzz.example>\r\n".encode() + raw
                    send(app, inbox, raw, result)  # smtplib makes line ends CRLF
                read_back(app.http, inbox, result)
            alive = app.server.proc is not None and app.server.proc.poll() is None
            tracebacks = app.server.log_path.read_text(errors="replace").count("Traceback")
        label = app.label
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(result.replies.items()))
        report.add(BENCH, label, "messages sent", result.sent, "msgs", codes)
        report.add(BENCH, label, "reads after 250", result.reads, "req", f"{len(result.checked)} messages")
        lat = latency_summary(result.latency)
        report.add(BENCH, label, "SMTP session p99", lat["p99_ms"], "ms", f"max {lat['max_ms']:.0f} ms")
        failures = len(result.failures) + len(result.read_failures)
        report.add(BENCH, label, "failures", failures, "", f"tracebacks in the server log: {tracebacks}")
        for sample in (result.failures + result.read_failures)[:5]:
            report.note(f"{label} FAILURE {sample}")
        report.check(
            BENCH, f"{label}: 0 failures (4xx, drops, 5xx reads), alive", failures, failures == 0 and alive
        )
        report.check(BENCH, f"{label}: SMTP session max <= 1 s", lat["max_ms"], lat["max_ms"] <= 1000)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=1.0, help="wall time per backend")
    p.add_argument("--seed", type=int, default=8, help="random seed (runs are reproducible per seed)")
    add_common_args(p)
    return p


if __name__ == "__main__":
    run_script(parser, run)
