"""redis-py's RedisCluster balanced across several redward instances
(tests/cluster_instances.rs), as behind a load balancer or a Kubernetes Service: every
instance announces the same host, and each connection to a node is sent to one of the
instances at random (`address_remap`). Correct only if every instance serves each node on
the same port.

    python3 redis_py_balanced.py ENTRY_HOST ENTRY_PORT CA USER PASSWORD N HOST...

Writes N keys then reads them back, with a fresh client every 100 keys. Prints
`ops N errors E missing M` and then `connections HOST=C ...`; each error on stderr.
"""
import random
import sys
from collections import Counter

from redis.cluster import RedisCluster

entry_host, entry_port, ca, user, password, n = sys.argv[1:7]
hosts = sys.argv[7:]
n = int(n)
chosen = Counter()


def remap(address):
    host = random.choice(hosts)
    chosen[host] += 1
    return (host, address[1])


def client():
    return RedisCluster(
        host=entry_host,
        port=int(entry_port),
        ssl=True,
        ssl_ca_certs=ca,
        username=user,
        password=password,
        address_remap=remap,
    )


errors = []
ops = 0
for start in range(0, n, 100):
    rc = client()
    for i in range(start, min(n, start + 100)):
        try:
            rc.set(f"app:b{i}", str(i))
        except Exception as e:  # noqa: BLE001 - every failure is reported
            errors.append(repr(e)[:200])
        ops += 1
    rc.close()
missing = 0
for start in range(0, n, 100):
    rc = client()
    for i in range(start, min(n, start + 100)):
        try:
            v = rc.get(f"app:b{i}")
            if v is None:
                missing += 1
            elif v != str(i).encode():
                errors.append(f"app:b{i}={v!r}")
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e)[:200])
        ops += 1
    rc.close()
for e in errors[:20]:
    print(e, file=sys.stderr)
print(f"ops {ops} errors {len(errors)} missing {missing}")
print("connections " + " ".join(f"{h}={chosen[h]}" for h in hosts))
