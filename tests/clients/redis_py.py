"""redis-py against one server (redward over TLS, or redis-server directly), each client with
redis-py's default handshake: AUTH (RESP2) or HELLO 3 AUTH (RESP3), CLIENT SETNAME when a name
is given, CLIENT SETINFO LIB-NAME/LIB-VER, SELECT when db is not 0.

Prints a transcript, one check a line, that tests/clients.rs compares between redward and
Redis; exits 1 at the first check whose result is not what Redis gives, naming it.

    python3 redis_py.py --port P --user U --password W --protocol 2|3 [--tls-ca CA]
"""

import argparse
import sys
import threading
import time

import redis

TIMEOUT = 10  # seconds, for every socket operation and every wait


class CheckFailed(Exception):
    pass


def show(name, value):
    print(f"{name}: {value!r}", flush=True)


def check(name, got, want):
    show(name, got)
    if got != want:
        raise CheckFailed(f"{name}: got {got!r}, want {want!r}")


def error_text(f):
    """What f() raises, as `Type: message`, or its result when it raises nothing."""
    try:
        return f()
    except redis.RedisError as e:
        return f"{type(e).__name__}: {e}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--protocol", type=int, choices=[2, 3], required=True)
    ap.add_argument("--tls-ca")
    args = ap.parse_args()

    def connect(**extra):
        kw = dict(
            host=args.host,
            port=args.port,
            username=args.user,
            password=args.password,
            protocol=args.protocol,
            socket_timeout=TIMEOUT,
            socket_connect_timeout=TIMEOUT,
            decode_responses=True,
        )
        if args.tls_ca:
            kw.update(ssl=True, ssl_ca_certs=args.tls_ca)
        kw.update(extra)
        return redis.Redis(**kw)

    show("library", f"redis-py {redis.__version__} protocol={args.protocol}")

    # The default handshake, with a name: HELLO/AUTH, CLIENT SETNAME, CLIENT SETINFO x2.
    c = connect(client_name="py-main")
    check("ping", c.ping(), True)
    check("client getname (from handshake)", c.client_getname(), "py-main")
    check("client setname", c.client_setname("py-renamed"), True)
    check("client getname", c.client_getname(), "py-renamed")
    # Redis 7.2+ accepts these; 7.0 answers an error. Either way the same as Redis.
    show("client setinfo lib-name", error_text(lambda: c.client_setinfo("LIB-NAME", "redward-test")))
    show("client setinfo lib-ver", error_text(lambda: c.client_setinfo("LIB-VER", "1.2.3")))
    # The protocol replies really come in: Lua's double and map are RESP3 types, which Redis
    # writes as a bulk string and a flat array to a RESP2 connection. (No reply callbacks here.)
    resp3 = args.protocol == 3
    check("eval double", c.execute_command("EVAL", "return {double=1.5}", 0),
          1.5 if resp3 else "1.5")
    check("eval map", c.execute_command("EVAL", "return {map={a='1'}}", 0),
          {"a": "1"} if resp3 else ["a", "1"])
    if resp3:
        hello = c.execute_command("HELLO", 3)
        check("hello 3 proto", hello.get("proto"), 3)
        show("hello 3 server", hello.get("server"))
        show("hello 3 role", hello.get("role"))
        show("hello 3 mode", hello.get("mode"))
        # A RESP3-only reply type: a map (RESP2 gives a flat array, redis-py makes it a dict).
        c.hset("h", mapping={"a": "1", "b": "2"})
        check("hgetall", c.hgetall("h"), {"a": "1", "b": "2"})
        check("double", c.execute_command("ZINCRBY", "z", "1.5", "m"), 1.5)

    # A pipeline of 100 commands in one write.
    p = c.pipeline(transaction=False)
    for i in range(50):
        p.set(f"p:{i}", i)
        p.incr(f"p:{i}")
    replies = p.execute()
    check("pipeline length", len(replies), 100)
    check("pipeline replies", replies, [x for i in range(50) for x in (True, i + 1)])
    check("pipeline mget", c.mget([f"p:{i}" for i in range(0, 50, 7)]),
          [str(i + 1) for i in range(0, 50, 7)])

    # MULTI/EXEC.
    t = c.pipeline(transaction=True)
    t.set("t:a", "1").incr("t:a").rpush("t:l", "x", "y").lrange("t:l", 0, -1).get("t:a")
    check("multi/exec", t.execute(), [True, 2, 2, ["x", "y"], "2"])

    # WATCH, a write from another client, then EXEC: nothing runs.
    other = connect()
    c.set("w", "0")
    with c.pipeline(transaction=True) as w:
        w.watch("w")
        check("watched get", w.get("w"), "0")
        other.set("w", "changed")
        w.multi()
        w.set("w", "mine")
        show("watch conflict", error_text(w.execute))
    check("after watch conflict", c.get("w"), "changed")
    with c.pipeline(transaction=True) as w:
        w.watch("w")
        w.multi()
        w.set("w", "mine")
        check("watch without conflict", w.execute(), [True])
    check("after watch", c.get("w"), "mine")
    # A transaction queuing an error: EXECABORT.
    show("execabort", error_text(lambda: c.pipeline(transaction=True).set("e", "1")
                                  .execute_command("NOSUCHCOMMAND").execute()))

    # Pub/sub: subscribe on one client, publish from another.
    sub = connect(client_name="py-sub")
    ps = sub.pubsub()
    ps.subscribe("chan")
    check("subscribe", ps.get_message(timeout=TIMEOUT), {
        "type": "subscribe", "pattern": None, "channel": "chan", "data": 1})
    ps.psubscribe("ch*")
    check("psubscribe", ps.get_message(timeout=TIMEOUT), {
        "type": "psubscribe", "pattern": None, "channel": "ch*", "data": 2})
    check("publish", other.publish("chan", "hello"), 2)
    check("message", ps.get_message(timeout=TIMEOUT), {
        "type": "message", "pattern": None, "channel": "chan", "data": "hello"})
    check("pmessage", ps.get_message(timeout=TIMEOUT), {
        "type": "pmessage", "pattern": "ch*", "channel": "chan", "data": "hello"})
    ps.unsubscribe("chan")
    check("unsubscribe", ps.get_message(timeout=TIMEOUT), {
        "type": "unsubscribe", "pattern": None, "channel": "chan", "data": 1})
    ps.punsubscribe("ch*")
    check("punsubscribe", ps.get_message(timeout=TIMEOUT), {
        "type": "punsubscribe", "pattern": None, "channel": "ch*", "data": 0})
    ps.close()

    # A blocking pop on one client, released by a push from another.
    blocker = connect(client_name="py-blocker")
    got = {}

    def pop():
        try:
            reply = blocker.blpop(["q"], timeout=TIMEOUT)
            # A tuple in RESP2, a list in RESP3.
            got["reply"] = None if reply is None else list(reply)
        except Exception as e:  # reported below, as the transcript's value
            got["reply"] = f"{type(e).__name__}: {e}"

    th = threading.Thread(target=pop)
    th.start()
    # Not a timing assertion: pushed before or after BLPOP blocks, the reply is the same.
    time.sleep(0.2)
    check("lpush", other.lpush("q", "job"), 1)
    th.join(TIMEOUT + 5)
    check("blpop", got.get("reply"), ["q", "job"])
    check("blpop on an empty list times out", blocker.blpop(["q"], timeout=0.1), None)

    # A database other than 0, chosen at connect (redis-py sends SELECT in its handshake).
    db1 = connect(db=1, client_name="py-db1")
    check("db1 set", db1.set("only-in-1", "yes"), True)
    check("db1 get", db1.get("only-in-1"), "yes")
    check("db1 dbsize", db1.dbsize(), 1)
    check("db0 does not see db1", c.get("only-in-1"), None)
    check("db1 client getname", db1.client_getname(), "py-db1")
    check("db1 pipeline", db1.pipeline().incr("n").incr("n").execute(), [1, 2])
    check("db1 multi/exec", db1.pipeline(transaction=True).incr("n").get("n").execute(), [3, "3"])
    check("db0 n", c.get("n"), None)
    # A SELECT sent by hand on a connection of its own.
    single = connect(single_connection_client=True)
    check("select 1", single.execute_command("SELECT", 1), True)
    check("select 1 get", single.get("only-in-1"), "yes")
    check("select 0", single.execute_command("SELECT", 0), True)
    check("select 0 get", single.get("only-in-1"), None)

    # Still in step after all of the above.
    check("echo", c.echo("bye"), "bye")
    for client in (c, other, sub, blocker, db1, single):
        client.close()
    print("OK", flush=True)


if __name__ == "__main__":
    try:
        main()
    except CheckFailed as e:
        print(f"FAILED: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
