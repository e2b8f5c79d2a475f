#!/usr/bin/env python3
"""soak.py: redward under attack for a while; do well-behaved clients still get every answer?

scripts/soak.sh is the entry point (it installs what is missing and picks the defaults). This file
does the rest, in two roles:

  run     Starts a private redis-server and redward on free 127.0.0.1 ports (a TLS listener, a TLS
          listener that expects a PROXY protocol header, the admin port for /metrics), runs the load
          below for --duration, samples both processes every 5 s, and finally prints a table and a
          summary and writes DIR/report.md, DIR/soak.csv, DIR/soak.png (if matplotlib is there),
          DIR/metrics.txt, DIR/redward.log. Exit 0 when every well-behaved request succeeded and
          redward stayed up, 1 when not, 2 when the set-up failed, 130 when interrupted.
  attack  Started by `run` as a process of its own (so the attackers' Python CPU does not show up
          as the good clients' latency): all the attackers (soak_attack.py), printing their
          cumulative counters as one JSON line a second. Both speak RESP through soak_wire.py.

The load, all at once for the whole duration:
  good clients       --clients TLS connections as `app`: SET app:<n>:<i> / GET it back (the value is
                     checked), now and then a 3-command pipeline, and for a third of the clients a
                     MULTI/SET/INCR/EXEC (they move to their own upstream connection; the others stay
                     on the shared one, which the memory hogs use too), ~20 ms apart. An error reply, a
                     wrong value, a disconnect or no reply within 5 s is a failure of the soak.
  proxy-untrusted    20 connections (half from 127.0.0.1, half from 127.0.0.2) to the PROXY-protocol
  proxy-trusted      listener that send "PROXY TCP4 1.2.3.4" and then nothing.
  slow-tls           20 connections to the main listener that send part of a TLS ClientHello (or
                     nothing) and stall.
  garbage-*          TLS, sometimes logged in as `bulk`, then random bytes, a bulk length of ~1 TB, or
                     a 256 KiB inline line without an end.
  subscriber         5 clients SUBSCRIBE app:news and never read, while
  publisher          one client PUBLISHes 1 KiB messages to app:news at ~500/s.
  brute-force        AUTH app <wrong password> in a loop from 127.0.0.3 (locked out soon: expected).
  denied             `limited` (~lim:* +get +set, 200 commands/s) sends pipelines of 100
                     CONFIG GET * / GET app:x, both denied.
  memory-hog         10 clients as `bulk` pipeline 20 GETs of a 4 MiB value and never read.
  reserved-inline    `ops` (~* &* +@all) sends inline requests whose escapes spell redward's
                     reserved names (`PUBLISH "\x72edward:lockouts" 127.0.0.1` would lock the
                     good clients out), with limits.shared_state: upstream.
  denied-names       `limited` GETs distinct 1 MiB key names it may not read, ~10 a second.
  multi-client       `ops` queues CLIENT KILL USER proxy / CLIENT LIST in MULTI and asks for
                     CLIENT TRACKING ... REDIRECT to an id no client has: each must be refused.
The last three count every reply that is not the refusal as a breach; one breach fails the soak.
Each attack aims at something redward must bound (handshake slots, the PROXY-header reader, the
parser, output buffers, memory, the log, the shared upstream connection, the login path). A
connection that is never read can only learn that redward closed it by writing: held
connections send a PING every 2 s, and the write that fails marks the close.

Every loop ends at the deadline, every connect and read has a timeout, and every attacker sleeps a
little before it reconnects: steady pressure, not a fork bomb. Only the standard library is
needed (matplotlib for the plot); Redis's protocol is spoken by the small codec below.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import collections
import contextlib
import csv
import hashlib
import itertools
import json
import math
import os
import random
import resource
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import soak_attack
import soak_wire as wire
from soak_wire import OP_TIMEOUT, Conn, ErrorReply, login, nap, running, tls_context

SAMPLE_EVERY = 5.0  # seconds between samples of redward and Redis
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- good clients


class GoodStats:
    """What the well-behaved clients did; `ops` and `lat` are per sampling interval."""

    def __init__(self) -> None:
        self.ops = 0
        self.lat = array.array("d")  # seconds per request round trip, this interval
        self.errors: list[str] = []
        self.error_count = 0
        self.start = time.monotonic()
        # All latencies by client class: `own` clients (MULTI) have an upstream connection of
        # their own, `shared` ones share one with other clients (the memory hogs among them).
        self.by_class = {"shared": array.array("d"), "own": array.array("d")}
        self.worst = (0.0, 0.0, "")  # (latency s, when (s into the soak), what)

    def error(self, client: int, what: str) -> None:
        self.error_count += 1
        if len(self.errors) < 100:
            self.errors.append(f"t={time.monotonic() - self.start:6.1f}s client {client}: {what}")


class Wrong(Exception):
    """A reply that is not the one expected."""


async def good_client(n: int, ctx: dict, st: GoodStats) -> None:
    """SET/GET with checked values, an occasional pipeline or transaction, ~20 ms apart.
    An op is one round trip (a command, a pipeline or a transaction); its latency is recorded."""
    rng = random.Random(n)
    transactions = n % 3 == 0
    counter_key = f"app:{n}:ctr"
    counter: int | None = None  # last INCR result; unknown after a reconnect
    conn: Conn | None = None
    i = 0

    async def timed(*commands: tuple) -> list:
        t0 = time.perf_counter()
        replies = await conn.call(*commands)
        dt = time.perf_counter() - t0
        st.lat.append(dt)
        st.by_class["own" if transactions else "shared"].append(dt)
        st.ops += 1
        if dt > st.worst[0]:
            st.worst = (dt, time.monotonic() - st.start - dt, f"client {n} {commands[0][0]}")
        for r in replies:
            if isinstance(r, ErrorReply):
                raise Wrong(f"{commands[0][0]}: error reply {r!r}")
        return replies

    def check_counter(v) -> None:
        nonlocal counter
        if not isinstance(v, int) or (counter is not None and v != counter + 1):
            raise Wrong(f"INCR {counter_key}: got {v!r}, expected {None if counter is None else counter + 1}")
        counter = v

    while running():
        op = "connect"
        try:
            if conn is None:
                conn = await login(ctx, "app")
                counter = None
            i += 1
            key = f"app:{n}:{i % 1000}"  # a bounded key space: Redis's memory stays flat
            value = rng.randbytes(100)
            roll = rng.random()
            if transactions and roll < 0.05:
                op = f"MULTI/SET {key}/INCR/EXEC"
                r = await timed(("MULTI",), ("SET", key, value), ("INCR", counter_key), ("EXEC",))
                if r[:3] != ["OK", "QUEUED", "QUEUED"] or not isinstance(r[3], list) or len(r[3]) != 2 or r[3][0] != "OK":
                    raise Wrong(f"{op}: {r!r}")
                check_counter(r[3][1])
            elif roll < 0.10:
                op = f"pipeline SET/GET {key}/INCR"
                r = await timed(("SET", key, value), ("GET", key), ("INCR", counter_key))
                if r[0] != "OK" or r[1] != value:
                    raise Wrong(f"{op}: wrong value: {r[:2]!r}")
                check_counter(r[2])
            else:
                op = f"SET {key}"
                (r,) = await timed(("SET", key, value))
                if r != "OK":
                    raise Wrong(f"{op}: {r!r}")
                op = f"GET {key}"
                (r,) = await timed(("GET", key))
                if r != value:
                    raise Wrong(f"{op}: wrong value ({len(r) if isinstance(r, bytes) else r!r} bytes)")
            await nap(rng.uniform(0.015, 0.025))
            continue
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            st.error(n, f"{op}: no reply within {OP_TIMEOUT:g} s")
        except Wrong as e:
            st.error(n, str(e))
        except (OSError, EOFError, ValueError, RuntimeError) as e:
            st.error(n, f"{op}: {type(e).__name__}: {e}")
        # After any error: a new connection (the old one may be mid-transaction).
        if conn is not None:
            conn.abort()
            conn = None
        await nap(0.5)
    if conn is not None:
        conn.abort()


# ------------------------------------------------------------------------ processes and set-up


class SetupError(Exception):
    pass


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Services:
    """The processes started here, each in a session of its own (setsid). Their pids are also
    written to DIR/pids, so that soak.sh can stop them should this process be killed."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
        with open(log, "ab") as f:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f, start_new_session=True,
                                 env={**os.environ, **(env or {})})
        self.procs[name] = p
        with open(self.out / "pids", "a") as f:
            f.write(f"{p.pid}\n")
        return p

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        end = time.monotonic() + 10
        for p in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.1, end - time.monotonic()))
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def wait_port(port: int, proc: subprocess.Popen, name: str, log: Path, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SetupError(f"{name} exited (status {proc.returncode}) before listening on 127.0.0.1:{port}; "
                             f"end of {log}:\n{tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise SetupError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:g} s; end of {log}:\n{tail(log)}")


def tail(path: Path, n: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join("    " + l for l in path.read_text(errors="replace").splitlines()[-n:])
    return "    (no log)"


def sha256(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def redward_yaml(s: dict, legacy: bool, color: bool) -> str:
    """The soak's redward configuration. LEGACY leaves out what older binaries refuse
    (limits.max_client_memory, proxy_protocol.trusted: every peer may send a header then)."""
    tls = f'tls: {{ cert: "{s["certs"]}/server.crt", key: "{s["certs"]}/server.key" }}'
    pp = "proxy_protocol: true" if legacy else 'proxy_protocol: { trusted: ["127.0.0.2/32"] }'
    h = {u: sha256(p) for u, p in s["passwords"].items()}
    return f"""# Written by scripts/soak.py for one soak run.
listen:
  - address: "127.0.0.1:{s["main_port"]}"
    {tls}
  - address: "127.0.0.1:{s["proxy_port"]}"
    {tls}
    {pp}
upstream:
  address: "127.0.0.1:{s["redis_port"]}"
  username: proxy
  password_file: "{s["dir"]}/redis-proxy.pass"
users:
  - name: app
    rules: "on #{h["app"]} ~app:* &app:* +@all -@dangerous"
  - name: limited
    rules: "on #{h["limited"]} ~lim:* +get +set"
    commands_per_second: 200
  - name: bulk
    rules: "on #{h["bulk"]} ~big:* +@all -@dangerous"
  - name: ops
    rules: "on #{h["ops"]} ~* &* +@all"
admin:
  address: "127.0.0.1:{s["admin_port"]}"
limits:
  max_connections: 2000
  auth_failures_per_minute: 10
{"" if legacy else "  max_client_memory: 256mb" + chr(10) + "  shared_state: upstream" + chr(10)}  handshake_timeout: 5s
  auth_timeout: 5s
shutdown_grace: 2s
{"log: { color: never }" + chr(10) if color else ""}"""


def write_config(bin_: str, s: dict, legacy: bool, out: Path) -> list[str]:
    """Writes DIR/redward.yaml, checked with `redward check`; returns notes for the report.
    log.color is kept only if this binary accepts it."""
    path = out / "redward.yaml"
    last = ""
    for color in (True, False):
        path.write_text(redward_yaml(s, legacy, color))
        r = subprocess.run([bin_, "check", "--config", str(path)], capture_output=True, text=True, timeout=60)
        if r.returncode == 0:
            return [] if color else ["this redward does not know log.color; it runs with NO_COLOR=1 instead"]
        last = (r.stdout + r.stderr).strip()
    hint = "" if legacy else ("\n(if this redward predates limits.max_client_memory and proxy_protocol: "
                              "{trusted: [...]}, --legacy-config leaves them out)")
    raise SetupError(f"redward check rejects {path}:\n{last}{hint}")


def set_up(args: argparse.Namespace, out: Path, svc: Services) -> dict:
    """Certificates, passwords, redis-server, the redward config, redward. Returns the context
    the clients need (written, without the ssl context, to DIR/setup.json, mode 0600)."""
    bin_ = args.redward
    redis_port, main_port, proxy_port, admin_port = free_ports(4)
    passwords = {u: secrets.token_hex(16) for u in ("app", "limited", "bulk", "ops")}
    proxy_pw = secrets.token_hex(16)
    old = os.umask(0o077)
    try:
        (out / "redis-proxy.pass").write_text(proxy_pw)
        certs = out / "certs"
        r = subprocess.run([bin_, "gen-certs", "--out", str(certs)], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise SetupError(f"redward gen-certs failed:\n{r.stdout}{r.stderr}")
        s = {"dir": str(out), "certs": str(certs), "ca": str(certs / "ca.crt"), "redis_port": redis_port,
             "main_port": main_port, "proxy_port": proxy_port, "admin_port": admin_port, "passwords": passwords,
             "legacy": args.legacy_config}
        (out / "setup.json").write_text(json.dumps(s, indent=1))
        notes = write_config(bin_, s, args.legacy_config, out)
    finally:
        os.umask(old)

    log = out / "redis.log"
    redis = svc.start("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port),
                                "--protected-mode", "yes", "--save", "", "--appendonly", "no", "--dir", str(out),
                                "--user", "default", "off", "--user", "proxy", "on", "#" + sha256(proxy_pw),
                                "+@all", "~*", "&*"], log)
    wait_port(redis_port, redis, "redis-server", log)
    log = out / "redward.log"
    redward = svc.start("redward", [bin_, "--config", str(out / "redward.yaml")], log, env={"NO_COLOR": "1"})
    wait_port(main_port, redward, "redward", log)
    wait_port(admin_port, redward, "redward", log)
    s["notes"] = notes
    return s


# ---------------------------------------------------------------------------------- the soak


def proc_sample(pid: int) -> tuple[float, float, float] | None:
    """(RSS MiB, peak RSS MiB, CPU seconds) of a live process; None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        kb = {l.split(":")[0]: int(l.split()[1]) for l in status.splitlines() if l.startswith(("VmRSS:", "VmHWM:"))}
        return kb["VmRSS"] / 1024, kb["VmHWM"] / 1024, (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, KeyError, IndexError, ValueError):
        return None


def client_memory(ctx: dict) -> tuple[float | None, float | None]:
    """(MiB redward buffers for clients, clients evicted so far) from /metrics; None if unknown."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ctx['admin_port']}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None, None
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("redward_client_memory_bytes", "redward_clients_evicted_total"):
            with contextlib.suppress(ValueError):
                found[name] = float(value)
    held = found.get("redward_client_memory_bytes")
    return (held / 2**20 if held is not None else None), found.get("redward_clients_evicted_total")


async def soak(args: argparse.Namespace, ctx: dict, svc: Services, out: Path) -> dict:
    """Runs the load for the duration; returns the samples and the outcome."""
    main_task = asyncio.current_task()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    redward, redis = svc.procs["redward"], svc.procs["redis"]
    st = GoodStats()
    attack_stats: dict = {}
    res: dict = {"samples": [], "interrupted": False, "died_at": None, "good": st, "attack": attack_stats}

    def sample(t: float) -> None:
        rw, rd = proc_sample(redward.pid), proc_sample(redis.pid)
        held, evicted = client_memory(ctx)
        res["samples"].append({
            "t": t, "rw_rss": rw and rw[0], "rw_hwm": rw and rw[1], "rw_cpu": rw and rw[2], "redis_rss": rd and rd[0],
            "held": held, "evicted": evicted,
            "ops": st.ops, "errors": st.error_count, "lat": st.lat,
            # (garbage-* break the garbage connections down by payload: not counted twice)
            "attempted": sum(v.get("attempted", 0) for k, v in attack_stats.items() if not k.startswith("garbage-")),
            "kinds": {k: v.get("attempted", 0) for k, v in attack_stats.items()},
        })
        st.ops, st.lat = 0, array.array("d")

    attackers = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "attack", "--setup", str(out / "setup.json"), "--seconds", str(args.duration),
        stdout=asyncio.subprocess.PIPE, stderr=open(out / "attackers.log", "ab"), start_new_session=True)
    with open(out / "pids", "a") as f:
        f.write(f"{attackers.pid}\n")

    async def read_attack_stats():
        async for line in attackers.stdout:
            with contextlib.suppress(ValueError):
                latest = json.loads(line)
                attack_stats.clear()
                attack_stats.update(latest)

    reader = asyncio.create_task(read_attack_stats())
    t0 = time.monotonic()
    wire.set_deadline(t0 + args.duration)
    st.start = t0
    sample(0.0)
    clients = [asyncio.create_task(good_client(n, ctx, st)) for n in range(args.clients)]
    try:
        next_t = t0
        while running():
            next_t += SAMPLE_EVERY
            await asyncio.sleep(max(0.0, min(next_t, wire.DEADLINE) - time.monotonic()))
            sample(time.monotonic() - t0)
            if redward.poll() is not None:
                res["died_at"] = time.monotonic() - t0
                print(f"soak: redward exited (status {redward.returncode}) at t={res['died_at']:.0f}s; stopping the load",
                      file=sys.stderr)
                wire.set_deadline(time.monotonic())
        # Let the good clients finish the request in hand (each has a 5 s timeout).
        await asyncio.wait(clients, timeout=OP_TIMEOUT + 5)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(attackers.wait(), 15)
    except asyncio.CancelledError:
        res["interrupted"] = True
        print("soak: interrupted; stopping and reporting what was measured", file=sys.stderr)
        wire.set_deadline(time.monotonic())
    for t in clients:
        t.cancel()
    await asyncio.gather(*clients, return_exceptions=True)
    if attackers.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            attackers.terminate()
        await attackers.wait()
    with contextlib.suppress(TimeoutError, asyncio.CancelledError):
        await asyncio.wait_for(reader, 5)
    res["duration"] = time.monotonic() - t0
    res["attack_rc"] = attackers.returncode
    res["alive"] = redward.poll() is None
    return res


# ------------------------------------------------------------------------------------- report


def pct(values, p: float) -> float | None:
    if not len(values):
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


def fmt(v, spec: str = ".1f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def intervals(samples: list[dict], every: float) -> list[dict]:
    """Samples grouped into windows of EVERY seconds (the first sample, at t=0, is the base)."""
    rows, prev, group = [], samples[0], []
    for s in samples[1:]:
        group.append(s)
        if s["t"] >= (len(rows) + 1) * every - 0.5 or s is samples[-1]:
            dt = s["t"] - prev["t"]
            cpu = (s["rw_cpu"] - prev["rw_cpu"]) / dt * 100 if dt > 0 and s["rw_cpu"] is not None and prev["rw_cpu"] is not None else None
            lat = [x for g in group for x in g["lat"]]
            ops = sum(g["ops"] for g in group)
            rss = [g["rw_rss"] for g in group if g["rw_rss"] is not None]
            held = [g["held"] for g in group if g.get("held") is not None]
            rows.append({
                "t": s["t"], "rw_rss": max(rss) if rss else None, "cpu": cpu,
                "held": max(held) if held else None, "evicted": s.get("evicted"),
                "redis_rss": s["redis_rss"], "ops": ops, "ops_s": ops / dt if dt > 0 else 0,
                "errors": s["errors"] - prev["errors"], "p99": lat and pct(lat, 99) * 1000,
                "max": lat and max(lat) * 1000, "attempted": s["attempted"] - prev["attempted"],
            })
            prev, group = s, []
    return rows


def summarize_attacks(stats: dict) -> list[str]:
    lines = ["| attack | connections | closed by redward | mean s to close | still open (our cap or the end) | connect/IO failed | other |",
             "|---|---:|---:|---:|---:|---:|---|"]
    fixed = {"attempted", "closed", "closed_secs", "left_open", "connect_or_io_failed"}
    for kind in sorted(stats):
        c = stats[kind]
        closed = c.get("closed", 0)
        mean = c["closed_secs"] / closed if closed else None
        other = ", ".join(f"{k}={v}" for k, v in sorted(c.items()) if k not in fixed)
        lines.append(f"| {kind} | {c.get('attempted', 0)} | {closed} | {fmt(mean)} | {c.get('left_open', 0)} | "
                     f"{c.get('connect_or_io_failed', 0)} | {other} |")
    return lines


def report(args: argparse.Namespace, ctx: dict, res: dict, out: Path, metrics: str | None) -> int:
    samples, st = res["samples"], res["good"]
    duration = max(res["duration"], 1e-9)
    every = 30.0 if args.duration >= 300 else max(5.0, 5.0 * round(args.duration / 6 / 5))
    rows = intervals(samples, every) if len(samples) > 1 else []
    all_lat = [x for s in samples for x in s["lat"]]
    total_ops = sum(s["ops"] for s in samples)
    cpus = [s for s in samples if s["rw_cpu"] is not None]
    mean_cpu = (cpus[-1]["rw_cpu"] - cpus[0]["rw_cpu"]) / (cpus[-1]["t"] - cpus[0]["t"]) * 100 if len(cpus) > 1 and cpus[-1]["t"] > 0 else None
    peak = max([s[k] for s in samples for k in ("rw_rss", "rw_hwm") if s[k] is not None], default=None)
    log_lines, log_kinds = log_summary(out / "redward.log")
    alive = res["alive"]

    md = [f"# redward soak, {time.strftime('%Y-%m-%d %H:%M')}", "",
          f"binary `{args.redward}`{' (--legacy-config)' if args.legacy_config else ''}, {args.clients} well-behaved "
          f"clients, {res['duration']:.0f} s of {args.duration:g} s{' (interrupted)' if res['interrupted'] else ''}; "
          f"{os.cpu_count()} CPUs", ""]
    md += [f"note: {n}" for n in ctx.get("notes", [])]
    md += ["| time | redward RSS MiB | client buffers MiB (max) | clients evicted | redward CPU % | Redis RSS MiB | good ops/s | good errors | good p99 ms | good max ms | attacker conns |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        md.append(f"| {r['t']:.0f}s | {fmt(r['rw_rss'])} | {fmt(r['held'])} | {fmt(r['evicted'], '.0f')} | {fmt(r['cpu'], '.0f')} | {fmt(r['redis_rss'])} | {r['ops_s']:.0f} | "
                  f"{r['errors']} | {fmt(r['p99'] or None)} | {fmt(r['max'] or None, '.0f')} | {r['attempted']} |")
    p50, p99 = pct(all_lat, 50), pct(all_lat, 99)
    md += ["", "## Summary", "",
           f"- well-behaved ops (round trips): {total_ops} ({total_ops / duration:.0f}/s)",
           f"- well-behaved errors: {st.error_count}{'' if st.error_count == 0 else '  <-- MUST be 0'}",
           f"- latency: p50 {fmt(p50 and p50 * 1000, '.2f')} ms, p99 {fmt(p99 and p99 * 1000, '.2f')} ms, "
           f"max {st.worst[0] * 1000:.1f} ms (sent at t={st.worst[1]:.1f}s by {st.worst[2]})",
           "- p99 by client class: " + ", ".join(
               f"{'MULTI clients (own upstream connection)' if k == 'own' else 'the others (shared upstream connection)'} {fmt(pct(v, 99) and pct(v, 99) * 1000, '.2f')} ms ({len(v)} ops)"
               for k, v in st.by_class.items()),
           f"- redward peak RSS: {fmt(peak)} MiB; mean CPU: {fmt(mean_cpu, '.0f')} % of one core",
           f"- redward alive at the end: {'yes' if alive else 'NO'}"
           + (f" (it exited at t={res['died_at']:.0f}s)" if res["died_at"] is not None else ""),
           f"- redward.log: {log_lines} lines ({log_lines / duration:.0f}/s)"
           + ("; most frequent: " + "; ".join(f"{n} x `{m}`" for m, n in log_kinds) if log_kinds else "")]
    if st.errors:
        md += ["", f"### First {min(20, len(st.errors))} well-behaved errors", ""]
        md += [f"    {e}" for e in st.errors[:20]]
    breaches = sum(v.get("breach", 0) for v in res["attack"].values())
    md.insert(md.index("## Summary") + 4, f"- attacks that got through (breaches): {breaches}"
              + ("" if breaches == 0 else "  <-- MUST be 0"))
    md += ["", "## Attackers", ""] + summarize_attacks(res["attack"])
    if res["attack_rc"] not in (0, None, -signal.SIGTERM) or not res["attack"]:
        md += ["", f"WARNING: the attackers' process ended with status {res['attack_rc']}; see attackers.log"]
    md += ["", "## /metrics lines matching evict|refused|denied|rate_limited|client_memory", ""]
    if metrics is None:
        md.append("(not scraped: redward was not running)")
    else:
        hits = [l for l in metrics.splitlines() if not l.startswith("#") and any(w in l for w in ("evict", "refused", "denied", "rate_limited", "client_memory"))]
        md += [f"    {l}" for l in hits] or ["(none)"]

    plot_note = plot(samples, out / "soak.png")
    md += ["", f"Files in {out}: report.md, soak.csv, {'soak.png, ' if plot_note is None else ''}metrics.txt, redward.log, "
           f"attackers.log, redis.log, redward.yaml"]
    if plot_note:
        md.append(f"plot skipped: {plot_note}")
    text = "\n".join(md) + "\n"
    (out / "report.md").write_text(text)
    write_csv(samples, out / "soak.csv")
    print(text)
    if res["interrupted"]:
        return 130
    return 0 if st.error_count == 0 and alive and breaches == 0 else 1


def log_summary(path: Path) -> tuple[int, list[tuple[str, int]]]:
    """Line count of redward's log and its three most frequent messages (target and text,
    without the time stamp and the key=value fields)."""
    kinds: collections.Counter = collections.Counter()
    lines = 0
    with contextlib.suppress(OSError), open(path, "rb") as f:
        for raw in f:
            lines += 1
            words = raw.decode(errors="replace").split()[1:]  # drop the time stamp
            kinds[" ".join(itertools.takewhile(lambda w: "=" not in w, words))[:80]] += 1
    return lines, kinds.most_common(3)


def write_csv(samples: list[dict], path: Path) -> None:
    kinds = sorted({k for s in samples for k in s.get("kinds", {})})
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_s", "redward_rss_mib", "redward_cpu_pct", "redis_rss_mib", "good_ops", "good_ops_per_s",
                    "good_errors", "good_p99_ms", "attacker_connections"] + [f"{k}_attempted" for k in kinds])
        for prev, s in zip(samples, samples[1:]):
            dt = s["t"] - prev["t"]
            cpu = (s["rw_cpu"] - prev["rw_cpu"]) / dt * 100 if dt > 0 and s["rw_cpu"] is not None and prev["rw_cpu"] is not None else None
            p99 = pct(s["lat"], 99)
            w.writerow([f"{s['t']:.1f}", fmt(s["rw_rss"]), fmt(cpu), fmt(s["redis_rss"]), s["ops"],
                        f"{s['ops'] / dt:.1f}" if dt > 0 else "", s["errors"] - prev["errors"],
                        fmt(p99 and p99 * 1000, ".2f"), s["attempted"] - prev["attempted"]]
                       + [s.get("kinds", {}).get(k, 0) for k in kinds])


def plot(samples: list[dict], path: Path) -> str | None:
    """DIR/soak.png: redward RSS, CPU %, good-client p99 against time. Returns why not, or None."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return "matplotlib is not installed (python3 -m pip install matplotlib)"
    pairs = list(zip(samples, samples[1:]))
    t = [s["t"] for _, s in pairs]
    rss = [s["rw_rss"] for _, s in pairs]
    redis_rss = [s["redis_rss"] for _, s in pairs]
    cpu = [(s["rw_cpu"] - p["rw_cpu"]) / (s["t"] - p["t"]) * 100
           if s["rw_cpu"] is not None and p["rw_cpu"] is not None and s["t"] > p["t"] else None for p, s in pairs]
    p99 = [pct(s["lat"], 99) * 1000 if len(s["lat"]) else None for _, s in pairs]
    fig, ax = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    ax[0].plot(t, rss, marker=".", label="redward")
    ax[0].plot(t, redis_rss, linestyle=":", label="redis-server")
    ax[0].set_ylabel("RSS MiB")
    ax[0].legend(loc="upper left")
    ax[1].plot(t, cpu, marker=".", color="tab:red")
    ax[1].set_ylabel("redward CPU %")
    ax[2].plot(t, p99, marker=".", color="tab:green")
    ax[2].set_ylabel("good-client p99 ms (log)")
    ax[2].set_yscale("log")
    ax[2].yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax[2].yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax[2].set_xlabel("seconds")
    for a in ax:
        a.grid(alpha=0.3, which="both")
    for a, values in ((ax[0], rss + redis_rss), (ax[1], cpu)):
        a.set_ylim(0, max([v for v in values if v is not None], default=0) * 1.15 or 1)
    ax[0].set_title("redward soak (5 s samples)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def scrape_metrics(ctx: dict, out: Path) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ctx['admin_port']}/metrics", timeout=5) as r:
            text = r.read().decode(errors="replace")
    except OSError as e:
        print(f"soak: could not read /metrics: {e}", file=sys.stderr)
        return None
    (out / "metrics.txt").write_text(text)
    return text


def run_role(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
    svc = Services(out)
    try:
        ctx = set_up(args, out, svc)
        ctx["ssl"] = tls_context(ctx["ca"])
        print(f"soak: redward on 127.0.0.1:{ctx['main_port']} (PROXY-protocol listener :{ctx['proxy_port']}, "
              f"admin :{ctx['admin_port']}), Redis on :{ctx['redis_port']}; {args.clients} good clients and the "
              f"attackers for {args.duration:g} s; results in {out}", file=sys.stderr)
        res = asyncio.run(soak(args, ctx, svc, out))
        metrics = scrape_metrics(ctx, out) if res["alive"] else None
    except SetupError as e:
        print(f"soak: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("soak: interrupted during set-up", file=sys.stderr)
        return 130
    finally:
        svc.stop_all()
    return report(args, ctx, res, out, metrics)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="role", required=True)
    r = sub.add_parser("run", help="the soak (what scripts/soak.sh runs)")
    r.add_argument("--redward", required=True, help="redward binary")
    r.add_argument("--out", required=True, help="directory for the results")
    r.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    r.add_argument("--clients", type=int, default=50, help="well-behaved clients (default 50)")
    r.add_argument("--legacy-config", action="store_true",
                   help="leave out limits.max_client_memory and proxy_protocol.trusted (older binaries)")
    a = sub.add_parser("attack", help="internal: the attackers (started by run)")
    a.add_argument("--setup", required=True)
    a.add_argument("--seconds", type=float, required=True)
    args = ap.parse_args()
    if args.role == "run":
        if args.duration <= 0 or args.clients < 1:
            ap.error("--duration and --clients must be positive")
        return run_role(args)
    return soak_attack.attack_role(args)


if __name__ == "__main__":
    sys.exit(main())
