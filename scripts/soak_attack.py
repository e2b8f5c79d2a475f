"""soak_attack.py: the soak's attackers (see scripts/soak.py), run as a process of their own so
their Python CPU does not show up as the well-behaved clients' latency. Each prints nothing; the
counters go to stdout as one JSON line a second, read by soak.py."""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import secrets
import ssl
import sys
import time
import traceback
from pathlib import Path

import soak_wire as wire
from soak_wire import MIB, SERVER_NAME, Conn, connect, encode, left, login, nap, running, tls_context

# ------------------------------------------------------------------------------------ attackers

STATS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
HOLD_CAP = 30.0  # an attacker waiting to be closed gives up after this long ("left open")
HOG_CAP = 120.0
_reported: collections.Counter = collections.Counter()


def closed_after(kind: str, seconds: float | None) -> None:
    """Counts how one attacking connection ended: closed by redward after SECONDS, or left open."""
    if seconds is None:
        STATS[kind]["left_open"] += 1
    else:
        STATS[kind]["closed"] += 1
        STATS[kind]["closed_secs"] += seconds


async def wait_closed(c: Conn, cap: float = HOLD_CAP) -> float | None:
    """Reads and discards until redward closes the connection; seconds it took, or None."""
    t0 = time.monotonic()
    while True:
        budget = min(t0 + cap - time.monotonic(), left())
        if budget <= 0:
            return None
        try:
            data = await asyncio.wait_for(c.reader.read(1 << 16), budget)
        except TimeoutError:
            return None
        except OSError:  # reset, or a TLS stream cut without close_notify
            return time.monotonic() - t0
        if not data:
            return time.monotonic() - t0


async def hold_unread(c: Conn, cap: float | None = None) -> float | None:
    """Holds a connection without reading it until redward closes it; seconds it took, or None.
    Only a write can find that out: a PING every 2 s (after redward has closed the socket, the
    kernel answers it with a reset, and the next write fails)."""
    t0 = time.monotonic()
    while running() and (cap is None or time.monotonic() - t0 < cap):
        await nap(2.0)
        if c.reader.exception() is not None or c.writer.transport.is_closing():
            return time.monotonic() - t0
        c.writer.write(encode("PING"))
        try:
            await asyncio.wait_for(c.writer.drain(), 5.0)
        except TimeoutError:
            continue  # redward is not reading us (yet): still open
        except OSError:
            return time.monotonic() - t0
    return None


async def attacker(kind: str, pause: float, once) -> None:
    """Runs ONCE (one connection's life) again and again, PAUSE seconds apart, until the deadline.
    Each try counts as a connection attempted; a failed connect or login is counted too."""
    while running():
        STATS[kind]["attempted"] += 1
        try:
            await once()
        except asyncio.CancelledError:
            raise
        except (TimeoutError, OSError, RuntimeError) as e:
            STATS[kind]["connect_or_io_failed"] += 1
            if _reported[kind] < 3 and running():
                _reported[kind] += 1
                print(f"{kind}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        except Exception:  # a bug here must not stop the pressure; it is logged
            STATS[kind]["client_bugs"] += 1
            if _reported[kind + "/bug"] < 3:
                _reported[kind + "/bug"] += 1
                traceback.print_exc(file=sys.stderr)
        await nap(pause)


async def partial_proxy_header(ctx: dict, source: str) -> None:
    """Half a PROXY v1 header and then silence, to the PROXY-protocol listener. From 127.0.0.2
    (trusted) redward must give up after handshake_timeout; from 127.0.0.1 (not trusted) at once.
    (A reader that spins on the half header burns a core: see redward's CPU column.)"""
    kind = "proxy-trusted" if source == "127.0.0.2" else "proxy-untrusted"

    async def once():
        c = await connect(ctx, ctx["proxy_port"], tls=False, source=source)
        await send_then_hold(kind, c, b"PROXY TCP4 1.2.3.4")

    await attacker(kind, 0.2, once)


async def send_then_hold(kind: str, c: Conn, data: bytes) -> None:
    """Sends DATA, then waits for redward to close the connection; counts how it ended."""
    try:
        await c.send(data)
        closed_after(kind, await wait_closed(c))
    except OSError:
        closed_after(kind, 0.0)
    finally:
        c.abort()


def client_hello() -> bytes:
    """The bytes of a real TLS ClientHello (made with a memory BIO; nothing is sent)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname=SERVER_NAME)
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


async def slow_tls_handshake(ctx: dict, rng: random.Random) -> None:
    """A plain TCP connection to the TLS listener that sends the first few bytes of a
    ClientHello (or nothing) and stalls: redward must close it after handshake_timeout."""
    kind = "slow-tls"
    hello = client_hello()

    async def once():
        c = await connect(ctx, ctx["main_port"], tls=False)
        await send_then_hold(kind, c, hello[: rng.choice([0, 1, 5, 11, rng.randrange(len(hello))])])

    await attacker(kind, 0.2, once)


async def garbage_resp(ctx: dict, rng: random.Random) -> None:
    """TLS, logged in as `bulk` half the time (so both parsers see it), then one of: random bytes,
    a bulk length of ~1 TB, or a 256 KiB inline line without an end. Redward should close the
    connection (an unauthenticated one at the latest after auth_timeout). Random bytes that
    happen to parse as inline commands just get error replies: then the connection stays open
    until we give up (counted as left open)."""
    payloads = {
        "garbage-random": lambda: rng.randbytes(1024),
        "garbage-bulklen": lambda: b"*3\r\n$999999999999\r\n",
        "garbage-inline": lambda: b"A" * (256 * 1024),
    }

    async def once():
        kind = rng.choice(list(payloads))
        STATS[kind]["attempted"] += 1
        if rng.random() < 0.5:
            c = await login(ctx, "bulk")
        else:
            c = await connect(ctx, ctx["main_port"], tls=True)
        t0 = time.monotonic()
        try:
            await c.send(payloads[kind](), timeout=10.0)
            closed_after(kind, await wait_closed(c, cap=12.0))
        except OSError:
            closed_after(kind, time.monotonic() - t0)
        finally:
            c.abort()

    await attacker("garbage", 0.1, once)


async def unread_subscriber(ctx: dict) -> None:
    """AUTH app, SUBSCRIBE app:news, and never read: redward must cap what it buffers for it
    (output_buffer_limit) and close it rather than grow."""
    kind = "subscriber"

    async def once():
        c = await login(ctx, "app")
        try:
            await c.send(encode("SUBSCRIBE", "app:news"))
            closed_after(kind, await hold_unread(c))
        finally:
            c.abort()

    await attacker(kind, 1.0, once)


async def publisher(ctx: dict) -> None:
    """PUBLISHes 1 KiB messages to app:news at ~500/s (10 every 20 ms), reading its replies."""
    kind = "publisher"
    message = b"x" * 1024

    async def once():
        c = await login(ctx, "app")
        try:
            next_t = time.monotonic()
            while running():
                await c.call(*[("PUBLISH", "app:news", message)] * 10)
                STATS[kind]["messages"] += 10
                next_t = max(next_t + 0.02, time.monotonic() - 1.0)
                await nap(next_t - time.monotonic())
        finally:
            c.abort()

    await attacker(kind, 1.0, once)


async def brute_force(ctx: dict) -> None:
    """AUTH app <wrong password>, 20 tries per connection, ~20 a second, from 127.0.0.3: that
    address gets locked out (auth_failures_per_minute); the good clients on 127.0.0.1 must not."""
    kind = "brute-force"

    async def once():
        c = await connect(ctx, ctx["main_port"], tls=True, source="127.0.0.3")
        try:
            for _ in range(20):
                if not running():
                    break
                (r,) = await c.call(("AUTH", "app", "wrong-" + secrets.token_hex(8)))
                STATS[kind]["auth_tries"] += 1
                text = str(r).lower()
                STATS[kind]["locked_out" if "too many" in text else "wrongpass" if "wrongpass" in text else "other_reply"] += 1
                await nap(0.05)
        finally:
            c.abort()

    await attacker(kind, 0.1, once)


async def denied_flood(ctx: dict) -> None:
    """User `limited` (~lim:* +get +set, commands_per_second 200) sends pipelines of 100
    CONFIG GET * / GET app:x, all denied; redward must answer them without Redis and without a
    log line each."""
    kind = "denied"
    pipeline = [("CONFIG", "GET", "*") if k % 2 == 0 else ("GET", "app:x") for k in range(100)]

    async def once():
        c = await login(ctx, "limited")
        try:
            while running():
                for r in await c.call(*pipeline, timeout=10.0):
                    text = str(r)
                    STATS[kind]["commands"] += 1
                    STATS[kind]["noperm" if text.startswith("NOPERM") else "rate_limited" if "rate limit" in text else "other_reply"] += 1
                await nap(0.05)
        finally:
            c.abort()

    await attacker(kind, 0.5, once)


async def memory_hog(ctx: dict) -> None:
    """As `bulk`: 20 GETs of the 4 MiB big:v in one pipeline (80 MiB of replies), never read.
    Redward must not buffer it all (shared_reply_buffer / max_client_memory / write timeout):
    it should close the connection. Reconnects 1 s after the close."""
    kind = "memory-hog"

    async def once():
        c = await login(ctx, "bulk")
        try:
            await c.send(encode("GET", "big:v") * 20)
            closed_after(kind, await hold_unread(c, cap=HOG_CAP))
        finally:
            c.abort()

    await attacker(kind, 1.0, once)


async def raw_calls(c: Conn, data: bytes, n: int, timeout: float = 10.0) -> list:
    """Sends DATA as it is (inline lines, arrays) and reads N replies."""
    async def go():
        c.writer.write(data)
        await c.writer.drain()
        return [await wire.read_reply(c.reader) for _ in range(n)]

    return await asyncio.wait_for(go(), timeout)


def judge(kind: str, reply, *refused: str) -> None:
    """Counts a reply to an attack that must be refused: an error starting with one of REFUSED,
    or anything else, a breach (the soak fails on any)."""
    ok = isinstance(reply, wire.ErrorReply) and str(reply).startswith(refused)
    STATS[kind]["refused" if ok else "breach"] += 1
    if not ok and STATS[kind]["breach"] <= 3:
        print(f"{kind}: breach: {reply!r}", file=sys.stderr, flush=True)


# Inline requests whose arguments are redward's reserved names only once unescaped (Redis's
# sdssplitargs); the first, if it got through, would lock 127.0.0.1 (the good clients) out on
# every instance.
RESERVED_INLINE = [
    b'PUBLISH "\\x72edward:lockouts" 127.0.0.1\r\n',
    b'SET "\\x72edward:lock:127.0.0.1" 1\r\n',
    b'GET "r\\x65dward:auth:127.0.0.1"\r\n',
    b'SUBSCRIBE "\\x72edward:lockouts"\r\n',
]


async def reserved_inline(ctx: dict) -> None:
    """As `ops` (~* &* +@all): the inline escapes above, ~20 a second; each must get NOPERM."""
    kind = "reserved-inline"

    async def once():
        c = await login(ctx, "ops")
        try:
            while running():
                for attack in RESERVED_INLINE:
                    (r,) = await raw_calls(c, attack, 1)
                    judge(kind, r, "NOPERM")
                await nap(0.2)
        finally:
            c.abort()

    await attacker(kind, 0.5, once)


async def denied_names(ctx: dict) -> None:
    """As `limited`: GETs of distinct 1 MiB key names it may not read, two per pipeline, ~10 a
    second: what redward keeps about each denial (ACL LOG, audit) must stay a bounded prefix."""
    kind = "denied-names"
    pad = b"x" * MIB

    async def once():
        c = await login(ctx, "limited")
        try:
            n = 0
            while running():
                names = [b"secret:%d:" % (n + k) + pad for k in range(2)]
                n += 2
                for r in await c.call(*[("GET", name) for name in names], timeout=10.0):
                    # `limited` has a command rate, which the `denied` flood spends too.
                    judge(kind, r, "NOPERM", "ERR command rate limit exceeded")
                await nap(0.2)
        finally:
            c.abort()

    await attacker(kind, 0.5, once)


# Requests that would, forwarded to Redis, kill redward's own upstream connections (its upstream
# user is `proxy`), list Redis's clients, or point invalidations at one of redward's connections:
# each must be refused (a transaction's EXEC then answers EXECABORT). Array and inline forms.
MULTI_CLIENT = [
    (encode("MULTI") + encode("CLIENT", "KILL", "USER", "proxy") + encode("EXEC"), 3),
    (b"MULTI\r\nCLIENT KILL SKIPME no\r\nEXEC\r\n", 3),
    (encode("MULTI") + encode("CLIENT", "LIST") + encode("EXEC"), 3),
    (encode("CLIENT", "TRACKING", "on", "REDIRECT", "999999"), 1),
]


async def multi_client(ctx: dict) -> None:
    """As `ops` (+@all): the requests above, ~10 a second."""
    kind = "multi-client"

    async def once():
        c = await login(ctx, "ops")
        try:
            while running():
                for attack, n in MULTI_CLIENT:
                    replies = await raw_calls(c, attack, n)
                    if n == 1:
                        # An id none of redward's clients has: Redis's own answer, and never
                        # one of redward's connections.
                        judge(kind, replies[0], "ERR The client ID you want redirect to does not exist")
                        continue
                    _, refused, exec_ = replies
                    judge(kind, refused, "ERR redward answers")
                    judge(kind, exec_, "EXECABORT")
                await nap(0.1)
        finally:
            c.abort()

    await attacker(kind, 0.5, once)


async def attack_main(ctx: dict, seconds: float) -> None:
    wire.set_deadline(time.monotonic() + seconds)
    # The value the hogs ask for, once.
    c = await login(ctx, "bulk")
    (r,) = await c.call(("SET", "big:v", os.urandom(4 * MIB)), timeout=30.0)
    c.abort()
    if r != "OK":
        raise RuntimeError(f"SET big:v: {r!r}")
    rng = random.Random(7)
    tasks = [asyncio.create_task(t) for t in (
        *(partial_proxy_header(ctx, src) for src in ("127.0.0.1", "127.0.0.2") for _ in range(10)),
        *(slow_tls_handshake(ctx, random.Random(rng.random())) for _ in range(20)),
        *(garbage_resp(ctx, random.Random(rng.random())) for _ in range(4)),
        *(unread_subscriber(ctx) for _ in range(5)),
        publisher(ctx),
        *(brute_force(ctx) for _ in range(2)),
        *(denied_flood(ctx) for _ in range(2)),
        *(memory_hog(ctx) for _ in range(10)),
        # The second round's attacks; an older binary (--legacy-config) has no defence to test.
        *(() if ctx.get("legacy") else (reserved_inline(ctx), denied_names(ctx), multi_client(ctx))),
    )]

    def report() -> None:
        print(json.dumps({k: dict(v) for k, v in STATS.items()}), flush=True)

    while running():
        await nap(1.0)
        report()
    # Loops end at the deadline by themselves (and count how their connection ended); a connect
    # or login still in progress is cut short.
    await asyncio.wait(tasks, timeout=2.0)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    report()


def attack_role(args: argparse.Namespace) -> int:
    ctx = json.loads(Path(args.setup).read_text())
    ctx["ssl"] = tls_context(ctx["ca"])
    asyncio.run(attack_main(ctx, args.seconds))
    return 0
