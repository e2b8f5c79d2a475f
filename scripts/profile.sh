#!/usr/bin/env bash
# Profiles redward under redis-benchmark. Two tools:
#
#   scripts/profile.sh callgrind [P] [N]   # instructions per request (valgrind: repeatable even on
#                                          # a noisy machine; user space only; slow, keep N small)
#   scripts/profile.sh perf [P] [N]        # where the CPU time goes, kernel included
#                                          # (perf record -g, software clock; report on stdout)
#   scripts/profile.sh flame [P] [N] [DIR] # redward beside Redis's own TLS, same workload, one
#                                          # after the other: flame graphs (inferno, `cargo
#                                          # install inferno`) of redward, of the Redis behind it
#                                          # and of Redis doing TLS itself, into DIR (default
#                                          # docs/profile), and the syscalls each makes per request
#
# P = pipeline depth (default 16), N = requests (default 20000 for callgrind, 500000 for perf).
# Uses target/release/redward (built if missing), a throwaway redis-server and dev certs in a
# temporary directory; everything runs on 127.0.0.1 and is stopped on exit.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mode=${1:-callgrind}
pipeline=${2:-16}
case "$mode" in
	callgrind) requests=${3:-20000} ;;
	perf | flame) requests=${3:-500000} ;;
	*)
		echo "usage: $0 callgrind|perf [pipeline] [requests]" >&2
		exit 2
		;;
esac
for tool in redis-server redis-benchmark; do
	command -v "$tool" >/dev/null || {
		echo "profile.sh: $tool is missing (apt-get install redis-server redis-tools)" >&2
		exit 2
	}
done
[[ $mode == callgrind ]] && ! command -v valgrind >/dev/null && {
	echo "profile.sh: valgrind is missing (apt-get install valgrind)" >&2
	exit 2
}
[[ $mode != callgrind ]] && ! command -v perf >/dev/null && {
	echo "profile.sh: perf is missing (apt-get install linux-perf)" >&2
	exit 2
}
[[ $mode == flame ]] && ! command -v inferno-flamegraph >/dev/null && {
	echo "profile.sh: inferno is missing (cargo install inferno)" >&2
	exit 2
}
bin=$root/target/release/redward
[[ -x $bin ]] || (cd "$root" && cargo build --release)

work=$(mktemp -d /tmp/redward-profile.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	[[ -n ${KEEP:-} ]] || rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
redis_port=$(free_port)
proxy_port=$(free_port)
pw=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
"$bin" gen-certs --out "$work/certs" >/dev/null
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
	--user default off --user app on ">$pw" '~*' '&*' '+@all' >"$work/redis.log" 2>&1 &
pids+=($!)
hash=$(printf %s "$pw" | "$bin" hash-password)
cat >"$work/redward.yaml" <<YAML
listen:
  - address: "127.0.0.1:$proxy_port"
    tls: { cert: certs/server.crt, key: certs/server.key }
upstream: { address: "127.0.0.1:$redis_port", username: app, password: "$pw" }
users:
  - name: app
    rules: "on $hash ~* &* +@all"
workers: 1
log: { level: warn }
YAML
bench() {
	redis-benchmark --tls --cacert "$work/certs/ca.crt" -p "${2:-$proxy_port}" --user app -a "$pw" \
		-c 10 -n "$1" -P "$pipeline" -t get -q 2>&1 | tr '\r' '\n' | grep 'requests per second' | tail -1
}
wait_up() {
	for _ in $(seq 1 300); do
		(exec 3<>"/dev/tcp/127.0.0.1/$proxy_port") 2>/dev/null && return 0
		sleep 0.1
	done
	echo "profile.sh: redward did not start" >&2
	exit 1
}

if [[ $mode == callgrind ]]; then
	valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" "$bin" --config "$work/redward.yaml" \
		>"$work/redward.log" 2>&1 &
	rw=$!
	pids+=("$rw")
	wait_up
	bench 200 >/dev/null # warm-up: handshakes, first allocations
	# Count only the measured requests: start-up (aws-lc's entropy gathering dominates it) and
	# the warm-up are zeroed away.
	callgrind_control --zero "$rw" >/dev/null 2>&1 || true
	bench "$requests"
	kill -TERM "$rw"
	wait "$rw" 2>/dev/null || true
	total=$(callgrind_annotate "$work/callgrind.out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done {gsub(",","",$1); print $1; done=1}')
	echo "instructions in redward while serving $requests requests: $total"
	echo "instructions per request (approx., over $requests requests at -P $pipeline): $(( total / requests ))"
	echo "(per-function breakdown: scripts/profile.sh perf, or KEEP=1 and callgrind_annotate on the output)"
elif [[ $mode == flame ]]; then
	out=${4:-$root/docs/profile}
	mkdir -p "$out"
	tls_port=$(free_port)
	redis-server --port 0 --tls-port "$tls_port" --bind 127.0.0.1 --save '' --appendonly no \
		--tls-cert-file "$work/certs/server.crt" --tls-key-file "$work/certs/server.key" \
		--tls-ca-cert-file "$work/certs/ca.crt" --tls-auth-clients no \
		--user default off --user app on ">$pw" '~*' '&*' '+@all' >"$work/redis-tls.log" 2>&1 &
	tls_pid=$!
	pids+=("$tls_pid")
	"$bin" --config "$work/redward.yaml" >"$work/redward.log" 2>&1 &
	rw=$!
	pids+=("$rw")
	wait_up
	redis_pid=${pids[0]}
	calls='syscalls:sys_enter_writev,syscalls:sys_enter_write,syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_read,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_futex'
	# profile NAME PORT PID...: one measured run against PORT, recording PID (a flame graph
	# each) and counting the syscalls of all of them per request
	profile() {
		local name=$1 port=$2 p
		local -a recs=()
		shift 2
		bench 20000 "$port" >/dev/null
		for p in "$@"; do
			perf record -F 4000 -g -p "$p" -o "$work/$name-$p.data" -- sleep 4 >/dev/null 2>&1 &
			recs+=($!)
		done
		perf stat -e "$calls" -p "$(IFS=,; echo "$*")" -o "$work/$name.stat" -- sleep 4 >/dev/null 2>&1 &
		recs+=($!)
		echo "$name: $(bench "$requests" "$port")"
		wait "${recs[@]}" || true
		for p in "$@"; do
			local label=$name
			[[ $p == "$redis_pid" ]] && label=$name-redis
			perf script -i "$work/$name-$p.data" 2>/dev/null | inferno-collapse-perf >"$out/$label.folded"
			inferno-flamegraph --title "$label: GET -P $pipeline, 10 TLS clients" \
				<"$out/$label.folded" >"$out/$label.svg"
		done
		echo "  syscalls while the $requests requests ran (4 s window), per request:"
		awk -v n="$requests" '/syscalls:/ { gsub(",", "", $1); printf "    %-22s %.3f\n", $2, $1 / n }' "$work/$name.stat"
	}
	profile redward "$proxy_port" "$rw" "$redis_pid"
	profile redis-tls "$tls_port" "$tls_pid"
	echo "flame graphs and folded stacks in $out"
else
	"$bin" --config "$work/redward.yaml" >"$work/redward.log" 2>&1 &
	rw=$!
	pids+=("$rw")
	wait_up
	bench 20000 >/dev/null
	perf record -F 2000 -g -p "$rw" -o "$work/perf.data" -- sleep 6 >/dev/null 2>&1 &
	rec=$!
	bench "$requests"
	wait "$rec" || true
	echo "== where redward's CPU goes (kernel vs user) =="
	perf report -i "$work/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep '%' | grep -v '^ *|' | head -5
	echo "== top user-space functions =="
	perf report -i "$work/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null | grep '%' | grep -v '\[k\]' | head -20
	echo "== top kernel functions =="
	perf report -i "$work/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null | grep '\[k\]' | head -12
fi
