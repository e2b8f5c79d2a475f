#!/usr/bin/env bash
# Watch redward follow a Sentinel failover, on this machine, in about 20 seconds:
#
#   scripts/failover-demo.sh            # builds redward (release) if needed
#   scripts/failover-demo.sh --bin PATH # or uses this binary
#
# Starts, on free loopback ports: a Redis master, a replica, three Sentinels (`redis-server
# --sentinel`) and redward with `upstream.sentinel` (plaintext listener on 127.0.0.1). A writer
# sends one SET every 10 ms through redward and prints, each second, how many writes were
# acknowledged, how many got an error, and which ports answer `ROLE master` (for a moment after
# the failover, both: the old master is demoted a little later). After 5 s it runs `SENTINEL
# FAILOVER`; at the end it checks that every acknowledged write is on the master the Sentinels
# name. Everything it starts is stopped on exit (Ctrl-C included); with DEMO_KEEP=DIR, its
# working directory (every server's log, redward's) is copied to DIR first. A failure lists the
# missing writes by number and says whether the old master has them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PROG=failover-demo
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

BIN=""
while (($#)); do
	case $1 in
	--bin) BIN=${2:?--bin needs a path}; shift 2 ;;
	*) die "unknown argument $1 (see the header of $0)" ;;
	esac
done
command -v redis-server >/dev/null || apt_install redis-server redis-tools
if [[ -z $BIN ]]; then
	cargo build --release --quiet --bin redward
	BIN=target/release/redward
fi

WORK=$(mktemp -d /tmp/redward-failover.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	[[ -n ${DEMO_KEEP:-} ]] && cp -r "$WORK" "$DEMO_KEEP"
	rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {
	for _ in $(seq 200); do
		redis-cli -p "$1" PING >/dev/null 2>&1 && return 0
		sleep 0.05
	done
	die "nothing answers on port $1"
}

MASTER=$(free_port)
REPLICA=$(free_port)
LISTEN=$(free_port)
redis-server --port "$MASTER" --bind 127.0.0.1 --save "" --dir "$WORK" \
	--repl-diskless-sync-delay 0 >"$WORK/master.log" 2>&1 &
PIDS+=($!)
redis-server --port "$REPLICA" --bind 127.0.0.1 --save "" --dir "$WORK" \
	--replicaof 127.0.0.1 "$MASTER" >"$WORK/replica.log" 2>&1 &
PIDS+=($!)
wait_port "$MASTER"
wait_port "$REPLICA"
# Writes are acknowledged before they reach the replica (replication is asynchronous); until
# the first sync is done and the master streams to it, a failover loses them whatever proxy is
# in front. Wait for the master to call the replica online.
for _ in $(seq 200); do
	redis-cli -p "$MASTER" INFO replication | grep -q 'state=online' && break
	sleep 0.05
done
redis-cli -p "$MASTER" INFO replication | grep -q 'state=online' || die "the replica never came in sync"
SENTINELS=()
for i in 1 2 3; do
	port=$(free_port)
	mkdir -p "$WORK/s$i"
	cat >"$WORK/s$i/sentinel.conf" <<EOC
port $port
bind 127.0.0.1
dir $WORK/s$i
sentinel monitor mymaster 127.0.0.1 $MASTER 2
sentinel down-after-milliseconds mymaster 1000
sentinel failover-timeout mymaster 5000
EOC
	redis-server "$WORK/s$i/sentinel.conf" --sentinel >"$WORK/s$i/log" 2>&1 &
	PIDS+=($!)
	SENTINELS+=("$port")
done
for p in "${SENTINELS[@]}"; do wait_port "$p"; done
log "master :$MASTER, replica :$REPLICA, Sentinels :${SENTINELS[*]}"
for _ in $(seq 200); do
	[[ $(redis-cli -p "${SENTINELS[0]}" SENTINEL replicas mymaster | grep -c '^name$') -ge 1 ]] && break
	sleep 0.05
done

cat >"$WORK/redward.yaml" <<EOC
listen:
  - address: "127.0.0.1:$LISTEN"
    tls: off
upstream:
  sentinel:
    master: mymaster
    addresses: [$(printf '"127.0.0.1:%s", ' "${SENTINELS[@]}" | sed 's/, $//')]
users:
  - name: default
    rules: "on nopass ~* &* +@all"
EOC
"$BIN" --config "$WORK/redward.yaml" >"$WORK/redward.log" 2>&1 &
PIDS+=($!)
wait_port "$LISTEN"
log "redward :$LISTEN follows mymaster; writing through it (one SET every 10 ms)"

rc=0
python3 - "$LISTEN" "$MASTER" "$REPLICA" "${SENTINELS[0]}" <<'PY' || rc=$?
import socket, subprocess, sys, time
listen, master, replica, sentinel = map(int, sys.argv[1:5])

def call(port, *args, timeout=1.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(("*%d\r\n" % len(args) + "".join("$%d\r\n%s\r\n" % (len(a), a) for a in args)).encode())
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return data.decode(errors="replace").strip()

def cli(port, *args):
    out = subprocess.run(["redis-cli", "-p", str(port), "--raw", *args],
                         capture_output=True, text=True, timeout=5)
    return out.stdout.split()

def role(port):
    try:
        return cli(port, "ROLE")[:1] == ["master"]
    except Exception:
        return False

conn = None
acked, errors, i = [], [], 0
start = time.time(); next_report = start + 1; failed_over = None
while time.time() - start < 15:
    if failed_over is None and time.time() - start > 5:
        print("--- SENTINEL FAILOVER mymaster", flush=True)
        call(sentinel, "SENTINEL", "FAILOVER", "mymaster")
        failed_over = time.time()
    i += 1
    try:
        if conn is None:
            conn = socket.create_connection(("127.0.0.1", listen), timeout=2)
        key = "demo:%d" % i
        conn.sendall(("*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$1\r\n1\r\n" % (len(key), key)).encode())
        reply = conn.recv(4096).decode(errors="replace")
        if reply.startswith("+OK"):
            acked.append(key)
        else:
            errors.append(reply.strip()); conn.close(); conn = None
    except OSError as e:
        errors.append(str(e)); conn = None
    if time.time() >= next_report:
        masters = [":%d" % p for p in (master, replica) if role(p)]
        who = "ROLE master: " + (" ".join(masters) or "none")
        print("%5.1fs  acknowledged %5d  errors %3d  %s" % (time.time() - start, len(acked), len(errors), who), flush=True)
        next_report += 1
    time.sleep(0.01)
named = cli(sentinel, "SENTINEL", "get-master-addr-by-name", "mymaster")
new_master = int(named[1]) if len(named) == 2 else replica
present = set(cli(new_master, "KEYS", "demo:*"))
missing = [k for k in acked if k not in present]
print("--- %d writes acknowledged, %d errors (%s), %d acknowledged writes missing on the master :%d"
      % (len(acked), len(errors), ", ".join(sorted(set(e.split(",")[0][:50] for e in errors)))[:200] or "none",
         len(missing), new_master), flush=True)
if missing:
    nums = sorted(int(k.split(":")[1]) for k in missing)
    runs, first = [], nums[0]
    for a, b in zip(nums, nums[1:] + [None]):
        if b != a + 1:
            runs.append("%d" % first if first == a else "%d-%d" % (first, a)); first = b
    other = master if new_master == replica else replica
    on_other = len(set(missing) & set(cli(other, "KEYS", "demo:*")))
    print("--- missing writes (by number): %s; %d of them on :%d" % (", ".join(runs)[:300], on_other, other), flush=True)
sys.exit(1 if missing else 0)
PY
log "redward's log: what it saw"
grep -E "Sentinel|master" "$WORK/redward.log" | sed 's/^/  /' | tail -"$((rc ? 40 : 8))"
exit "$rc"
