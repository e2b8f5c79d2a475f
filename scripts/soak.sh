#!/usr/bin/env bash
# soak.sh: redward under attack for a while; do well-behaved clients still get every answer?
#
# Usage: scripts/soak.sh [options]
#   --duration D      how long the load runs: 90s, 3m, 10m, 1h or plain seconds (default 10m)
#   --redward BIN     the redward binary (default target/release/redward; this script never builds)
#   --out DIR         results (default: a new /tmp/redward-soak.XXXX)
#   --clients N       well-behaved TLS clients (default 50)
#   --no-install      never run apt-get or pip; fail if redis-server is missing, skip the plot
#                     if matplotlib is
#   --legacy-config   for an older redward: leave out limits.max_client_memory and the
#                     proxy_protocol: {trusted: [...]} form
#   -h, --help        this text
#
# A private redis-server and redward (on free 127.0.0.1 ports, each in a session of its own,
# stopped on exit, Ctrl-C included) take a well-behaved load and eight kinds of attack at once
# (see the top of scripts/soak.py). At the end it prints a table (RSS, CPU, good ops/s, errors,
# p99 over time) and a summary, and writes DIR/report.md, soak.csv, soak.png, metrics.txt and
# redward.log. Exit status: 0 no well-behaved request failed and redward stayed up; 1 otherwise;
# 2 the set-up failed; 130 interrupted.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PROG=soak.sh
# shellcheck source=scripts/lib.sh
source "$HERE/lib.sh"

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit "${1:-0}"; }
fail() { log "error: $*"; exit 2; }
need_arg() { [[ $# -ge 2 && -n $2 ]] || fail "$1 needs a value"; }

DURATION=10m BIN=$REPO/target/release/redward OUT="" CLIENTS=50 INSTALL=1 LEGACY=()
while [[ $# -gt 0 ]]; do
	case "$1" in
	--duration) need_arg "$@"; DURATION=$2; shift 2 ;;
	--redward) need_arg "$@"; BIN=$2; shift 2 ;;
	--out) need_arg "$@"; OUT=$2; shift 2 ;;
	--clients) need_arg "$@"; CLIENTS=$2; shift 2 ;;
	--no-install) INSTALL=0; shift ;;
	--legacy-config) LEGACY=(--legacy-config); shift ;;
	-h | --help) usage 0 ;;
	*) log "unknown option: $1"; usage 2 ;;
	esac
done

[[ $DURATION =~ ^([0-9]+)(s|m|h)?$ ]] || fail "--duration: expected 90s, 3m, 10m, 1h or seconds, got '$DURATION'"
case "${BASH_REMATCH[2]}" in m) SECS=$((BASH_REMATCH[1] * 60)) ;; h) SECS=$((BASH_REMATCH[1] * 3600)) ;; *) SECS=${BASH_REMATCH[1]} ;; esac
((SECS > 0)) || fail "--duration must be more than 0"
[[ $CLIENTS =~ ^[1-9][0-9]*$ ]] || fail "--clients needs a positive number"

if [[ ! -x $BIN ]]; then
	log "no redward binary at $BIN; build it with cargo build --release (or give --redward BIN)"
	exit 2
fi
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

# Tools: redis-server (and redis-cli) from apt, matplotlib from pip (the plot only).
command -v python3 >/dev/null 2>&1 || fail "python3 is needed"
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
	((INSTALL)) || fail "redis-server/redis-cli missing (--no-install given)"
	apt_install redis-server redis-tools || fail "apt-get could not install redis-server redis-tools"
fi
if ! python3 -c 'import matplotlib' >/dev/null 2>&1; then
	if ((INSTALL)); then
		log "installing matplotlib with pip (for soak.png)"
		python3 -m pip install --quiet matplotlib ||
			python3 -m pip install --quiet --user matplotlib ||
			python3 -m pip install --quiet --user --break-system-packages matplotlib ||
			log "warning: could not install matplotlib; the table is printed, the plot skipped"
	else
		log "matplotlib is missing (--no-install): the plot will be skipped"
	fi
fi

if [[ -z $OUT ]]; then
	OUT=$(mktemp -d /tmp/redward-soak.XXXX)
else
	mkdir -p "$OUT"
fi
chmod 700 "$OUT"
: >"$OUT/pids"

# soak.py stops what it started; should it be killed, this stops the sessions it left behind.
cleanup() {
	local pid
	while read -r pid; do
		[[ $pid =~ ^[0-9]+$ ]] || continue
		if [[ $(ps -o sid= -p "$pid" 2>/dev/null | tr -d ' ') == "$pid" ]]; then
			kill -KILL -- "-$pid" 2>/dev/null || true
		fi
	done <"$OUT/pids"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

rc=0
python3 "$HERE/soak.py" run --redward "$BIN" --out "$OUT" --duration "$SECS" --clients "$CLIENTS" "${LEGACY[@]}" || rc=$?
exit "$rc"
