"""A raw SMTP host on loopback whose replies a test scripts, stage by stage: the replies of a misbehaving
server (codes a library refuses, codes outside 2xx-5xx, an EHLO it does not know) that aiosmtpd will not
send. It keeps the commands it was sent and the messages it took."""

from __future__ import annotations

import asyncio
import threading

STAGES = ("banner", "ehlo", "helo", "mail", "rcpt", "data", "dot", "rset")
DEFAULTS = {
    "banner": b"220 scripted.test ESMTP\r\n",
    "ehlo": b"250-scripted.test\r\n250 8BITMIME\r\n",
    "helo": b"250 scripted.test\r\n",
    "mail": b"250 2.1.0 Ok\r\n",
    "rcpt": b"250 2.1.5 Ok\r\n",
    "data": b"354 End data with <CR><LF>.<CR><LF>\r\n",
    "dot": b"250 2.0.0 Queued\r\n",
    "rset": b"250 2.0.0 Ok\r\n",
}


class ScriptedHost:
    """``script[stage]`` replaces that stage's reply (see DEFAULTS) while set; the message is read only
    after a 354 to DATA."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.script: dict[str, bytes] = {}
        self.commands: list[str] = []  # verbs, in order, over every connection
        self.messages: list[bytes] = []
        self.lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        ready = threading.Event()
        threading.Thread(target=self._run, args=(host, ready), daemon=True).start()
        ready.wait()

    @property
    def address(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def _run(self, host: str, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._session, host, 0))
        ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)

    def _reply(self, stage: str) -> bytes:
        with self.lock:
            return self.script.get(stage, DEFAULTS[stage])

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(self._reply("banner"))
            while line := await reader.readline():
                verb = line[:4].decode("ascii", "replace").upper()
                with self.lock:
                    self.commands.append(verb)
                if verb == "QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    break
                stage = verb.lower() if verb.lower() in STAGES else ""
                reply = self._reply(stage) if stage else b"502 5.5.2 Error: command not recognized\r\n"
                writer.write(reply)
                if stage == "data" and reply.startswith(b"354"):
                    await self._message(reader, writer)
                await writer.drain()
        finally:
            writer.close()

    async def _message(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lines = []
        while (line := await reader.readline()) not in (b".\r\n", b""):
            lines.append(line)
        with self.lock:
            self.messages.append(b"".join(lines))
        writer.write(self._reply("dot"))
