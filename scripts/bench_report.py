#!/usr/bin/env python3
"""Measurement and report side of scripts/bench.sh (standard library only).

bench.sh sets up Redis and the TLS proxies and then calls this file; each subcommand also works
on its own:

  ports N                     print N distinct free ports on 127.0.0.1
  waitport PORT SECS PID      wait until 127.0.0.1:PORT accepts; exit 2 at once if PID dies
  tlsinfo PORT CA             the TLS version and cipher a listener negotiates
  run --targets FILE ...      the interleaved redis-benchmark rounds -> runs.csv, meta.json
  report DIR                  markdown tables from DIR/runs.csv + DIR/meta.json -> DIR/report.md
  idle --port P ...           hold N idle authenticated TLS connections, report the proxy's RSS

Passwords come from the environment (BENCH_PASSWORD, BENCH_ADMIN_PASSWORD), never from argv.

`run` reads, around every redis-benchmark run: CPU time (utime+stime, /proc/PID/stat) of every
process in the proxy's session and in redis-server's session (a process and anything it forks;
reaped children via cutime+cstime of the leader), the client's CPU (getrusage of children), the
machine's busy time (/proc/stat, minus the above = background load), and Redis's INFO counters:
every request must reach Redis, and Redis must have answered no error.
"""
import argparse
import csv
import json
import os
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

TICK = os.sysconf("SC_CLK_TCK")
CLIENTS = 50
PEERS = ("redis-tls", "stunnel", "haproxy")  # the TLS options redward is compared with
QUIET_CORES = 0.25

# name -> redis-benchmark arguments and a first guess of ops/s (for the warm-up's -n)
# get-16KiB reads one seeded 16 KiB key by name, so the 64 B GETs never read a big value and no
# SELECT is needed (the restricted --acl-user rules have no @keyspace).
WORKLOADS = {
    "set-P1": dict(args=["-t", "set", "-P", "1", "-d", "64"], cmd="set", guess=20000),
    "get-P1": dict(args=["-t", "get", "-P", "1", "-d", "64"], cmd="get", guess=20000),
    "set-P16": dict(args=["-t", "set", "-P", "16", "-d", "64"], cmd="set", guess=200000),
    "get-P16": dict(args=["-t", "get", "-P", "16", "-d", "64"], cmd="get", guess=200000),
    "get-16KiB": dict(args=["-P", "1", "-d", "16384", "GET", "key:16k"], cmd="get", guess=10000),
    "churn": dict(args=["-t", "get", "-P", "1", "-d", "64", "-k", "0"], cmd="get", guess=700),
}
DEFAULT_WORKLOADS = list(WORKLOADS)
# stderr lines of redis-benchmark that are not errors
BENIGN = ("WARNING: Keepalive disabled", "WARNING: Could not fetch server CONFIG")
FIELDS = ["round", "workload", "target", "n", "rps", "avg_ms", "p50_ms", "p95_ms", "p99_ms",
          "wall_s", "proxy_cpu_s", "redis_cpu_s", "client_cpu_s", "bg_cores", "reached",
          "conns", "exit", "error"]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def num(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ------------------------------------------------------------------------------ processes
def stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()  # [0] = field 3 (state)


def session_pids(sid):
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                st = stat_fields(d)
            except (OSError, IndexError):
                continue
            if int(st[3]) == sid and st[0] != "Z":
                pids.append(int(d))
    return pids


def session_cpu(sid):
    """CPU seconds of session `sid`: live members' utime+stime, plus the leader's reaped children."""
    ticks = 0
    for pid in session_pids(sid):
        try:
            st = stat_fields(pid)
        except (OSError, IndexError):
            continue
        ticks += int(st[11]) + int(st[12])  # utime, stime
        if pid == sid:
            ticks += int(st[13]) + int(st[14])  # cutime, cstime
    return ticks / TICK


def session_mem_kib(sid, field):
    """Sum of a /proc/PID/status field (VmRSS, VmHWM) over the session, in KiB."""
    total = 0
    for pid in session_pids(sid):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return total


def alive(pid):
    try:
        return stat_fields(pid)[0] != "Z"
    except (OSError, IndexError):
        return False


def busy_seconds():
    """Busy CPU time of the whole machine (user+nice+system+irq+softirq)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / TICK


def own_cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime, c.ru_utime + c.ru_stime


# ------------------------------------------------------------------------------ small tools
def free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_port(port, secs, pid):
    end = time.monotonic() + secs
    while time.monotonic() < end:
        if pid and not alive(pid):
            return 2
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return 0
        except OSError:
            time.sleep(0.05)
    return 1


def tls_context(ca):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False  # the cert names localhost and 127.0.0.1; we verify the chain
    return ctx


def tls_info(port, ca):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with tls_context(ca).wrap_socket(raw, server_hostname="localhost") as s:
                return f"{s.version()} {s.cipher()[0]}"
    except (OSError, ssl.SSLError) as e:
        return f"handshake failed: {e}"


def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Redis:
    """Minimal RESP client for the plaintext port: AUTH, SET, INFO."""

    def __init__(self, port, user, password):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        self.call("AUTH", user, password)

    def _fill(self, need):
        while len(self.buf) < need or (need == 0 and b"\r\n" not in self.buf):
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("redis closed the connection")
            self.buf += chunk

    def call(self, *args):
        self.sock.sendall(resp(*args))
        self._fill(0)
        line, self.buf = self.buf.split(b"\r\n", 1)
        kind, rest = line[:1], line[1:].decode(errors="replace")
        if kind == b"-":
            raise RuntimeError(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            self._fill(n + 2)
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data.decode(errors="replace")
        return rest

    def info(self):
        """Flat dict: stats fields as strings; cmdstat_X / errorstat_X as dicts of ints."""
        out = {}
        for line in self.call("INFO", "stats", "clients", "memory", "commandstats", "errorstats").splitlines():
            if ":" not in line or line.startswith("#"):
                continue
            k, v = line.split(":", 1)
            if k.startswith(("cmdstat_", "errorstat_")):
                d = {}
                for part in v.split(","):
                    kk, _, vv = part.partition("=")
                    try:
                        d[kk] = int(float(vv))
                    except ValueError:
                        pass
                out[k] = d
            else:
                out[k] = v
        return out


def delta(a, b, key, field=None):
    def get(d):
        v = d.get(key, {} if field else 0)
        if field:
            return v.get(field, 0) if isinstance(v, dict) else 0
        try:
            return int(v)
        except (TypeError, ValueError):
            return 0
    return get(b) - get(a)


# ------------------------------------------------------------------------------ run
def load_targets(path):
    out = []
    with open(path) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                name, port, tls, sid, kind = line.split()
                out.append(dict(name=name, port=int(port), tls=tls == "1", sid=int(sid), kind=kind))
    return out


def bench_cmd(a, t, wl, n):
    cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(t["port"]), "--user", a.user,
           "-a", os.environ["BENCH_PASSWORD"], "-c", str(CLIENTS), "-n", str(n), "--csv"]
    if t["tls"]:
        cmd += ["--tls", "--cacert", a.cacert]
    return cmd + WORKLOADS[wl]["args"]


def parse_csv(text):
    """The last result row of redis-benchmark --csv, keyed by its header."""
    header, row = None, None
    for r in csv.reader(text.splitlines()):
        if r and r[0] == "test":
            header = r
        elif header and len(r) == len(header):
            row = dict(zip(header, r))
    return row


def run_one(a, rc, t, wl, n):
    row = dict.fromkeys(FIELDS, "")
    row.update(target=t["name"], workload=wl, n=n)
    if not alive(t["sid"]) or not alive(a.redis_sid):
        row["error"] = "target process not running"
        return row
    i0 = rc.info()
    p0 = session_cpu(t["sid"]) if t["kind"] == "proxy" else None
    r0, b0, (me0, kid0), w0 = session_cpu(a.redis_sid), busy_seconds(), own_cpu(), time.monotonic()
    proc = subprocess.Popen(bench_cmd(a, t, wl, n), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    problem = None
    while True:
        try:
            out, err = proc.communicate(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            if not alive(t["sid"]) or not alive(a.redis_sid):
                problem = "target process died during the run"
            elif time.monotonic() - w0 > a.timeout:
                problem = f"timed out after {a.timeout:.0f} s"
            if problem:
                proc.kill()
                out, err = proc.communicate()
                break
    wall = time.monotonic() - w0
    me1, kid1 = own_cpu()
    b1, r1 = busy_seconds(), session_cpu(a.redis_sid)
    p1 = session_cpu(t["sid"]) if t["kind"] == "proxy" else None
    i1 = rc.info()
    proxy = p1 - p0 if p0 is not None else None
    redis_cpu, client = r1 - r0, kid1 - kid0
    bg = max(0.0, (b1 - b0) - (me1 - me0) - client - redis_cpu - (proxy or 0)) / wall
    row.update(wall_s=f"{wall:.3f}", proxy_cpu_s="" if proxy is None else f"{proxy:.3f}",
               redis_cpu_s=f"{redis_cpu:.3f}", client_cpu_s=f"{client:.3f}", bg_cores=f"{bg:.2f}",
               exit=proc.returncode)
    errors = [problem] if problem else []
    if not problem and proc.returncode != 0:
        errors.append(f"redis-benchmark exit status {proc.returncode}")
    text = out.decode(errors="replace")
    for line in err.decode(errors="replace").splitlines() + \
            [x for x in text.splitlines() if "rror" in x and not x.startswith('"')]:
        line = line.strip()
        if line and not line.startswith(BENIGN):
            errors.append(line[:200])
    res = parse_csv(text)
    if res:
        row.update(rps=res.get("rps", ""), avg_ms=res.get("avg_latency_ms", ""),
                   p50_ms=res.get("p50_latency_ms", ""), p95_ms=res.get("p95_latency_ms", ""),
                   p99_ms=res.get("p99_latency_ms", ""))
    elif not problem:
        errors.append("redis-benchmark printed no result")
    # Redis's side: every request executed, no error replies. The restricted --acl-user rules deny
    # redis-benchmark's start-up CONFIG GET (a warning only); those NOPERMs are expected.
    cmd = "cmdstat_" + WORKLOADS[wl]["cmd"]
    row["reached"] = delta(i0, i1, cmd, "calls")
    row["conns"] = delta(i0, i1, "total_connections_received")
    errs = delta(i0, i1, "total_error_replies") - delta(i0, i1, "cmdstat_config|get", "rejected_calls")
    if errs > 0:
        kinds = sorted(k[10:] for k in i1 if k.startswith("errorstat_")
                       and delta(i0, i1, k, "count") > 0)
        errors.append(f"Redis sent {errs} error replies ({','.join(kinds)})")
    if delta(i0, i1, "rejected_connections"):
        errors.append(f"Redis rejected {delta(i0, i1, 'rejected_connections')} connections")
    if not errors and row["reached"] < n:
        errors.append(f"only {row['reached']} of {n} requests reached Redis")
    row["error"] = "; ".join(errors[:4])
    return row


def round_n(x, lo):
    x = max(lo, int(x))
    mag = 10 ** max(0, len(str(x)) - 2)
    return max(lo, x // mag * mag)


def cmd_run(a):
    targets = load_targets(a.targets)
    workloads = a.workloads.split(",")
    bad = [w for w in workloads if w not in WORKLOADS]
    if bad:
        sys.exit(f"unknown workload(s) {bad}; known: {', '.join(WORKLOADS)}")
    rc = Redis(a.redis_port, a.admin_user, os.environ["BENCH_ADMIN_PASSWORD"])
    rc.call("SET", "key:__rand_int__", "v" * 64)   # what -t get reads without -r
    rc.call("SET", "key:16k", "v" * 16384)         # what get-16KiB reads
    rc.call("CONFIG", "RESETSTAT")
    f = open(os.path.join(a.out, "runs.csv"), "w", newline="")
    w = csv.DictWriter(f, fieldnames=FIELDS)
    w.writeheader()

    def record(row, r):
        row["round"] = r
        w.writerow(row)
        f.flush()
        what = f"ERROR: {row['error']}" if row["error"] else f"{num(row['rps']) or 0:>10.0f} ops/s"
        log(f"  r{r} {row['target']:<10} {row['workload']:<10} n={row['n']:<8} {what}")

    failures, dropped, sizes = {}, set(), {}

    def note_failure(t, row):
        failures[t["name"]] = failures.get(t["name"], 0) + 1
        if "died" in row["error"] or "not running" in row["error"] or failures[t["name"]] >= 3:
            if t["name"] not in dropped:
                log(f"  {t['name']}: dropped from the remaining runs")
            dropped.add(t["name"])

    log(f"warm-up: one short run per target and workload to size -n for ~{a.seconds} s runs")
    for wl in workloads:
        for t in targets:
            if t["name"] in dropped:
                continue
            warm = max(4 * CLIENTS, int(WORKLOADS[wl]["guess"] * min(a.seconds, 3.0) * 0.3))
            row = run_one(a, rc, t, wl, warm)
            record(row, 0)
            if row["error"]:
                note_failure(t, row)
                sizes[(t["name"], wl)] = warm
                continue
            rate = num(row["rps"]) or warm / float(row["wall_s"])
            sizes[(t["name"], wl)] = round_n(rate * a.seconds, 4 * CLIENTS)
    for r in range(1, a.rounds + 1):
        log(f"round {r}/{a.rounds}")
        for wi, wl in enumerate(workloads):
            k = (r - 1 + wi) % len(targets)          # rotate the order every round and workload
            for t in targets[k:] + targets[:k]:
                if t["name"] in dropped:
                    continue
                row = run_one(a, rc, t, wl, sizes[(t["name"], wl)])
                record(row, r)
                if row["error"]:
                    note_failure(t, row)
                time.sleep(0.1)
    f.close()
    # peak and current memory of every proxy (and Redis), read before bench.sh stops them
    mem = {}
    for t in targets:
        if t["kind"] == "proxy" and alive(t["sid"]):
            mem[t["name"]] = dict(hwm_kib=session_mem_kib(t["sid"], "VmHWM"),
                                  rss_kib=session_mem_kib(t["sid"], "VmRSS"))
    mem["redis-server"] = dict(hwm_kib=session_mem_kib(a.redis_sid, "VmHWM"),
                               rss_kib=session_mem_kib(a.redis_sid, "VmRSS"))
    meta_path = os.path.join(a.out, "meta.json")
    meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
    meta.update(rounds=a.rounds, seconds=a.seconds, workloads=workloads, clients=CLIENTS,
                targets=[t["name"] for t in targets], dropped=sorted(dropped), memory=mem,
                alive_at_end={t["name"]: alive(t["sid"]) for t in targets},
                sizes={f"{t}/{wl}": n for (t, wl), n in sizes.items()})
    with open(meta_path, "w") as fm:
        json.dump(meta, fm, indent=1)
    return 0


# ------------------------------------------------------------------------------ report
def ops(x):
    if x is None:
        return "–"
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.0f}k" if x >= 1e4 else \
        f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


def f2(x, spec=".2f"):
    return "–" if x is None else format(x, spec)


def mib(kib):
    return "–" if not kib else f"{kib / 1024:.1f} MiB"


def cmd_report(a):
    meta = json.load(open(os.path.join(a.dir, "meta.json")))
    rows = list(csv.DictReader(open(os.path.join(a.dir, "runs.csv"))))
    wls = meta.get("workloads", DEFAULT_WORKLOADS)
    targets = meta.get("targets", [])
    measured = [r for r in rows if r["round"] != "0"]
    good = [r for r in measured if not r["error"]]
    cell = {}
    for r in good:
        cell.setdefault((r["target"], r["workload"]), []).append(r)

    def by_round(t, wl):
        return {r["round"]: num(r["rps"]) for r in cell.get((t, wl), []) if num(r["rps"])}

    def ratio(t, ref, wl):
        mine, theirs = by_round(t, wl), by_round(ref, wl)
        return median([mine[k] / theirs[k] for k in mine if k in theirs])

    def med(t, wl, field, per=None):
        xs = []
        for r in cell.get((t, wl), []):
            v = num(r[field])
            if v is not None and per:
                v = v * per / max(1, int(r["n"]))
            xs.append(v)
        return median(xs)

    def table(title, fn, first="target", names=targets):
        out.append(f"### {title}\n")
        out.append(f"| {first} | " + " | ".join(wls) + " |")
        out.append("|---|" + "---:|" * len(wls))
        for t in names:
            out.append(f"| {t} | " + " | ".join(fn(t, wl) for wl in wls) + " |")
        out.append("")

    out = []
    acl = "restricted ACL user (--acl-user)" if meta.get("acl_user") else "ACL user with +@all"
    out.append(f"## redward bench: {meta.get('rounds')} rounds x {len(wls)} workloads x "
               f"{len(targets)} targets, ~{meta.get('seconds')} s a run, {meta.get('clients')} clients\n")
    out.append(f"{meta.get('machine', '')}. {meta.get('versions', '')}. {acl}: `{meta.get('rules', '')}`. "
               f"Started {meta.get('started', '')}.\n")

    def summary(t, wl):
        m = median([num(r["rps"]) for r in cell.get((t, wl), [])])
        if m is None:
            return "error" if any(r["target"] == t and r["workload"] == wl for r in measured) else "–"
        return f"{ops(m)} ({f2(ratio(t, 'direct', wl))}, {f2(ratio(t, 'redis-tls', wl))})"
    table("Median ops/s (x direct plaintext, x redis native TLS; medians of per-round ratios)", summary)

    peers = [p for p in PEERS if p in targets]
    if "redward" in targets and peers:
        def vs_peer(t, wl):
            mine, theirs = by_round(t, wl), [by_round(p, wl) for p in peers]
            rs = []
            for k, v in mine.items():
                best = max([p[k] for p in theirs if k in p] or [0])
                if best:
                    rs.append(v / best)
            if not rs:
                return "–"
            return f"{median(rs):.2f} (won {sum(x > 1 for x in rs)}/{len(rs)})"
        table(f"redward vs best peer of each round ({'/'.join(peers)}): median ratio, rounds won",
              vs_peer, names=["redward"])

    table("Latency p50 / p99 ms (medians over rounds)",
          lambda t, wl: f"{f2(med(t, wl, 'p50_ms'), '.3f')} / {f2(med(t, wl, 'p99_ms'), '.3f')}")

    def cpu(t, wl):
        p, r = med(t, wl, "proxy_cpu_s", 1e5), med(t, wl, "redis_cpu_s", 1e5)
        if r is None:
            return "–"
        return f"– (+{r:.2f})" if p is None else f"{p:.2f} ({p + r:.2f})"
    table("CPU seconds per 100k requests: proxy (proxy + redis); direct/redis-tls: redis only", cpu)

    if "churn" in wls:
        out.append("### Connection churn (-k 0: TLS handshake + AUTH + GET per connection): CPU ms per connection\n")
        out.append("| target | conn/s | proxy ms/conn | redis ms/conn | proxy+redis ms/conn | client ms/conn |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for t in targets:
            rs = cell.get((t, "churn"), [])

            def per_conn(field):
                return median([num(r[field]) * 1e3 / max(1, int(r["n"])) for r in rs if num(r[field]) is not None])
            p, r_, c = per_conn("proxy_cpu_s"), per_conn("redis_cpu_s"), per_conn("client_cpu_s")
            out.append(f"| {t} | {ops(median([num(r['rps']) for r in rs]))} | {f2(p, '.3f')} | {f2(r_, '.3f')} | "
                       f"{f2(None if p is None or r_ is None else p + r_, '.3f')} | {f2(c, '.3f')} |")
        out.append("")

    mem = meta.get("memory", {})
    if mem:
        out.append("### Memory at the end of the run (whole session of each process)\n")
        out.append("| process | peak RSS (VmHWM) | RSS now (VmRSS) |")
        out.append("|---|---:|---:|")
        for name, m in mem.items():
            label = f"**{name}**" if name == "redward" else name
            out.append(f"| {label} | {mib(m.get('hwm_kib'))} | {mib(m.get('rss_kib'))} |")
        out.append("")

    out.append("### Detail (medians over rounds)\n")
    out.append("| workload | target | n | ops/s | spread | client CPU | bg cores | errors |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for wl in wls:
        for t in targets:
            rs = cell.get((t, wl), [])
            xs = [num(r["rps"]) for r in rs if num(r["rps"])]
            m = median(xs)
            spread = f"{(max(xs) - min(xs)) / m * 100:.0f}%" if m and len(xs) > 1 else "–"
            cl = median([num(r["client_cpu_s"]) / num(r["wall_s"]) * 100 for r in rs if num(r["wall_s"])])
            nerr = sum(1 for r in measured if r["target"] == t and r["workload"] == wl and r["error"])
            nrun = sum(1 for r in measured if r["target"] == t and r["workload"] == wl)
            out.append(f"| {wl} | {t} | {rs[0]['n'] if rs else '–'} | {ops(m)} | {spread} | "
                       f"{f2(cl, '.0f')}% | {f2(median([num(r['bg_cores']) for r in rs]))} | {nerr}/{nrun} |")
    out.append("")

    errs = [r for r in rows if r["error"]]
    noisy = sum(1 for r in good if (num(r["bg_cores"]) or 0) > QUIET_CORES)
    out.append(f"Runs: {len(measured)} measured + {len(rows) - len(measured)} warm-up; "
               f"{len(errs)} with errors; {noisy} with more than {QUIET_CORES} cores of background load "
               f"(noise: compare CPU per request rather than ops/s there).")
    if meta.get("tls"):
        out.append("TLS negotiated: " + "; ".join(f"{k} {v}" for k, v in meta["tls"].items()) + ".")
    dead = [t for t, ok in meta.get("alive_at_end", {}).items() if not ok]
    if dead:
        out.append(f"**Not running at the end: {', '.join(dead)}.**")
    if meta.get("dropped"):
        out.append(f"**Dropped after failures: {', '.join(meta['dropped'])}.**")
    for r in errs[:12]:
        out.append(f"- **error** round {r['round']} {r['target']} {r['workload']} n={r['n']}: {r['error']}")
    if len(errs) > 12:
        out.append(f"- ... {len(errs) - 12} more in runs.csv")
    for line in meta.get("log_findings", [])[:10]:
        out.append(f"- log: {line}")
    text = "\n".join(out) + "\n"
    with open(os.path.join(a.dir, "report.md"), "w") as fo:
        fo.write(text)
    sys.stdout.write(text)
    return 1 if errs or dead or meta.get("log_findings") else 0


# ------------------------------------------------------------------------------ idle
def cmd_idle(a):
    """Open N authenticated TLS connections to the proxy, hold them, report its RSS."""
    pw = os.environ["BENCH_PASSWORD"].encode()
    ctx = tls_context(a.ca)
    deadline = time.monotonic() + a.timeout
    auth = resp("AUTH", a.user, pw)
    touch = resp("GET", "key:idle") if a.touch else b""
    lock, conns, failures = threading.Lock(), [], []

    def read_reply(s):
        buf = b""
        while not buf.endswith(b"\r\n"):
            chunk = s.recv(256)
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    def one(_):
        if time.monotonic() > deadline:
            return
        raw = None
        try:
            raw = socket.create_connection(("127.0.0.1", a.port), timeout=10)
            s = ctx.wrap_socket(raw, server_hostname="localhost")
            s.sendall(auth)
            reply = read_reply(s)
            if not reply.startswith(b"+OK"):
                raise RuntimeError(f"AUTH answered {reply[:80]!r}")
            if touch:
                s.sendall(touch)
                reply = read_reply(s)
                if reply.startswith(b"-"):
                    raise RuntimeError(f"GET answered {reply[:80]!r}")
                if reply.startswith(b"$") and not reply.startswith(b"$-1"):
                    raise RuntimeError("unexpected value for key:idle")
            with lock:
                conns.append(s)
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            with lock:
                failures.append(f"{type(e).__name__}: {e}")
            if raw:
                raw.close()

    rc = Redis(a.redis_port, a.admin_user, os.environ["BENCH_ADMIN_PASSWORD"])
    redis_clients0 = int(rc.info().get("connected_clients", 0))
    time.sleep(0.5)
    rss0, hwm0 = session_mem_kib(a.sid, "VmRSS"), session_mem_kib(a.sid, "VmHWM")
    t0 = time.monotonic()
    log(f"idle: opening {a.n} authenticated TLS connections to 127.0.0.1:{a.port} (timeout {a.timeout:.0f} s)")
    with ThreadPoolExecutor(max_workers=a.parallel) as ex:
        for i, _ in enumerate(ex.map(one, range(a.n)), 1):
            if i % max(1, a.n // 10) == 0:
                log(f"  {i}/{a.n} attempted, {len(conns)} open, {len(failures)} failed")
    t_open = time.monotonic() - t0
    time.sleep(a.settle)
    rss1, hwm1 = session_mem_kib(a.sid, "VmRSS"), session_mem_kib(a.sid, "VmHWM")
    redis_clients1 = int(rc.info().get("connected_clients", 0))
    # are the held connections still served? ping a sample of them
    sample, dead = conns[:: max(1, len(conns) // 20)], 0
    for s in sample:
        try:
            s.settimeout(5)
            s.sendall(resp("PING"))
            if not read_reply(s).startswith(b"+PONG"):
                dead += 1
        except (OSError, ConnectionError):
            dead += 1
    proxy_alive = alive(a.sid)
    for s in conns:
        try:
            s.close()
        except OSError:
            pass
    time.sleep(a.settle)
    rss2 = session_mem_kib(a.sid, "VmRSS")
    n_ok = len(conns)
    per = (rss1 - rss0) / n_ok if n_ok else None
    out = [f"## redward idle connections: {a.n} requested, {n_ok} open and authenticated"
           f"{' (+ one GET each)' if a.touch else ''}\n",
           "| measure | value |", "|---|---:|",
           f"| redward VmRSS before | {mib(rss0)} |",
           f"| redward VmRSS holding {n_ok} connections | {mib(rss1)} |",
           f"| **RSS per connection** | **{f2(per, '.1f')} KiB** |",
           f"| redward VmHWM (peak) before / after | {mib(hwm0)} / {mib(hwm1)} |",
           f"| redward VmRSS after closing them | {mib(rss2)} |",
           f"| time to open them ({a.parallel} at a time) | {t_open:.1f} s ({n_ok / t_open if t_open else 0:.0f}/s) |",
           f"| Redis connected_clients before / holding | {redis_clients0} / {redis_clients1} |",
           f"| held connections answering PING (sample) | {len(sample) - dead}/{len(sample)} |", ""]
    if failures:
        kinds = {}
        for x in failures:
            kinds[x[:120]] = kinds.get(x[:120], 0) + 1
        out.append(f"**{len(failures)} connections failed:**")
        out += [f"- {v} x {k}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])[:8]]
    if n_ok + len(failures) < a.n:
        out.append(f"**Stopped after the {a.timeout:.0f} s time limit: {a.n - n_ok - len(failures)} never attempted.**")
    if not proxy_alive:
        out.append("**redward is no longer running.**")
    text = "\n".join(out) + "\n"
    with open(os.path.join(a.out, "idle.md"), "w") as fo:
        fo.write(text)
    sys.stdout.write(text)
    return 0 if n_ok == a.n and not dead and proxy_alive else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("ports")
    s.add_argument("n", type=int)
    s = sub.add_parser("waitport")
    s.add_argument("port", type=int)
    s.add_argument("secs", type=float)
    s.add_argument("pid", type=int)
    s = sub.add_parser("tlsinfo")
    s.add_argument("port", type=int)
    s.add_argument("ca")
    s = sub.add_parser("run")
    s.add_argument("--targets", required=True, help="lines: name port tls(0|1) session-id proxy|server")
    s.add_argument("--redis-port", type=int, required=True)
    s.add_argument("--redis-sid", type=int, required=True)
    s.add_argument("--user", required=True)
    s.add_argument("--admin-user", required=True)
    s.add_argument("--cacert", required=True)
    s.add_argument("--rounds", type=int, default=5)
    s.add_argument("--seconds", type=float, default=3.0)
    s.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS))
    s.add_argument("--timeout", type=float, default=60.0)
    s.add_argument("--out", required=True)
    s = sub.add_parser("report")
    s.add_argument("dir")
    s = sub.add_parser("idle")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--sid", type=int, required=True, help="redward's session id")
    s.add_argument("--ca", required=True)
    s.add_argument("--user", required=True)
    s.add_argument("--redis-port", type=int, required=True)
    s.add_argument("--admin-user", required=True)
    s.add_argument("--n", type=int, default=10000)
    s.add_argument("--parallel", type=int, default=16)
    s.add_argument("--timeout", type=float, default=300.0)
    s.add_argument("--settle", type=float, default=2.0)
    s.add_argument("--touch", action="store_true", help="also send one GET on each connection")
    s.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.cmd == "ports":
        print(" ".join(map(str, free_ports(a.n))))
        return 0
    if a.cmd == "waitport":
        return wait_port(a.port, a.secs, a.pid)
    if a.cmd == "tlsinfo":
        print(tls_info(a.port, a.ca))
        return 0
    if a.cmd == "run":
        return cmd_run(a)
    if a.cmd == "report":
        return cmd_report(a)
    return cmd_idle(a)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
