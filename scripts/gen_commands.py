#!/usr/bin/env python3
"""Generate src/commands/table.rs from a real redis-server's COMMAND reply.

Why: redward must decide command existence, arity and key positions exactly
like the Redis it fronts, before a request ever reaches Redis. Copying that
knowledge by hand would drift; asking the server itself cannot.

Usage: scripts/gen_commands.py [--redis-server PATH] [--out PATH]

Starts a throwaway redis-server on a free loopback port (no persistence),
speaks RESP2 over a plain socket (no redis-cli output parsing), runs
`INFO server` (for the version) and `COMMAND`, kills the server, writes the
table and, if `rustfmt` is on PATH, formats it so a later rustfmt run is a
no-op. Stdlib only.
"""

import argparse
import os
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "src", "commands", "table.rs")

# Must match the FLAG_* constants in src/commands/mod.rs (the full list
# server.c addReplyFlagsForCommand can emit in 7.0).
COMMAND_FLAGS = {
    "write": "FLAG_WRITE",
    "readonly": "FLAG_READONLY",
    "denyoom": "FLAG_DENYOOM",
    "module": "FLAG_MODULE",
    "admin": "FLAG_ADMIN",
    "pubsub": "FLAG_PUBSUB",
    "noscript": "FLAG_NOSCRIPT",
    "blocking": "FLAG_BLOCKING",
    "loading": "FLAG_LOADING",
    "stale": "FLAG_STALE",
    "skip_monitor": "FLAG_SKIP_MONITOR",
    "skip_slowlog": "FLAG_SKIP_SLOWLOG",
    "asking": "FLAG_ASKING",
    "fast": "FLAG_FAST",
    "no_auth": "FLAG_NO_AUTH",
    "may_replicate": "FLAG_MAY_REPLICATE",
    "no_mandatory_keys": "FLAG_NO_MANDATORY_KEYS",
    "no_async_loading": "FLAG_NO_ASYNC_LOADING",
    "no_multi": "FLAG_NO_MULTI",
    "movablekeys": "FLAG_MOVABLEKEYS",
    "allow_busy": "FLAG_ALLOW_BUSY",
}

# Must match the KS_* constants in src/commands/mod.rs (server.c
# addReplyFlagsForKeyArgs).
KEY_SPEC_FLAGS = {
    "RO": "KS_RO",
    "RW": "KS_RW",
    "OW": "KS_OW",
    "RM": "KS_RM",
    "access": "KS_ACCESS",
    "update": "KS_UPDATE",
    "insert": "KS_INSERT",
    "delete": "KS_DELETE",
    "not_key": "KS_NOT_KEY",
    "incomplete": "KS_INCOMPLETE",
    "variable_flags": "KS_VARIABLE_FLAGS",
}

# Must match CATEGORIES in src/commands/mod.rs (acl.c ACLCommandCategories).
CATEGORIES = [
    "keyspace", "read", "write", "set", "sortedset", "list", "hash", "string",
    "bitmap", "hyperloglog", "geo", "stream", "pubsub", "admin", "fast",
    "slow", "blocking", "dangerous", "connection", "transaction", "scripting",
]


class RespError(Exception):
    pass


class Resp:
    """Minimal blocking RESP2 client: enough for COMMAND and INFO."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def _fill(self):
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("redis closed the connection")
        self.buf += chunk

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                return line
            self._fill()

    def _exact(self, n):
        while len(self.buf) < n + 2:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RespError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n).decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise ValueError("unexpected RESP type byte %r" % kind)

    def call(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a.encode() if isinstance(a, str) else a
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        return self.read()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(binary):
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 10
    while True:
        try:
            return proc, socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)


def pairs(flat):
    """RESP2 renders maps as flat [k, v, k, v...] arrays."""
    return dict(zip(flat[0::2], flat[1::2]))


# redward's own property, not Redis's: commands that give the connection state Redis keeps
# per client (the `client` struct in server.h: transaction, watched keys, database, protocol,
# name, tracking, subscriptions, monitor, replication, cluster flags), or that must not wait
# behind another client's busy script (SCRIPT, FUNCTION, SHUTDOWN: `SCRIPT KILL` is how a busy
# Redis is freed). Redis's COMMAND has no flag for this (PING and ASKING carry the same
# flags and categories), so the generator marks them; a whole container's subcommands
# inherit the mark. Blocking and module commands get it from their own flags. Commands
# learned at run time are marked by a conservative rule from their flags and categories
# (src/commands/discover.rs). Routing reads only the bit (src/session/route.rs).
OWN_CONNECTION = {
    "multi", "exec", "discard", "watch", "unwatch", "select", "hello", "reset",
    "client", "subscribe", "psubscribe", "ssubscribe", "unsubscribe",
    "punsubscribe", "sunsubscribe", "monitor", "sync", "psync", "replconf",
    "readonly", "readwrite", "asking", "wait", "waitaof", "script", "function",
    "shutdown",
}


def bits(names, table, what):
    out = []
    for n in names:
        if n not in table:
            sys.exit("unknown %s %r: add it to mod.rs and this script" % (what, n))
        out.append(table[n])
    return " | ".join(out) if out else "0"


def cat_bits(cats):
    out = []
    for c in cats:
        name = c[1:] if c.startswith("@") else c
        if name not in CATEGORIES:
            sys.exit("unknown ACL category %r: add it to CATEGORIES" % c)
        out.append("CAT_" + name.upper())
    return " | ".join(out) if out else "0"


def rust_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def key_spec(ks):
    m = pairs(ks)
    bs, fk = pairs(m["begin_search"]), pairs(m["find_keys"])
    bspec = pairs(bs["spec"]) if bs["spec"] else {}
    fspec = pairs(fk["spec"]) if fk["spec"] else {}
    if bs["type"] == "index":
        b = "index(%d)" % bspec["index"]
    elif bs["type"] == "keyword":
        b = "keyword(%s, %d)" % (
            rust_str(bspec["keyword"]), bspec["startfrom"])
    elif bs["type"] == "unknown":
        b = "BeginSearch::Unknown"
    else:
        sys.exit("unknown begin_search type %r" % bs["type"])
    if fk["type"] == "range":
        f = "range(%d, %d, %d)" % (
            fspec["lastkey"], fspec["keystep"], fspec["limit"])
    elif fk["type"] == "keynum":
        f = "keynum(%d, %d, %d)" % (
            fspec["keynumidx"], fspec["firstkey"], fspec["keystep"])
    elif fk["type"] == "unknown":
        f = "FindKeys::Unknown"
    else:
        sys.exit("unknown find_keys type %r" % fk["type"])
    return "ks(%s, %s, %s)" % (
        bits(m["flags"], KEY_SPEC_FLAGS, "key spec flag"), b, f)


def command_flags(name, flags):
    out = bits(flags, COMMAND_FLAGS, "command flag")
    base = name.lower().split("|", 1)[0]
    if base in OWN_CONNECTION or "blocking" in flags or "module" in flags:
        out = "FLAG_OWN_CONNECTION" if out == "0" else out + " | FLAG_OWN_CONNECTION"
    return out


def emit(cmd, ind, out, counts, depth=0):
    (name, arity, flags, first, last, step, cats, _tips, specs, subs) = cmd
    p = " " * ind
    counts[depth] += 1
    out.append(p + "CommandSpec {")
    out.append(p + "    name: %s," % rust_str(name.lower()))
    out.append(p + "    arity: %d," % arity)
    out.append(p + "    flags: %s," % command_flags(name, flags))
    out.append(p + "    categories: %s," % cat_bits(cats))
    out.append(p + "    first_key: %d," % first)
    out.append(p + "    last_key: %d," % last)
    out.append(p + "    key_step: %d," % step)
    if specs:
        out.append(p + "    key_specs: &[")
        for ks in specs:
            out.append(p + "        " + key_spec(ks) + ",")
        out.append(p + "    ],")
    else:
        out.append(p + "    key_specs: &[],")
    if subs:
        if depth > 0:
            sys.exit("nested subcommands in %r: not supported" % name)
        out.append(p + "    subcommands: &[")
        for sub in sorted(subs, key=lambda c: c[0].lower()):
            emit(sub, ind + 8, out, counts, depth + 1)
        out.append(p + "    ],")
    else:
        out.append(p + "    subcommands: &[],")
    out.append(p + "},")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--redis-server", default="redis-server")
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()

    proc, sock = start_server(args.redis_server)
    try:
        r = Resp(sock)
        info = r.call("INFO", "server")
        version = next(l.split(":", 1)[1] for l in info.splitlines()
                       if l.startswith("redis_version:"))
        commands = r.call("COMMAND")
    finally:
        sock.close()
        proc.kill()
        proc.wait()

    commands.sort(key=lambda c: c[0].lower())
    # Longest name lookup() must be able to match: top-level names and the
    # part of a subcommand's fullname after '|'.
    max_len = max([len(c[0]) for c in commands] +
                  [len(s[0].split("|", 1)[-1]) for c in commands for s in c[9]])
    counts = [0, 0]
    body = []
    for cmd in commands:
        emit(cmd, 4, body, counts)

    lines = [
        "// @generated by scripts/gen_commands.py from redis-server %s's COMMAND; do not edit." % version,
        "// %d commands, %d subcommands." % (counts[0], counts[1]),
        "",
        "// The table names dozens of the parent module's constants and helpers.",
        "#![allow(clippy::wildcard_imports)]",
        "",
        "use super::*;",
        "",
        "/// Redis version this table was generated from.",
        "pub const REDIS_VERSION: &str = %s;" % rust_str(version),
        "",
        "/// Longest command or subcommand name in [`COMMANDS`]; anything longer",
        "/// cannot match, which lets lookups lowercase into a fixed stack buffer.",
        "pub(super) const MAX_NAME_LEN: usize = %d;" % max_len,
        "",
        "/// Every command `COMMAND` reported, sorted by name; subcommands sorted too.",
        "pub(super) static COMMANDS: &[CommandSpec] = &[",
    ] + body + ["];", ""]
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    try:
        subprocess.run(["rustfmt", "--edition", "2021", args.out], check=True)
    except FileNotFoundError:
        print("rustfmt not found; table.rs left unformatted", file=sys.stderr)
    print("wrote %s: redis %s, %d commands, %d subcommands"
          % (args.out, version, counts[0], counts[1]))


if __name__ == "__main__":
    main()
