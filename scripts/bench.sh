#!/usr/bin/env bash
# bench.sh — redward beside Redis's own TLS, stunnel and HAProxy, measured with redis-benchmark.
#
# Usage: scripts/bench.sh [options]        (defaults take ~9 min; --quick ~2 min)
#   --quick            3 rounds of ~0.8 s runs (default: 5 rounds of ~3 s)
#   --rounds N         measured rounds; each runs every workload on every target, order rotated
#   --seconds S        target length of one run; -n is sized by a warm-up run per target/workload
#   --workloads LIST   comma list of set-P1,get-P1,set-P16,get-P16,get-16KiB,churn (default: all)
#   --targets LIST     comma list of direct,redis-tls,stunnel,haproxy,redward (default: all)
#   --redward BIN      use this redward binary (default: cargo build --release, target/release/redward)
#   --no-build         do not run cargo; use target/release/redward as it is
#   --acl-user         benchmark user with a realistic restricted rule set (same rules in Redis and
#                      in redward) instead of "+@all"
#   --out DIR          results: runs.csv, report.md, meta.json, logs/ (default: a new /tmp/redward-bench.*)
#   --timeout S        stop a single redis-benchmark run after S seconds (default: 10 x --seconds + 30)
#   --keep             keep the work directory (certs, configs, passwords) instead of deleting it
#   --no-install       never run apt-get; fail if a tool is missing
#   --idle N           instead of the benchmark: hold N idle authenticated TLS connections to
#                      redward and report its RSS before/after and per connection (scripts/idle_rss.sh)
#   --idle-touch       with --idle: also send one GET on each (so each has used the upstream path)
#   --cluster ARGS...  instead: the Redis Cluster benchmark, scripts/bench-cluster.sh ARGS... (3
#                      masters, direct vs redward with upstream.cluster; its own options, see --help)
#   -h, --help         this text
#
# One redis-server on a free 127.0.0.1 port (no persistence, user `default` off, user `app` with a
# random password, so every path needs AUTH; plaintext port + --tls-port), and in front of it
# stunnel4, HAProxy (mode tcp, bind ... ssl crt) and redward (`redward --config FILE`), all with the
# ECDSA P-256 certificate from `redward gen-certs`. redis-benchmark (-c 50, --user app) runs through
#   direct     the plaintext Redis port (the floor)      redis-tls  Redis's own --tls-port
#   stunnel    stunnel4 -> plaintext Redis                haproxy    HAProxy -> plaintext Redis
#   redward    redward -> plaintext Redis (full ACL checks in redward for every command)
# with workloads SET/GET -P 1 and -P 16 (-d 64), GET of a 16 KiB value, and churn (-k 0: a new
# connection per request: TLS handshake + AUTH + GET). Per run: ops/s, p50/p99 latency (--csv),
# CPU seconds of the proxy's and Redis's processes (/proc/PID/stat, children included) before and
# after, so CPU per 100k requests (and per connection for churn); redward's peak RSS at the end.
# Every request must reach Redis and Redis must answer no error; anything else flags the run.
#
# Needs root for apt-get (redis-server redis-tools stunnel4 haproxy openssl procps util-linux are
# installed when missing). Everything listens on 127.0.0.1 only; every process runs in its own
# session (setsid) and is stopped on exit, Ctrl-C included.
# Reprint a saved run: python3 scripts/bench_report.py report DIR
# Exit status: 0 every run clean, 1 some run had errors (listed under the tables), 2 set-up failed.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PY="$HERE/bench_report.py"
ROUNDS=""; SECS=""; QUICK=0; WORKLOADS="set-P1,get-P1,set-P16,get-P16,get-16KiB,churn"
TARGET_LIST="direct,redis-tls,stunnel,haproxy,redward"; REDWARD=""; BUILD=1; ACL_USER=0
OUT=""; KEEP=0; INSTALL=1; IDLE=0; IDLE_TOUCH=0; RUN_TIMEOUT=""

usage() { sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit "${1:-0}"; }
die() { echo "bench.sh: $*" >&2; exit 2; }
need_arg() { if [ $# -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value"; fi; }

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; shift ;;
    --rounds) need_arg "$@"; ROUNDS=$2; shift 2 ;;
    --seconds) need_arg "$@"; SECS=$2; shift 2 ;;
    --workloads) need_arg "$@"; WORKLOADS=$2; shift 2 ;;
    --targets) need_arg "$@"; TARGET_LIST=$2; shift 2 ;;
    --redward) need_arg "$@"; REDWARD=$2; BUILD=0; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --acl-user) ACL_USER=1; shift ;;
    --out) need_arg "$@"; OUT=$2; shift 2 ;;
    --timeout) need_arg "$@"; RUN_TIMEOUT=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --no-install) INSTALL=0; shift ;;
    --idle) need_arg "$@"; IDLE=$2; shift 2 ;;
    --idle-touch) IDLE_TOUCH=1; shift ;;
    --cluster) shift; exec "$HERE/bench-cluster.sh" "$@" ;;
    -h|--help) usage 0 ;;
    *) echo "bench.sh: unknown option: $1" >&2; usage 2 ;;
  esac
done
if [ "$QUICK" = 1 ]; then : "${ROUNDS:=3}" "${SECS:=0.8}"; fi
: "${ROUNDS:=5}" "${SECS:=3}"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "--rounds needs a positive integer"
[[ "$SECS" =~ ^[0-9]*\.?[0-9]+$ ]] || die "--seconds needs a positive number"
[[ "$IDLE" =~ ^[0-9]+$ ]] || die "--idle needs a number of connections"
[ -n "$RUN_TIMEOUT" ] || RUN_TIMEOUT=$(awk -v s="$SECS" 'BEGIN { print int(s * 10 + 30) }')
[[ "$RUN_TIMEOUT" =~ ^[0-9]*\.?[0-9]+$ ]] || die "--timeout needs a number of seconds"
want() { [[ ",$TARGET_LIST," == *",$1,"* ]]; }
for t in ${TARGET_LIST//,/ }; do
  case "$t" in direct|redis-tls|stunnel|haproxy|redward) ;; *) die "unknown target: $t" ;; esac
done
for w in ${WORKLOADS//,/ }; do
  case "$w" in set-P1|get-P1|set-P16|get-P16|get-16KiB|churn) ;; *) die "unknown workload: $w" ;; esac
done
[ "$IDLE" -gt 0 ] && TARGET_LIST="redward"

# ------------------------------------------------------------------ tools
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
missing=()
have() { command -v "$1" >/dev/null 2>&1; }
have redis-server || missing+=(redis-server)
{ have redis-benchmark && have redis-cli; } || missing+=(redis-tools)
want stunnel && ! have stunnel4 && ! have stunnel && missing+=(stunnel4)
want haproxy && ! have haproxy && missing+=(haproxy)
have openssl || missing+=(openssl)
{ have ps && have pgrep; } || missing+=(procps)
have setsid || missing+=(util-linux)
have python3 || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  [ "$INSTALL" = 1 ] || die "missing packages: ${missing[*]} (--no-install given)"
  [ "$(id -u)" = 0 ] || die "missing packages: ${missing[*]}; run as root so apt-get can install them"
  echo "bench.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  # refresh the package lists only when the plain install fails
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
    { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } >/dev/null 2>&1 ||
      die "apt-get could not install: ${missing[*]}"
  fi
fi
STUNNEL=$(command -v stunnel4 || command -v stunnel || true)
HAPROXY=$(command -v haproxy || true)
[[ $(redis-benchmark --help 2>&1) == *--tls* ]] || die "this redis-benchmark is built without TLS"

if [ -n "$REDWARD" ]; then
  case "$REDWARD" in */*) ;; *) REDWARD=$(command -v "$REDWARD") || die "--redward: command not found" ;; esac
  if [ ! -f "$REDWARD" ] || [ ! -x "$REDWARD" ]; then die "--redward $REDWARD is not an executable file"; fi
  REDWARD=$(cd "$(dirname "$REDWARD")" && pwd)/$(basename "$REDWARD")
else
  if [ "$BUILD" = 1 ]; then
    have cargo || die "cargo not found (give --redward BIN or install Rust)"
    echo "bench.sh: cargo build --release" >&2
    (cd "$REPO" && cargo build --release) >&2 || die "cargo build --release failed"
  fi
  REDWARD="$REPO/target/release/redward"
  [ -x "$REDWARD" ] || die "$REDWARD does not exist (build it, or give --redward BIN)"
fi

# ------------------------------------------------------------------ lifecycle
WORK=$(mktemp -d /tmp/redward-bench-work.XXXXXX) || die "mktemp failed"
chmod 700 "$WORK"
[ -n "$OUT" ] || OUT=$(mktemp -d /tmp/redward-bench.XXXXXX) || die "mktemp failed"
mkdir -p "$OUT/logs" || die "cannot create $OUT"
OUT=$(cd "$OUT" && pwd); LOGS="$OUT/logs"
SIDS=()     # session ids (= pids of the session leaders) of everything started
STOPPED=0
# shellcheck disable=SC2317  # called from the traps
stop_all() {
  [ "$STOPPED" = 1 ] && return; STOPPED=1
  local sid pid pids=()
  for sid in "${SIDS[@]}"; do
    for pid in $(pgrep -s "$sid" 2>/dev/null); do pids+=("$pid"); done
  done
  if [ ${#pids[@]} -gt 0 ]; then
    kill -TERM "${pids[@]}" 2>/dev/null
    for _ in $(seq 30); do
      local left=0
      for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && left=1; done
      [ "$left" = 0 ] && break
      sleep 0.1
    done
    kill -KILL "${pids[@]}" 2>/dev/null
  fi
  if [ "$KEEP" = 1 ]; then echo "bench.sh: kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap stop_all EXIT
trap 'echo "bench.sh: interrupted; partial results in $OUT" >&2; stop_all; exit 130' INT TERM HUP

# spawn NAME CMD...: run CMD in a session of its own; its pid (= session id) lands in $SPAWNED
spawn() {
  local name=$1; shift
  setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
  SPAWNED=$!
  SIDS+=("$SPAWNED")
  sleep 0.05
  local sid; sid=$(ps -o sid= -p "$SPAWNED" 2>/dev/null | tr -d ' ')
  [ -z "$sid" ] || [ "$sid" = "$SPAWNED" ] || die "$name: pid $SPAWNED is not a session leader"
}
# wait_listening NAME PORT PID
wait_listening() {
  python3 "$PY" waitport "$2" 20 "$3"
  case $? in
    0) return 0 ;;
    2) echo "bench.sh: $1 exited before listening on 127.0.0.1:$2; end of its log:" >&2 ;;
    *) echo "bench.sh: $1 did not listen on 127.0.0.1:$2 within 20 s; end of its log:" >&2 ;;
  esac
  tail -n 20 "$LOGS/$1.log" | sed 's/^/    /' >&2
  exit 2
}

# enough descriptors for the idle test (client + redward's client and upstream sides + Redis)
# Each process holds one side of every idle connection (twice that for redward with --idle-touch).
NOFILE=$(( IDLE + 4096 ))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$NOFILE" ]; then
  if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$NOFILE" ]; then
    ulimit -Hn "$NOFILE" 2>/dev/null || [ "$IDLE" = 0 ] ||
      die "cannot raise the open-file limit to $NOFILE (hard limit $(ulimit -Hn); run as root)"
  fi
  ulimit -n "$NOFILE" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fi

# ------------------------------------------------------------------ certificates, secrets, ports
C="$WORK/certs"
"$REDWARD" gen-certs --out "$C" >"$LOGS/gen-certs.log" 2>&1 ||
  { cat "$LOGS/gen-certs.log" >&2; die "redward gen-certs failed"; }
for f in ca.crt server.crt server.key; do [ -s "$C/$f" ] || die "redward gen-certs wrote no $C/$f"; done
cat "$C/server.crt" "$C/server.key" > "$C/server.pem"     # HAProxy wants both in one file
BUSER=app; ADMIN=bench-admin
PW=$(openssl rand -hex 16); ADMIN_PW=$(openssl rand -hex 16)
PW_SHA=$(printf '%s' "$PW" | sha256sum | cut -d' ' -f1)
if [ "$ACL_USER" = 1 ]; then
  # Just what redis-benchmark touches: key:__rand_int__ / key:16k (SET, GET), counter:* (INCR),
  # mylist, myset, myhash, myzset (list/set/hash/zset tests); no admin or @dangerous commands.
  RULES="on #$PW_SHA ~key:* ~counter:* ~mylist ~myset ~myhash ~myzset &* -@all +@read +@write +@connection -@dangerous"
else
  RULES="on #$PW_SHA ~* &* +@all"
fi
read -r -a PORTS <<<"$(python3 "$PY" ports 5)"
[ ${#PORTS[@]} = 5 ] || die "could not find free ports"
REDIS_PORT=${PORTS[0]}; REDIS_TLS_PORT=${PORTS[1]}; STUNNEL_PORT=${PORTS[2]}
HAPROXY_PORT=${PORTS[3]}; REDWARD_PORT=${PORTS[4]}
TARGETS="$WORK/targets"; : > "$TARGETS"

# ------------------------------------------------------------------ redis-server: plaintext + native TLS
# shellcheck disable=SC2086  # RULES is a list of ACL rules, split on purpose
spawn redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --protected-mode yes \
  --tls-port "$REDIS_TLS_PORT" --tls-cert-file "$C/server.crt" --tls-key-file "$C/server.key" \
  --tls-ca-cert-file "$C/ca.crt" --tls-auth-clients no \
  --save "" --appendonly no --dir "$WORK" --maxclients $(( IDLE + 10000 )) \
  --user default off --user "$BUSER" $RULES --user "$ADMIN" on ">$ADMIN_PW" '~*' '&*' '+@all'
REDIS_SID=$SPAWNED
wait_listening redis "$REDIS_PORT" "$REDIS_SID"
wait_listening redis "$REDIS_TLS_PORT" "$REDIS_SID"
want direct && echo "direct $REDIS_PORT 0 $REDIS_SID server" >> "$TARGETS"
want redis-tls && echo "redis-tls $REDIS_TLS_PORT 1 $REDIS_SID server" >> "$TARGETS"

# ------------------------------------------------------------------ stunnel4
if want stunnel; then
  [ -n "$STUNNEL" ] || die "stunnel4 is not installed"
  cat > "$WORK/stunnel.conf" <<EOF
foreground = yes
pid =
debug = 3
[redis]
accept = 127.0.0.1:$STUNNEL_PORT
connect = 127.0.0.1:$REDIS_PORT
cert = $C/server.crt
key = $C/server.key
EOF
  spawn stunnel "$STUNNEL" "$WORK/stunnel.conf"
  wait_listening stunnel "$STUNNEL_PORT" "$SPAWNED"
  echo "stunnel $STUNNEL_PORT 1 $SPAWNED proxy" >> "$TARGETS"
fi

# ------------------------------------------------------------------ HAProxy
if want haproxy; then
  [ -n "$HAPROXY" ] || die "haproxy is not installed"
  cat > "$WORK/haproxy.cfg" <<EOF
global
  maxconn 4000
defaults
  mode tcp
  timeout connect 5s
  timeout client 300s
  timeout server 300s
frontend tls_in
  bind 127.0.0.1:$HAPROXY_PORT ssl crt $C/server.pem
  default_backend redis
backend redis
  server redis1 127.0.0.1:$REDIS_PORT
EOF
  "$HAPROXY" -c -q -f "$WORK/haproxy.cfg" >"$LOGS/haproxy-check.log" 2>&1 ||
    { cat "$LOGS/haproxy-check.log" >&2; die "haproxy rejects its configuration"; }
  spawn haproxy "$HAPROXY" -db -f "$WORK/haproxy.cfg"
  wait_listening haproxy "$HAPROXY_PORT" "$SPAWNED"
  echo "haproxy $HAPROXY_PORT 1 $SPAWNED proxy" >> "$TARGETS"
fi

# ------------------------------------------------------------------ redward
REDWARD_SID=""
if want redward; then
  cat > "$WORK/redward.yaml" <<EOF
listen:
  - address: "127.0.0.1:$REDWARD_PORT"
    tls: { cert: $C/server.crt, key: $C/server.key }
upstream:
  address: "127.0.0.1:$REDIS_PORT"
  username: $BUSER
  password: "$PW"
users:
  - name: $BUSER
    rules: "$RULES"
EOF
  if [ "$IDLE" != 0 ]; then
    # The idle test opens all its connections from one address, in a burst.
    printf 'limits:\n  max_connections: %d\n  max_connections_per_ip: %d\n' \
      "$(( IDLE + 100 ))" "$(( IDLE + 100 ))" >> "$WORK/redward.yaml"
  fi
  "$REDWARD" check --config "$WORK/redward.yaml" >"$LOGS/redward-check.log" 2>&1 ||
    { cat "$LOGS/redward-check.log" >&2; die "redward check rejects its configuration"; }
  spawn redward env NO_COLOR=1 "$REDWARD" --config "$WORK/redward.yaml"
  REDWARD_SID=$SPAWNED
  wait_listening redward "$REDWARD_PORT" "$REDWARD_SID"
  echo "redward $REDWARD_PORT 1 $REDWARD_SID proxy" >> "$TARGETS"
fi
[ -s "$TARGETS" ] || die "no targets (--targets $TARGET_LIST)"

# ------------------------------------------------------------------ smoke test: AUTH + PING through every target
TLS_JSON="{}"
while read -r name port tls _ _; do
  args=(-h 127.0.0.1 -p "$port" --user "$BUSER" --no-auth-warning)
  [ "$tls" = 1 ] && args+=(--tls --cacert "$C/ca.crt")
  reply=$(REDISCLI_AUTH="$PW" timeout 10 redis-cli "${args[@]}" PING 2>&1)
  [ "$reply" = PONG ] || die "$name (127.0.0.1:$port): AUTH + PING answered '${reply:0:200}', not PONG"
  if [ "$tls" = 1 ]; then
    TLS_JSON=$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d[sys.argv[2]]=sys.argv[3]; print(json.dumps(d))' \
      "$TLS_JSON" "$name" "$(python3 "$PY" tlsinfo "$port" "$C/ca.crt")")
  fi
done < "$TARGETS"

# ------------------------------------------------------------------ --idle: RSS of N idle connections
if [ "$IDLE" -gt 0 ]; then
  echo "bench.sh: redward on 127.0.0.1:$REDWARD_PORT; open-file limit $(ulimit -n); results in $OUT" >&2
  touch_arg=(); [ "$IDLE_TOUCH" = 1 ] && touch_arg=(--touch)
  setsid env BENCH_PASSWORD="$PW" BENCH_ADMIN_PASSWORD="$ADMIN_PW" python3 "$PY" idle --port "$REDWARD_PORT" \
    --sid "$REDWARD_SID" --ca "$C/ca.crt" --user "$BUSER" --redis-port "$REDIS_PORT" --admin-user "$ADMIN" \
    --n "$IDLE" --timeout $(( 60 + IDLE / 50 )) --out "$OUT" "${touch_arg[@]}" </dev/null &
  CLIENT=$!; SIDS=("$CLIENT" "${SIDS[@]}")
  wait "$CLIENT"; rc=$?
  [ "$rc" -le 1 ] || die "the idle client failed (exit $rc)"
  exit "$rc"
fi

# ------------------------------------------------------------------ facts for the report
v_redis=$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')
v_stunnel=$([ -n "$STUNNEL" ] && "$STUNNEL" -version 2>&1 | sed -n 's/^stunnel \([^ ]*\) .*/\1/p' | head -n1)
v_haproxy=$([ -n "$HAPROXY" ] && "$HAPROXY" -v 2>/dev/null | sed -n 's/^HAProxy version \([^ ]*\) .*/\1/p' | head -n1)
v_redward=$("$REDWARD" --version 2>/dev/null | head -n1)
v_git=$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo "?")
python3 - "$OUT/meta.json" "$TLS_JSON" "$ACL_USER" "${RULES/\#$PW_SHA/#<sha256>}" \
  "$(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), Linux $(uname -r)" \
  "redis ${v_redis:-?}, stunnel ${v_stunnel:-?}, HAProxy ${v_haproxy:-?}, $(openssl version | cut -d' ' -f1-2), ${v_redward:-redward} ($v_git)" \
  "$(date -u +%Y-%m-%dT%H:%M:%SZ)" <<'EOF'
import json, sys
path, tls, acl, rules, machine, versions, started = sys.argv[1:]
json.dump(dict(tls=json.loads(tls), acl_user=acl == "1", rules=rules, machine=machine,
               versions=versions, started=started), open(path, "w"), indent=1)
EOF

ntargets=$(wc -l < "$TARGETS"); nwl=$(tr ',' '\n' <<<"$WORKLOADS" | grep -c .)
echo "bench.sh: $ROUNDS rounds x $nwl workloads x $ntargets targets, ~${SECS} s a run; results in $OUT" >&2

# ------------------------------------------------------------------ measure
# In the background and in its own session, so that Ctrl-C reaches the trap at once and the trap
# stops the loop together with its redis-benchmark.
setsid env BENCH_PASSWORD="$PW" BENCH_ADMIN_PASSWORD="$ADMIN_PW" python3 "$PY" run --targets "$TARGETS" \
  --redis-port "$REDIS_PORT" --redis-sid "$REDIS_SID" --user "$BUSER" --admin-user "$ADMIN" \
  --cacert "$C/ca.crt" --rounds "$ROUNDS" --seconds "$SECS" --workloads "$WORKLOADS" \
  --timeout "$RUN_TIMEOUT" --out "$OUT" </dev/null &
RUNNER=$!; SIDS=("$RUNNER" "${SIDS[@]}")
wait "$RUNNER"; rc=$?
[ "$rc" = 0 ] || die "the measurement loop failed (exit $rc)"

# Findings for the report: a target that stopped during the run (with the end of its log), and
# panics, errors, warnings or a stop signal in redward's log.
findings=""
while read -r name _ _ sid _; do
  state=$(ps -o stat= -p "$sid" 2>/dev/null)
  if [ -z "$state" ] || [[ "$state" == Z* ]]; then
    log=redis; [ "$sid" = "$REDIS_SID" ] || log=$name
    findings+="$name stopped during the run; end of logs/$log.log: $(tail -n 3 "$LOGS/$log.log" | tr '\n' ' ')"$'\n'
  fi
done < "$TARGETS"
if [ -n "$REDWARD_SID" ]; then
  findings+=$(sed 's/\x1b\[[0-9;]*m//g' "$LOGS/redward.log" |
    grep -a -E -i 'panic|\bERROR\b|\bWARN\b|shutdown requested' | sed 's/^[^ ]* *//' | sort | uniq -c | sort -rn | head -n 10)
fi
if [ -n "$findings" ]; then
  python3 - "$OUT/meta.json" "$findings" <<'EOF'
import json, sys
meta = json.load(open(sys.argv[1]))
meta["log_findings"] = [l.strip()[:400] for l in sys.argv[2].splitlines() if l.strip()]
json.dump(meta, open(sys.argv[1], "w"), indent=1)
EOF
fi
echo >&2
python3 "$PY" report "$OUT"
rc=$?
[ "$rc" -le 1 ] || die "the report failed (exit $rc)"
[ "$rc" = 0 ] || echo "bench.sh: some runs had errors: see the list under the tables and $OUT/runs.csv" >&2
echo "bench.sh: report in $OUT/report.md, raw rows in $OUT/runs.csv" >&2
exit "$rc"
