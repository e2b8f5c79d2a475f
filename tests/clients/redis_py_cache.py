"""redis-py's client-side caching (`cache_config=CacheConfig()`, RESP3) against one server
(redward over TLS, or the server directly): reads are served from redis-py's cache until the
server's invalidation push says a key changed, as tests/clients.rs checks for both paths.

redis-py 6 turns its cache on only for a server whose HELLO says `redis` 7.4 or later. The
tracking it relies on (`CLIENT TRACKING on`, RESP3 `invalidate` pushes) is Redis 6.0's, and
the test matrix has Redis 7.0 and Valkey 8.1, so this script lowers that gate to the server
it meets (`--server-name`, 6.0.0). Everything else is redis-py's own.

Prints a transcript, one check a line; exits 1 at the first check that fails, naming it.

    python3 redis_py_cache.py --port P --user U --password W --server-name redis|valkey
        [--tls-ca CA]
"""

import argparse
import sys
import time

import redis
from redis.cache import CacheConfig
from redis.connection import CacheProxyConnection

TIMEOUT = 10  # seconds, for every socket operation and every wait


class CheckFailed(Exception):
    pass


def check(name, got, want):
    print(f"{name}: {got!r}", flush=True)
    if got != want:
        raise CheckFailed(f"{name}: got {got!r}, want {want!r}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--server-name", required=True)
    ap.add_argument("--tls-ca")
    args = ap.parse_args()
    CacheProxyConnection.DEFAULT_SERVER_NAME = args.server_name
    CacheProxyConnection.MIN_ALLOWED_VERSION = "6.0.0"

    def connect(**extra):
        kw = dict(
            host="127.0.0.1",
            port=args.port,
            username=args.user,
            password=args.password,
            protocol=3,
            socket_timeout=TIMEOUT,
            **extra,
        )
        if args.tls_ca:
            kw.update(ssl=True, ssl_ca_certs=args.tls_ca)
        return redis.Redis(**kw)

    cached = connect(cache_config=CacheConfig(max_size=100))
    writer = connect()
    cache = cached.get_cache()
    writer.set("csc:a", "1")
    writer.set("csc:b", "x")
    check("first read", cached.get("csc:a"), b"1")
    check("cached entries after one read", cache.size, 1)
    check("second read, from the cache", cached.get("csc:a"), b"1")
    check("mget", cached.mget("csc:a", "csc:b"), [b"1", b"x"])
    check("cached entries after mget", cache.size, 2)

    # Another client changes a cached key: the server's invalidation reaches the cache, and
    # the next read sees the new value.
    writer.set("csc:a", "2")
    deadline = time.monotonic() + TIMEOUT
    got = cached.get("csc:a")
    while got != b"2" and time.monotonic() < deadline:
        time.sleep(0.05)
        got = cached.get("csc:a")
    check("read after another client's write", got, b"2")
    # A write of the caching client's own invalidates too.
    cached.set("csc:b", "y")
    deadline = time.monotonic() + TIMEOUT
    got = cached.get("csc:b")
    while got != b"y" and time.monotonic() < deadline:
        time.sleep(0.05)
        got = cached.get("csc:b")
    check("read after its own write", got, b"y")
    # Deleting a key and flushing invalidate as well.
    writer.delete("csc:a")
    deadline = time.monotonic() + TIMEOUT
    got = cached.get("csc:a")
    while got is not None and time.monotonic() < deadline:
        time.sleep(0.05)
        got = cached.get("csc:a")
    check("read after DEL", got, None)
    check("tracking flags", cached.client_trackinginfo()[b"flags"], [b"on"])
    cached.close()
    writer.close()
    print("done", flush=True)


if __name__ == "__main__":
    try:
        main()
    except CheckFailed as e:
        print(f"FAILED {e}", flush=True)
        sys.exit(1)
