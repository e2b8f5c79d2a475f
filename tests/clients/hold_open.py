"""Opens N redis-py clients with redis-py's default handshake, each with its own connection,
checks each sees its own name, database and protocol, prints `ready`, and keeps them open
until stdin closes (at most 60 s). tests/clients.rs counts Redis's connections meanwhile.

    python3 hold_open.py --port P --user U --password W --tls-ca CA --clients N
                         --protocol 2|3 [--db D] [--name-prefix NAME] [--no-client-info]

--no-client-info leaves out CLIENT SETINFO (lib_name=None, lib_version=None), the one part of
redis-py's default handshake sent when no name, database or protocol is asked for.
"""

import argparse
import signal
import sys

import redis


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--tls-ca", required=True)
    ap.add_argument("--clients", type=int, required=True)
    ap.add_argument("--protocol", type=int, choices=[2, 3], required=True)
    ap.add_argument("--db", type=int, default=0)
    ap.add_argument("--name-prefix")
    ap.add_argument("--no-client-info", action="store_true")
    args = ap.parse_args()
    signal.alarm(60)  # never outlive the test

    info = dict(lib_name=None, lib_version=None) if args.no_client_info else {}
    clients = []
    for i in range(args.clients):
        name = f"{args.name_prefix}-{i}" if args.name_prefix else None
        c = redis.Redis(
            host=args.host, port=args.port, username=args.user, password=args.password,
            ssl=True, ssl_ca_certs=args.tls_ca, protocol=args.protocol, db=args.db,
            client_name=name, socket_timeout=10, socket_connect_timeout=10,
            decode_responses=True, single_connection_client=True, **info,
        )
        c.set(f"hold:{i}", i)
        clients.append((i, name, c))
    for i, name, c in clients:
        problems = []
        if c.get(f"hold:{i}") != str(i):
            problems.append("its own key")
        # (Asked only of named clients: redward moves a client that asks today.)
        if name and c.client_getname() != name:
            problems.append(f"name {c.client_getname()!r}, want {name!r}")
        # A RESP3 double only on a RESP3 connection.
        want = 1.5 if args.protocol == 3 else "1.5"
        if c.execute_command("EVAL", "return {double=1.5}", 0) != want:
            problems.append(f"protocol {args.protocol}")
        if c.dbsize() != args.clients:
            problems.append(f"database {args.db}: dbsize {c.dbsize()}")
        if problems:
            print(f"FAILED: client {i}: {', '.join(problems)}", file=sys.stderr, flush=True)
            sys.exit(1)
    print("ready", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
