# shellcheck shell=bash
# cluster_lib.sh: a 3-master Redis Cluster on loopback with redward in front, for
# cluster-demo.sh and bench-cluster.sh (sourced after lib.sh; uses the caller's `die`, `log`,
# `PIDS` array, `WORK` directory and `LOGS` directory for logs).
#
#   cluster_ports                 sets NODES BUSES (3 each), ENTRY, RANGE (8 listener ports),
#                                 TLS_NODES TLS_BUSES (3 each, for tls_cluster_start)
#   cluster_start [ARGS...]       starts the masters (extra redis-server ARGS, e.g. more users),
#                                 joins them, waits for cluster_state:ok; sets NODE_PIDS
#   tls_cluster_start CERTDIR     the same cluster TLS only, Redis's own TLS (bench-cluster.sh)
#   redward_start BIN RULES       gen-certs, config (user app with RULES), check, start; waits
#                                 until redward shows the 3 masters; sets REDWARD, CACERT, nodes
#   direct ARGS...                redis-cli as the `proxy` user, straight to a node
# Needs PROXY_PW and APP_PW set (see `secret`).

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
	tail -n 20 "$LOGS/$3.log" | sed 's/^/    /' >&2
	die "$3 does not answer on 127.0.0.1:$1 (end of its log above)"
}
secret() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }
sha256() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }
direct() { REDISCLI_AUTH=$PROXY_PW redis-cli -h 127.0.0.1 --user proxy --no-auth-warning "$@"; }

cluster_ports() {
	local -a p
	read -r -a p <<<"$(pick_ports 13 8)"
	NODES=("${p[@]:0:3}")
	BUSES=("${p[@]:3:3}")
	ENTRY=${p[6]}
	TLS_NODES=("${p[@]:7:3}")
	TLS_BUSES=("${p[@]:10:3}")
	RANGE="${p[13]}-${p[14]}"
}

# Nodes with AUTH in front of everything but the cluster bus (which has none in Redis).
cluster_start() {
	local i
	NODE_PIDS=()
	for i in 0 1 2; do
		mkdir -p "$WORK/n$i"
		redis-server --bind 127.0.0.1 --port "${NODES[i]}" --protected-mode yes \
			--cluster-enabled yes --cluster-config-file nodes.conf --cluster-port "${BUSES[i]}" \
			--cluster-node-timeout 3000 --save '' --appendonly no --dir "$WORK/n$i" \
			--user default off --user proxy on "#$(sha256 "$PROXY_PW")" '~*' '&*' '+@all' \
			"$@" >"$LOGS/node$i.log" 2>&1 &
		PIDS+=("$!")
		NODE_PIDS+=("$!")
		wait_port "${NODES[i]}" "$!" "node$i"
	done
	REDISCLI_AUTH=$PROXY_PW redis-cli --user proxy --no-auth-warning --cluster create \
		"${NODES[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >"$LOGS/create.log" 2>&1 ||
		{ cat "$LOGS/create.log" >&2; die "redis-cli --cluster create failed"; }
	wait_cluster_ok "the cluster" "${NODES[@]}"
}

# wait_cluster_ok WHAT PORT... [-- DIRECT-ARGS...]: until every node says cluster_state:ok and
# knows all three (30 s), asked with `direct` (and DIRECT-ARGS, such as --tls)
wait_cluster_ok() {
	local what=$1 ok info p
	shift
	local -a ports=() how=()
	while (($#)) && [[ $1 != -- ]]; do ports+=("$1"); shift; done
	(($#)) && shift && how=("$@")
	for _ in $(seq 300); do
		ok=0
		for p in "${ports[@]}"; do
			info=$(direct "${how[@]}" -p "$p" CLUSTER INFO 2>/dev/null) || true
			[[ $info == *cluster_state:ok* && $info == *cluster_known_nodes:3* ]] && ok=$((ok + 1))
		done
		((ok == 3)) && return 0
		sleep 0.1
	done
	die "$what did not reach cluster_state:ok on every node within 30 s"
}

# tls_cluster_start CERTDIR: a second cluster, TLS only (`tls-port`, `tls-cluster yes`,
# `tls-replication yes`, plaintext `port 0`): Redis's own TLS, the reference redward is weighed
# against. Its nodes take TLS_NODES/TLS_BUSES (set by cluster_ports); sets TLS_NODE_PIDS.
tls_cluster_start() {
	local certs=$1 i
	shift
	local -a tls=(--tls-cert-file "$certs/server.crt" --tls-key-file "$certs/server.key"
		--tls-ca-cert-file "$certs/ca.crt" --tls-auth-clients no)
	TLS_NODE_PIDS=()
	for i in 0 1 2; do
		mkdir -p "$WORK/t$i"
		redis-server --bind 127.0.0.1 --port 0 --tls-port "${TLS_NODES[i]}" "${tls[@]}" \
			--tls-cluster yes --tls-replication yes --protected-mode yes \
			--cluster-enabled yes --cluster-config-file nodes.conf --cluster-port "${TLS_BUSES[i]}" \
			--cluster-node-timeout 3000 --save '' --appendonly no --dir "$WORK/t$i" \
			--user default off --user proxy on "#$(sha256 "$PROXY_PW")" '~*' '&*' '+@all' \
			"$@" >"$LOGS/tls-node$i.log" 2>&1 &
		PIDS+=("$!")
		TLS_NODE_PIDS+=("$!")
		wait_port "${TLS_NODES[i]}" "$!" "tls-node$i"
	done
	REDISCLI_AUTH=$PROXY_PW redis-cli --tls --cacert "$certs/ca.crt" --user proxy --no-auth-warning \
		--cluster create "${TLS_NODES[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes \
		>"$LOGS/tls-create.log" 2>&1 ||
		{ cat "$LOGS/tls-create.log" >&2; die "redis-cli --cluster create (TLS) failed"; }
	wait_cluster_ok "the TLS cluster" "${TLS_NODES[@]}" -- --tls --cacert "$certs/ca.crt"
}

redward_start() {
	local bin=$1 rules=$2
	"$bin" gen-certs --out "$WORK/certs" >"$LOGS/gen-certs.log" 2>&1 ||
		{ cat "$LOGS/gen-certs.log" >&2; die "redward gen-certs failed"; }
	(umask 077 && printf '%s\n' "$PROXY_PW" >"$WORK/redis.pass")
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
    rules: "$rules"
EOC
	"$bin" check --config "$WORK/redward.yaml" >"$LOGS/redward-check.log" 2>&1 ||
		{ cat "$LOGS/redward-check.log" >&2; die "redward check rejects its configuration"; }
	NO_COLOR=1 "$bin" --config "$WORK/redward.yaml" >"$LOGS/redward.log" 2>&1 &
	REDWARD=$!
	PIDS+=("$REDWARD")
	wait_port "$ENTRY" "$REDWARD" redward
	CACERT=$WORK/certs/ca.crt
	# Until redward shows all three masters, each on one of its own node listeners.
	for _ in $(seq 200); do
		nodes=$(REDISCLI_AUTH=$APP_PW redis-cli --tls --cacert "$CACERT" -h 127.0.0.1 \
			-p "$ENTRY" --user app --no-auth-warning CLUSTER NODES 2>&1) || true
		[[ $(grep -c master <<<"$nodes") == 3 ]] && return 0
		sleep 0.05
	done
	die "CLUSTER NODES through redward: ${nodes:0:300}"
}
