#!/usr/bin/env bash
# idle_rss.sh — redward's memory per idle connection.
#
# Usage: scripts/idle_rss.sh [N] [--idle-touch] [--redward BIN | --no-build] [--out DIR] [--keep] [--no-install]
#   N             connections to hold (default 10000)
#   --idle-touch  also send one GET on each connection (so each has used the upstream path)
#
# Starts one redis-server and redward (as scripts/bench.sh does), opens N TLS connections to
# redward, each verified against the test CA and logged in with AUTH (+OK), holds them, and prints
# redward's VmRSS before, while holding them and after closing them, and the RSS per connection
# (also saved as idle.md in the output directory). Raises the open-file limit as needed (root).
# Bounded in time: it gives up opening connections after 60 s + N/50 s, then closes everything.
# Exit status: 0 all N held and answering, 1 some failed, 2 set-up failed.
set -uo pipefail
N=10000
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then N=$1; shift; fi
case "${1:-}" in -h|--help) sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;; esac
exec "$(dirname "${BASH_SOURCE[0]}")/bench.sh" --idle "$N" "$@"
