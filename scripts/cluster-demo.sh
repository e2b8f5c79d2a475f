#!/usr/bin/env bash
# redward in front of a Redis Cluster, on this machine, in about 10 seconds:
#
#   scripts/cluster-demo.sh             # builds redward (release) if needed
#   scripts/cluster-demo.sh --bin PATH  # or uses this binary
#   scripts/cluster-demo.sh --no-wait   # run the checks, then stop everything (tests, CI)
#
# Starts, on free loopback ports: three Redis Cluster masters (`redis-server --cluster-enabled
# yes`, each with an explicit --cluster-port; user `default` off and a user `proxy` with a
# random password, so every path needs AUTH) joined with `redis-cli --cluster create`, and
# redward with `upstream.cluster` in front of them: a TLS entry listener, plus one TLS listener
# per node on a range of free ports (certificates from `redward gen-certs`). Through redward it
# writes a few keys that land in different slots (`redis-cli -c --tls`: MOVED replies point at
# redward's node listeners), reads them back, checks each one sits on the node that owns its
# slot, and prints `CLUSTER NODES` as redward shows it: only redward's ports, no node's own
# client or bus port. Then it prints a `redis-cli -c --tls ...` line to paste and waits until
# Ctrl-C (or, with --no-wait, exits). Everything it starts is stopped on exit (Ctrl-C included).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PROG=cluster-demo
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

BIN=""
WAIT=1
while (($#)); do
	case $1 in
	--bin) BIN=${2:?--bin needs a path}; shift 2 ;;
	--no-wait) WAIT=0; shift ;;
	-h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
	*) die "unknown argument $1 (see the header of $0)" ;;
	esac
done
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
	apt_install redis-server redis-tools
fi
command -v python3 >/dev/null || apt_install python3
[[ $(redis-cli --help 2>&1) == *--tls* ]] || die "this redis-cli is built without TLS"
if [[ -z $BIN ]]; then
	cargo build --release --quiet --bin redward
	BIN=target/release/redward
fi
[[ -f $BIN && -x $BIN ]] || die "--bin $BIN is not an executable file"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

WORK=$(mktemp -d /tmp/redward-cluster.XXXXXX)
chmod 700 "$WORK"
PIDS=()
cleanup() {
	trap '' INT TERM HUP # a second signal does not cut the clean-up short
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# pick_ports N K: N distinct free ports, then the first and last of K consecutive free ones; all
# outside the kernel's ephemeral range (where outgoing connections take their ports from).
pick_ports() {
	python3 - "$1" "$2" <<'PY'
import random, socket, sys
n, k = map(int, sys.argv[1:3])
lo, hi = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
pool = [p for p in range(10000, 65536 - k) if not lo - k <= p <= hi]
held = []
def grab(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        s.close()
        return False
    held.append(s)
    return True
single = []
while len(single) < n:
    p = random.choice(pool)
    if p not in single and grab(p):
        single.append(p)
while True:
    first = random.choice(pool)
    if all(p not in single for p in range(first, first + k)) and all(grab(p) for p in range(first, first + k)):
        break
print(*single, first, first + k - 1)
PY
}
# wait_port PORT PID NAME: until 127.0.0.1:PORT accepts (10 s); stop at once if PID exits
wait_port() {
	for _ in $(seq 200); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		kill -0 "$2" 2>/dev/null || break
		sleep 0.05
	done
	tail -n 20 "$WORK/$3.log" | sed 's/^/    /' >&2
	die "$3 does not answer on 127.0.0.1:$1 (end of its log above)"
}
secret() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }
sha256() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

PROXY_PW=$(secret)
APP_PW=$(secret)
(umask 077 && printf '%s\n' "$PROXY_PW" >"$WORK/redis.pass")
read -r -a P <<<"$(pick_ports 7 8)"
NODES=("${P[@]:0:3}")
BUSES=("${P[@]:3:3}")
ENTRY=${P[6]}
RANGE="${P[7]}-${P[8]}"

# Nodes with AUTH in front of everything but the cluster bus (which has none in Redis).
for i in 0 1 2; do
	mkdir -p "$WORK/n$i"
	redis-server --bind 127.0.0.1 --port "${NODES[i]}" --protected-mode yes \
		--cluster-enabled yes --cluster-config-file nodes.conf --cluster-port "${BUSES[i]}" \
		--cluster-node-timeout 3000 --save '' --appendonly no --dir "$WORK/n$i" \
		--user default off --user proxy on "#$(sha256 "$PROXY_PW")" '~*' '&*' '+@all' \
		>"$WORK/node$i.log" 2>&1 &
	PIDS+=("$!")
	wait_port "${NODES[i]}" "$!" "node$i"
done
# as the `proxy` user, straight to a node (plaintext)
direct() { REDISCLI_AUTH=$PROXY_PW redis-cli -h 127.0.0.1 --user proxy --no-auth-warning "$@"; }
REDISCLI_AUTH=$PROXY_PW redis-cli --user proxy --no-auth-warning --cluster create \
	"${NODES[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >"$WORK/create.log" 2>&1 ||
	{ cat "$WORK/create.log" >&2; die "redis-cli --cluster create failed"; }
for _ in $(seq 300); do
	ok=0
	for p in "${NODES[@]}"; do
		info=$(direct -p "$p" CLUSTER INFO 2>/dev/null) || true
		[[ $info == *cluster_state:ok* && $info == *cluster_known_nodes:3* ]] && ok=$((ok + 1))
	done
	((ok == 3)) && break
	sleep 0.1
done
((ok == 3)) || die "the cluster did not reach cluster_state:ok on every node within 30 s"
log "cluster: masters on :${NODES[*]} (cluster bus :${BUSES[*]}), cluster_state:ok"

"$BIN" gen-certs --out "$WORK/certs" >"$WORK/gen-certs.log" 2>&1 ||
	{ cat "$WORK/gen-certs.log" >&2; die "redward gen-certs failed"; }
cat >"$WORK/redward.yaml" <<EOC
listen:
  - address: "127.0.0.1:$ENTRY"
    tls: { cert: certs/server.crt, key: certs/server.key }
upstream:
  cluster:
    seeds: ["127.0.0.1:${NODES[0]}"]
    node_listeners:
      bind: "127.0.0.1"
      ports: "$RANGE"
      announce_host: "127.0.0.1"
  username: proxy
  password_file: redis.pass
users:
  - name: app
    rules: "on #$(sha256 "$APP_PW") ~* &* +@all"
EOC
"$BIN" check --config "$WORK/redward.yaml" >"$WORK/check.log" 2>&1 ||
	{ cat "$WORK/check.log" >&2; die "redward check rejects its configuration"; }
NO_COLOR=1 "$BIN" --config "$WORK/redward.yaml" >"$WORK/redward.log" 2>&1 &
REDWARD=$!
PIDS+=("$REDWARD")
wait_port "$ENTRY" "$REDWARD" redward

# as the `app` user, through redward (TLS, following redirects)
CLI=(redis-cli -c --tls --cacert "$WORK/certs/ca.crt" -h 127.0.0.1 --user app --no-auth-warning)
via() { REDISCLI_AUTH=$APP_PW "${CLI[@]}" "$@"; }
# Until redward shows all three masters, each on one of its own node listeners.
for _ in $(seq 200); do
	nodes=$(via -p "$ENTRY" CLUSTER NODES 2>&1) || true
	[[ $(grep -c master <<<"$nodes") == 3 ]] && break
	sleep 0.05
done
[[ $(grep -c master <<<"$nodes") == 3 ]] || die "CLUSTER NODES through redward: ${nodes:0:300}"
log "redward: entry listener 127.0.0.1:$ENTRY (TLS), node listeners from $RANGE"

# port PORT(S) -> which node (by its id) answers there
declare -A ID_AT
for p in "${NODES[@]}"; do ID_AT[$p]=$(direct -p "$p" CLUSTER MYID); done
# redward's node listener port -> the node behind it, from redward's CLUSTER NODES
declare -A UPSTREAM_OF
while read -r id addr _; do
	for p in "${NODES[@]}"; do [[ ${ID_AT[$p]} == "$id" ]] && UPSTREAM_OF[${addr%%@*}]=$p; done
done <<<"$nodes"
# slot -> "host:port" of the node that serves it, as redward announces it
owner_of() {
	awk -v s="$1" '{ for (i = 9; i <= NF; i++) { n = split($i, r, "-"); if (n == 1) r[2] = r[1]
		if (r[1] ~ /^[0-9]+$/ && s + 0 >= r[1] + 0 && s + 0 <= r[2] + 0) { sub(/@.*/, "", $2); print $2 } } }' <<<"$nodes"
}

echo
echo "Writing through redward (redis-cli -c --tls -p $ENTRY):"
bad=0
for key in user:1000 order:42 cart:7 session:f00d page:home counter:visits; do
	value="hello from $key"
	reply=$(via -p "$ENTRY" SET "$key" "$value" 2>&1 | tail -n 1)
	back=$(via -p "$ENTRY" GET "$key" 2>&1 | tail -n 1)
	slot=$(via -p "$ENTRY" CLUSTER KEYSLOT "$key")
	at=$(owner_of "$slot")
	node=${at:+${UPSTREAM_OF[$at]:-}}
	stored=$([[ -z $node ]] || direct -p "$node" GET "$key")
	status=ok
	if [[ $reply != OK || $back != "$value" || $stored != "$value" ]]; then
		status="FAILED (SET: $reply, GET: $back, on the node: ${stored:-nothing})"
		bad=$((bad + 1))
	fi
	printf '  SET %-15s slot %5s  -> redward %-16s -> node 127.0.0.1:%-6s %s\n' \
		"$key" "$slot" "${at:-?}" "${node:-?}" "$status"
done

echo
echo "CLUSTER NODES through redward:"
sed 's/^/  /' <<<"$nodes"
leaked=()
for p in "${NODES[@]}" "${BUSES[@]}"; do grep -Eq ":$p([^0-9]|$)" <<<"$nodes" && leaked+=("$p"); done
((${#leaked[@]} == 0)) || die "CLUSTER NODES through redward names the nodes' own ports: ${leaked[*]}"
while read -r _ addr _; do
	port=${addr%%@*}
	port=${port##*:}
	((port >= ${RANGE%-*} && port <= ${RANGE#*-})) || die "CLUSTER NODES names $addr, not a node listener"
done <<<"$nodes"
((bad == 0)) || die "$bad of the keys did not go where they should (see above)"
echo "  (the nodes themselves are on :${NODES[*]}, cluster bus :${BUSES[*]}: not shown to clients)"
echo

if ((WAIT == 0)); then
	log "all checks passed (--no-wait: stopping)"
	exit 0
fi
printf -v line 'redis-cli -c --tls --cacert %q -h 127.0.0.1 -p %s --user app --pass %s' \
	"$WORK/certs/ca.crt" "$ENTRY" "$APP_PW"
cat <<EOF
Paste this into another terminal (try SET/GET on a few keys, CLUSTER SLOTS, CLUSTER SHARDS):

  $line

redward's log: $WORK/redward.log. Ctrl-C here stops redward and the cluster.
EOF
while kill -0 "$REDWARD" 2>/dev/null; do sleep 1; done
tail -n 20 "$WORK/redward.log" | sed 's/^/    /' >&2
die "redward exited (end of its log above)"
