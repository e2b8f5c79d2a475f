"""redis-py's RedisCluster through redward (tests/cluster.rs).

    python3 redis_py_cluster.py PORT CA USER PASSWORD rw N       # write then read N keys
    python3 redis_py_cluster.py PORT CA USER PASSWORD traffic S   # write/read for S seconds
    python3 redis_py_cluster.py PORT CA USER PASSWORD check N    # the traffic keys, all there

Prints `ops N errors E missing M written W` on one line; each error on stderr.
"""
import sys
import time

from redis.cluster import RedisCluster

port, ca, user, password, mode, arg = sys.argv[1:7]
rc = RedisCluster(
    host="127.0.0.1",
    port=int(port),
    ssl=True,
    ssl_ca_certs=ca,
    username=user,
    password=password,
)
errors = []
ops = 0
missing = 0
if mode == "rw":
    n = int(arg)
    for i in range(n):
        rc.set(f"app:k{i}", str(i))
        ops += 1
    pipe = rc.pipeline()
    for i in range(n):
        pipe.get(f"app:k{i}")
    for i, v in enumerate(pipe.execute()):
        if v != str(i).encode():
            errors.append(f"app:k{i}={v!r}")
    missing = sum(1 for i in range(n) if rc.get(f"app:k{i}") is None)
elif mode == "traffic":
    deadline = time.time() + float(arg)
    while time.time() < deadline:
        key = f"app:t{ops % 1000}"
        try:
            rc.set(key, str(ops))
            if rc.get(key) != str(ops).encode():
                errors.append(f"{key} read back wrong")
        except Exception as e:  # noqa: BLE001 - every failure is reported
            errors.append(repr(e)[:200])
        ops += 1
elif mode == "check":
    n = int(arg)
    missing = sum(1 for i in range(n) if rc.get(f"app:t{i}") is None)
for e in errors[:20]:
    print(e, file=sys.stderr)
print(f"ops {ops} errors {len(errors)} missing {missing} written {min(ops, 1000)}")
