#!/usr/bin/env bash
# bench-cluster.sh — redward in front of a Redis Cluster, measured with `redis-benchmark --cluster`.
#
# Usage: scripts/bench-cluster.sh [options]     (also: scripts/bench.sh --cluster [options])
#   --bin PATH       use this redward binary (default: cargo build --release --bin redward)
#   --redward PATH   the same (bench.sh's name for it)
#   --rounds N       measured rounds (default 3); each runs every workload on every target
#   --seconds S      target length of one run (default 2); -n is sized by a warm-up run
#   --out DIR        results: runs.csv, report.md, logs/ (default: a new /tmp/redward-bench-cluster.*)
#   --no-install     never run apt-get; fail if a tool is missing
#   -h, --help       this text
#
# Three Redis Cluster masters on free 127.0.0.1 ports (explicit --cluster-port; no persistence;
# user `default` off, user `proxy` for redward and user `app` for the benchmark, random passwords,
# so every path needs AUTH), joined with `redis-cli --cluster create`, and redward with
# `upstream.cluster` in front (a TLS entry listener plus one TLS listener per node, certificate
# from `redward gen-certs`; user `app` with the same rules, "+@all"). redis-benchmark --cluster
# (-c 50, --user app, -d 64, -r 100000: random keys, so every node gets its share) runs against
#   direct    the plaintext port of a node (the benchmark reads CLUSTER NODES and goes to each)
#   tls       a second cluster of three masters with Redis's own TLS (`tls-port`, `tls-cluster
#             yes`, `tls-replication yes`, no plaintext port): the reference a user weighs
#             redward against
#   redward   redward's TLS entry listener (CLUSTER NODES there names redward's node listeners)
# (redis-benchmark keeps the address it was given for the node that CLUSTER NODES marks `myself`,
# so through redward a third of the clients use the entry listener, the rest the node listeners)
# with the single-node comparison's workloads (compare.sh) that --cluster can run: SET/GET at
# -P 1 and -P 16, churn (GET, -k 0: a new connection, TLS handshake and login per request), and
# GET at -P 1 and -P 16 in RESP3 (-3). Warm-up runs per target and workload size -n
# so that a run lasts about --seconds; then each round runs every workload on every target, the
# order rotating from round to round. Per run: ops/s, p50/p99 latency (--csv), CPU seconds of
# redward and of the three redis-servers (/proc/PID/stat utime+stime before and after), and the
# SET/GET calls and error replies the nodes counted (INFO): every request must reach a node and
# no node may answer an error, or the run is flagged. The report: per workload the median ops/s
# of each target, the medians of the per-round ratios redward/direct and redward/tls, redward's
# CPU seconds per 100k requests, and the server side's (redward and its nodes, against the TLS
# cluster's nodes).
#
# Needs redis-server, redis-tools (redis-benchmark 6.0+, built with TLS) and python3; installed
# with apt-get when missing (root or sudo). Everything listens on 127.0.0.1 only and is stopped
# on exit, Ctrl-C included. Exit status: 0 every run clean, 1 some run had errors (listed under
# the table), 2 set-up failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PROG=bench-cluster
# shellcheck source=scripts/lib.sh
source scripts/lib.sh
die() { # as bench.sh: exit status 2 when the set-up fails
	log "error: $*"
	exit 2
}

BIN=""
ROUNDS=3
SECS=2
OUT=""
INSTALL=1
WORKLOADS=(set-P1 get-P1 set-P16 get-P16 churn get-P1-resp3 get-P16-resp3)
CLIENTS=50
while (($#)); do
	case $1 in
	--bin | --redward) BIN=${2:?$1 needs a path}; shift 2 ;;
	--rounds) ROUNDS=${2:?--rounds needs a number}; shift 2 ;;
	--seconds) SECS=${2:?--seconds needs a number}; shift 2 ;;
	--out) OUT=${2:?--out needs a directory}; shift 2 ;;
	--no-install) INSTALL=0; shift ;;
	-h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
	*) die "unknown argument $1 (see $0 --help)" ;;
	esac
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds needs a positive integer"
if ! [[ $SECS =~ ^[0-9]*\.?[0-9]+$ ]] || ! awk -v s="$SECS" 'BEGIN { exit !(s > 0) }'; then
	die "--seconds needs a positive number"
fi

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
if ! command -v redis-cli >/dev/null || ! command -v redis-benchmark >/dev/null; then
	missing+=(redis-tools)
fi
command -v python3 >/dev/null || missing+=(python3)
if ((${#missing[@]})); then
	((INSTALL)) || die "missing packages: ${missing[*]} (--no-install given)"
	apt_install "${missing[@]}"
fi
help=$(redis-benchmark --help 2>&1) || true
[[ $help == *--cluster* ]] || die "this redis-benchmark has no --cluster (Redis 6.0 or later needed)"
[[ $help == *--tls* ]] || die "this redis-benchmark is built without TLS"
if [[ -z $BIN ]]; then
	cargo build --release --quiet --bin redward
	BIN=target/release/redward
fi
[[ -f $BIN && -x $BIN ]] || die "--bin $BIN is not an executable file"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

WORK=$(mktemp -d /tmp/redward-cluster-work.XXXXXX)
chmod 700 "$WORK"
[[ -n $OUT ]] || OUT=$(mktemp -d /tmp/redward-bench-cluster.XXXXXX)
mkdir -p "$OUT/logs" || die "cannot create $OUT"
OUT=$(cd "$OUT" && pwd)
LOGS=$OUT/logs
PIDS=()
BENCH=""
cleanup() {
	trap '' INT TERM HUP # a second signal does not cut the clean-up short
	[[ -z $BENCH ]] || kill "$BENCH" 2>/dev/null || true
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'log "interrupted; partial results in $OUT"; exit 130' INT TERM HUP

# shellcheck source=scripts/cluster_lib.sh
source scripts/cluster_lib.sh
PROXY_PW=$(secret)
APP_PW=$(secret)
RULES="on #$(sha256 "$APP_PW") ~* &* +@all"
cluster_ports

# ------------------------------------------------------------------ the cluster
# shellcheck disable=SC2086  # RULES is a list of ACL rules, split on purpose
cluster_start --user app $RULES

# ------------------------------------------------------------------ redward
redward_start "$BIN" "$RULES"
# ------------------------------------------------------------------ the reference: Redis's own TLS
# shellcheck disable=SC2086
tls_cluster_start "$WORK/certs" --user app $RULES
# Writes to three slots (redis-cli -c), every way.
for t in direct tls redward; do
	case $t in
	direct) args=(-p "${NODES[0]}") ;;
	tls) args=(--tls --cacert "$CACERT" -p "${TLS_NODES[0]}") ;;
	redward) args=(--tls --cacert "$CACERT" -p "$ENTRY") ;;
	esac
	for key in smoke:a smoke:b smoke:c; do
		reply=$(REDISCLI_AUTH=$APP_PW redis-cli -c -h 127.0.0.1 "${args[@]}" --user app \
			--no-auth-warning SET "$key" 1 2>&1 | tail -n 1)
		[[ $reply == OK ]] || die "$t: SET $key (redis-cli -c) answered '${reply:0:200}', not OK"
	done
done

# ------------------------------------------------------------------ measure
TICK=$(getconf CLK_TCK)
TIMEOUT=$(awk -v s="$SECS" 'BEGIN { print int(s * 10 + 30) }')
# cpu PID...: utime+stime of these processes, in clock ticks
cpu() {
	local p s f sum=0
	for p in "$@"; do
		s=$(cat "/proc/$p/stat" 2>/dev/null) || return 1
		read -r -a f <<<"${s##*) }"
		sum=$((sum + f[11] + f[12]))
	done
	echo "$sum"
}
# counters CMD TARGET: calls of CMD and error replies, summed over that target's nodes
counters() {
	local p calls=0 errs=0 c e
	local -a nodes=("${NODES[@]}") how=()
	[[ $2 != tls ]] || { nodes=("${TLS_NODES[@]}"); how=(--tls --cacert "$CACERT"); }
	for p in "${nodes[@]}"; do
		c=$(direct "${how[@]}" -p "$p" INFO commandstats | sed -n "s/^cmdstat_$1:calls=\([0-9]*\),.*/\1/p")
		e=$(direct "${how[@]}" -p "$p" INFO stats | sed -n 's/^total_error_replies:\([0-9]*\).*/\1/p')
		calls=$((calls + ${c:-0}))
		errs=$((errs + ${e:-0}))
	done
	echo "$calls $errs"
}
echo "round,workload,target,n,rps,p50_ms,p99_ms,wall_s,redward_cpu_s,redis_cpu_s,reached,redis_errors,exit,error" \
	>"$OUT/runs.csv"
# run_one ROUND WORKLOAD TARGET N: one redis-benchmark run, a row in runs.csv; sets RPS, WALL
run_one() {
	local round=$1 wl=$2 t=$3 n=$4 op pipe=1 args rc=0 c0 c1 r0 r1 w0 w1 row
	local rps="" p50="" p99="" err="" line k0 k1 e0 e1 reached errs
	local -a more=()
	case $wl in
	churn) op=get; more=(-k 0) ;;
	*-resp3) op=${wl%%-*}; pipe=${wl#*-P}; pipe=${pipe%-resp3}; more=(-3) ;;
	*) op=${wl%%-*}; pipe=${wl#*-P} ;;
	esac
	args=(--cluster -h 127.0.0.1 --user app -a "$APP_PW" -c "$CLIENTS" -n "$n" -r 100000 -d 64
		-P "$pipe" -t "$op" "${more[@]}" --csv)
	local -a pids=("${NODE_PIDS[@]}")
	case $t in
	direct) args+=(-p "${NODES[0]}") ;;
	tls) args+=(-p "${TLS_NODES[0]}" --tls --cacert "$CACERT"); pids=("${TLS_NODE_PIDS[@]}") ;;
	redward) args+=(-p "$ENTRY" --tls --cacert "$CACERT") ;;
	esac
	kill -0 "$REDWARD" 2>/dev/null || err="redward is not running"
	read -r k0 e0 <<<"$(counters "$op" "$t")"
	c0=$(cpu "$REDWARD") || c0=0
	r0=$(cpu "${pids[@]}")
	w0=$EPOCHREALTIME
	timeout "$TIMEOUT" redis-benchmark "${args[@]}" >"$WORK/out" 2>"$WORK/err" &
	BENCH=$!
	wait "$BENCH" || rc=$?
	BENCH=""
	w1=$EPOCHREALTIME
	c1=$(cpu "$REDWARD") || c1=$c0
	[[ $t == redward ]] || c1=$c0 # only redward's own runs count toward its CPU
	r1=$(cpu "${pids[@]}")
	read -r k1 e1 <<<"$(counters "$op" "$t")"
	reached=$((k1 - k0))
	errs=$((e1 - e0))
	{
		echo "== r$round $wl $t -n $n (exit $rc)"
		cat "$WORK/out" "$WORK/err"
	} >>"$LOGS/redis-benchmark.log"
	row=$(grep -E '^"(SET|GET)"' "$WORK/out" | tail -n 1) || true
	[[ -z $row ]] || IFS=, read -r _ rps _ _ p50 _ p99 _ <<<"${row//\"/}"
	if ((rc == 124)); then
		err+="${err:+; }timed out after $TIMEOUT s"
	elif ((rc != 0)); then
		err+="${err:+; }redis-benchmark exit status $rc"
	fi
	while IFS= read -r line; do
		[[ -z $line || $line == "WARNING: Could not fetch server CONFIG"* ]] && continue
		[[ $line == "WARNING: Keepalive disabled"* ]] && continue # churn's -k 0, on purpose
		err+="${err:+; }${line:0:200}"
	done < <(grep -ah . "$WORK/err"; grep -ai 'error' "$WORK/out" | grep -v '^"' || true)
	[[ -n $rps ]] || err+="${err:+; }redis-benchmark printed no result"
	((errs == 0)) || err+="${err:+; }the nodes sent $errs error replies"
	[[ -n $err ]] || ((reached >= n)) || err="only $reached of $n requests reached the nodes"
	WALL=$(awk -v a="$w0" -v b="$w1" 'BEGIN { printf "%.3f", b - a }')
	printf '%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,"%s"\n' "$round" "$wl" "$t" "$n" "$rps" "$p50" "$p99" "$WALL" \
		"$(awk -v a="$c0" -v b="$c1" -v t="$TICK" 'BEGIN { printf "%.2f", (b - a) / t }')" \
		"$(awk -v a="$r0" -v b="$r1" -v t="$TICK" 'BEGIN { printf "%.2f", (b - a) / t }')" \
		"$reached" "$errs" "$rc" "$(tr '"' "'" <<<"$err")" >>"$OUT/runs.csv"
	if [[ -n $err ]]; then
		log "  r$round $(printf '%-8s %-8s n=%-8s' "$t" "$wl" "$n") ERROR: ${err:0:300}"
	else
		log "  r$round $(printf '%-8s %-8s n=%-8s %10.0f ops/s' "$t" "$wl" "$n" "$rps")"
	fi
	RPS=${rps%.*}
	RPS=${RPS:-0}
	[[ -z $err ]]
}

log "cluster :${NODES[*]} (bus :${BUSES[*]}), TLS cluster :${TLS_NODES[*]}, redward :$ENTRY (node listeners $RANGE)"
log "warm-up: short runs per target and workload size -n for ~${SECS} s runs; results in $OUT"
declare -A SIZE
for wl in "${WORKLOADS[@]}"; do
	guess=20000
	[[ $wl == *-P16* ]] && guess=200000
	[[ $wl == churn ]] && guess=3000
	warm=$(awk -v g="$guess" -v s="$SECS" -v c="$CLIENTS" \
		'BEGIN { if (s > 3) s = 3; n = int(g * s * 0.3); print (n < 4 * c ? 4 * c : n) }')
	for t in direct tls redward; do
		n=$warm
		# A short run's rate understates the rate (the set-up of 50 connections weighs more in
		# it): warm up again, up to twice, while a run lasts less than half of --seconds.
		for _ in 1 2 3; do
			RPS=0
			run_one 0 "$wl" "$t" "$n" || true
			# two significant digits, at least 4 requests per client
			next=$(awk -v r="$RPS" -v s="$SECS" -v w="$n" -v c="$CLIENTS" 'BEGIN {
				n = (r > 0 ? int(r * s) : w); m = 1; while (n / m >= 100) m *= 10
				n = int(n / m) * m; print (n < 4 * c ? 4 * c : n) }')
			long=$(awk -v s="$SECS" -v w="$WALL" 'BEGIN { print (w >= s / 2) }')
			n=$next
			((RPS > 0 && !long)) || break
		done
		SIZE[$t/$wl]=$n
	done
done
for ((r = 1; r <= ROUNDS; r++)); do
	log "round $r/$ROUNDS"
	order=(direct tls redward)
	case $((r % 3)) in
	2) order=(tls redward direct) ;;
	0) order=(redward direct tls) ;;
	esac
	for wl in "${WORKLOADS[@]}"; do
		for t in "${order[@]}"; do
			run_one "$r" "$wl" "$t" "${SIZE[$t/$wl]}" || true
			sleep 0.1
		done
	done
done
kill -0 "$REDWARD" 2>/dev/null || log "redward exited during the run; end of logs/redward.log: $(tail -n 3 "$LOGS/redward.log")"
findings=$(sed 's/\x1b\[[0-9;]*m//g' "$LOGS/redward.log" | grep -a -E -i 'panic|\bERROR\b|\bWARN\b' |
	sed 's/^[^ ]* *//' | sort | uniq -c | sort -rn | head -n 10) || true

# ------------------------------------------------------------------ report
echo >&2
rc=0
python3 - "$OUT" "$ROUNDS" "$SECS" "$CLIENTS" \
	"$(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), Linux $(uname -r), load average at the end $(cut -d' ' -f1-3 /proc/loadavg)" \
	"$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/redis \1/p'), $("$BIN" --version | head -n 1) ($(git describe --always --dirty 2>/dev/null || echo '?'))" \
	"$findings" <<'PY' || rc=$?
import csv, os, statistics, sys
out, rounds, secs, clients, machine, versions, findings = sys.argv[1:]
rows = list(csv.DictReader(open(os.path.join(out, "runs.csv"))))
workloads = list(dict.fromkeys(r["workload"] for r in rows))
clean = [r for r in rows if r["round"] != "0" and not r["error"]]
bad = [r for r in rows if r["error"]]

def med(xs):
    return statistics.median(xs) if xs else None

def ops(x):
    return "–" if x is None else f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k" if x >= 1e4 else f"{x:.0f}"

def fmt(x, spec):
    return "–" if x is None else format(x, spec)

lines = [f"# redward in front of a Redis Cluster: redis-benchmark --cluster", "",
         f"3 masters; -c {clients}, -d 64, -r 100000; {rounds} round(s) of ~{secs} s runs, "
         "direct (plaintext to the nodes), tls (a cluster with Redis's own TLS) and redward "
         "(TLS through redward, plaintext behind) interleaved.",
         f"Machine: {machine}.", f"Versions: {versions}.", "",
         "| workload | direct ops/s | tls ops/s | redward ops/s | redward/direct | redward/tls "
         "| redward CPU s/100k | server side CPU s/100k: redward / tls | p99 ms tls | p99 ms redward |",
         "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
targets = ("direct", "tls", "redward")
for wl in workloads:
    by = {t: {r["round"]: r for r in clean if r["workload"] == wl and r["target"] == t}
          for t in targets}
    rps = {t: med([float(r["rps"]) for r in by[t].values()]) for t in by}
    def ratio(ref):
        return med([float(by["redward"][k]["rps"]) / float(by[ref][k]["rps"])
                    for k in by["redward"] if k in by[ref] and float(by[ref][k]["rps"]) > 0])
    cpu = med([float(r["redward_cpu_s"]) / int(r["n"]) * 1e5 for r in by["redward"].values()])
    side = {t: med([(float(r["redward_cpu_s"]) + float(r["redis_cpu_s"])) / int(r["n"]) * 1e5
                    for r in by[t].values()]) for t in ("tls", "redward")}
    p99 = {t: med([float(r["p99_ms"]) for r in by[t].values() if r["p99_ms"]]) for t in by}
    lines.append(f"| {wl} | {ops(rps['direct'])} | {ops(rps['tls'])} | {ops(rps['redward'])} "
                 f"| {fmt(ratio('direct'), '.2f')} | {fmt(ratio('tls'), '.2f')} | {fmt(cpu, '.2f')} "
                 f"| {fmt(side['redward'], '.2f')} / {fmt(side['tls'], '.2f')} "
                 f"| {fmt(p99['tls'], '.2f')} | {fmt(p99['redward'], '.2f')} |")
lines += ["", "Medians over the rounds (a ratio: the median of each round's). "
          "Warm-up runs (round 0) are not counted."]
if bad:
    lines += ["", f"**{len(bad)} run(s) had errors:**", ""]
    lines += [f"- r{r['round']} {r['target']} {r['workload']} -n {r['n']}: {r['error']}" for r in bad]
if findings.strip():
    lines += ["", "redward's log (panics, errors, warnings; count, message):", "", "```",
              *[l.rstrip()[:300] for l in findings.splitlines()], "```"]
text = "\n".join(lines) + "\n"
open(os.path.join(out, "report.md"), "w").write(text)
print(text, end="")
sys.exit(1 if bad else 0)
PY
log "report in $OUT/report.md, raw rows in $OUT/runs.csv, logs in $OUT/logs"
exit "$rc"
