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

LOGS=$WORK
# shellcheck source=scripts/cluster_lib.sh
source scripts/cluster_lib.sh
PROXY_PW=$(secret)
APP_PW=$(secret)
cluster_ports
cluster_start
log "cluster: masters on :${NODES[*]} (cluster bus :${BUSES[*]}), cluster_state:ok"
redward_start "$BIN" "on #$(sha256 "$APP_PW") ~* &* +@all"
log "redward: entry listener 127.0.0.1:$ENTRY (TLS), node listeners from $RANGE"

# as the `app` user, through redward (TLS, following redirects)
CLI=(redis-cli -c --tls --cacert "$CACERT" -h 127.0.0.1 --user app --no-auth-warning)
via() { REDISCLI_AUTH=$APP_PW "${CLI[@]}" "$@"; }

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
