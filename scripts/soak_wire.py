"""soak_wire.py: what every part of the soak (scripts/soak.py, soak_attack.py) speaks: the shared
deadline every loop ends at, and a small RESP codec over asyncio streams (plain or TLS)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time

OP_TIMEOUT = 5.0  # a good client's request without a reply by then is an error
CONNECT_TIMEOUT = 5.0
SERVER_NAME = "localhost"  # `redward gen-certs` makes a certificate for localhost and 127.0.0.1
MIB = 1024 * 1024

DEADLINE = 0.0  # time.monotonic() at which every loop ends


def set_deadline(at: float) -> None:
    global DEADLINE
    DEADLINE = at


def left() -> float:
    return DEADLINE - time.monotonic()


def running() -> bool:
    return left() > 0


async def nap(seconds: float) -> None:
    """Sleeps, but not past the deadline."""
    await asyncio.sleep(max(0.0, min(seconds, left())))


# ------------------------------------------------------------------------------------- RESP codec


class ErrorReply(str):
    """A `-ERR ...` reply, returned as a value so that callers can tell it from a string."""


def encode(*args: str | bytes | int) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


async def read_reply(reader: asyncio.StreamReader):
    """Reads one RESP2 reply: simple (str), error (ErrorReply), integer, bulk (bytes or None),
    array (list, nested to any depth, or None)."""
    try:
        line = await reader.readuntil(b"\r\n")
    except asyncio.IncompleteReadError:
        raise ConnectionResetError("connection closed by the server") from None
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode(errors="replace")
    if kind == b"-":
        return ErrorReply(body.decode(errors="replace"))
    if kind == b":":
        return int(body)
    if kind == b"$":
        n = int(body)
        if n < 0:
            return None
        try:
            return (await reader.readexactly(n + 2))[:-2]
        except asyncio.IncompleteReadError:
            raise ConnectionResetError("connection closed by the server") from None
    if kind == b"*":
        n = int(body)
        return None if n < 0 else [await read_reply(reader) for _ in range(n)]
    raise ValueError(f"not a RESP2 reply: {line[:60]!r}")


class Conn:
    """A client connection: TLS (or plain TCP) over asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    async def call(self, *commands: tuple, timeout: float = OP_TIMEOUT) -> list:
        """Sends the commands as one pipeline and reads one reply per command."""

        async def go():
            self.writer.write(b"".join(encode(*c) for c in commands))
            await self.writer.drain()
            return [await read_reply(self.reader) for _ in commands]

        return await asyncio.wait_for(go(), timeout)

    async def send(self, data: bytes, timeout: float = OP_TIMEOUT) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), timeout)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.transport.abort()


async def connect(ctx: dict, port: int, *, tls: bool, source: str = "127.0.0.1", limit: int = 1 << 16) -> Conn:
    kw: dict = {"limit": limit, "local_addr": (source, 0)}
    if tls:
        kw.update(ssl=ctx["ssl"], server_hostname=SERVER_NAME, ssl_handshake_timeout=CONNECT_TIMEOUT)
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, **kw), CONNECT_TIMEOUT)
    return Conn(reader, writer)


async def login(ctx: dict, user: str, *, source: str = "127.0.0.1") -> Conn:
    """A TLS connection to the main listener, logged in as USER."""
    c = await connect(ctx, ctx["main_port"], tls=True, source=source)
    try:
        (r,) = await c.call(("AUTH", user, ctx["passwords"][user]))
    except BaseException:
        c.abort()
        raise
    if r != "OK":
        c.abort()
        raise RuntimeError(f"AUTH {user}: {r!r}")
    return c


def tls_context(ca: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca)

