#!/usr/bin/env bash
# Quick start: a private Redis behind redward, TLS and AUTH on, in one command.
#
#   scripts/quickstart.sh                      # redward on 127.0.0.1:6380
#   REDWARD_PORT=7380 scripts/quickstart.sh    # another listener port
#
# For a fresh Debian machine, run as root or as a user with sudo. It:
#   1. installs redis-server and redis-tools with apt-get if they are missing,
#   2. builds redward (cargo build --release),
#   3. makes dev certificates in certs/dev/ unless they are already there,
#   4. starts its own redis-server on 127.0.0.1 (first free port from 6379) with
#      ACL user "proxy", the default user off and nothing saved to disk,
#   5. writes run/redward.yaml with a user "app" and prints a redis-cli line,
#   6. runs redward in the foreground. Ctrl-C stops redward and that redis-server.
# Passwords are random, kept in run/ (mode 0600) and reused on the next run.
# Running it again is safe: a redis-server left from an earlier run is stopped first.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
start_dir=$PWD
cd "$root"

run_dir=$root/run
cert_dir=$root/certs/dev
bin=$root/target/release/redward
redward_port=${REDWARD_PORT:-6380}

PROG=quickstart
# shellcheck source=scripts/lib.sh
source "$root/scripts/lib.sh"

# Prints 64 random hex characters: safe in YAML, ACL rules and command lines.
random_secret() {
	if command -v openssl >/dev/null 2>&1; then
		openssl rand -hex 32
	else
		od -An -N32 -tx1 /dev/urandom | tr -d ' \n'
		echo
	fi
}

# Creates FILE (mode 0600, no trailing newline) with a random secret unless it
# already holds one, so passwords survive reruns.
ensure_secret() {
	[[ -s $1 ]] && return 0
	(
		umask 077
		printf '%s' "$(random_secret)" >"$1"
	)
}

sha256_hex() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

# True when something accepts TCP connections on 127.0.0.1:PORT.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Stops the redis-server this script started (its pid is in run/redis.pid).
stop_redis() {
	local pidfile=$run_dir/redis.pid pid state
	[[ -s $pidfile ]] || return 0
	pid=$(<"$pidfile")
	if [[ $pid =~ ^[0-9]+$ ]] && [[ $(cat "/proc/$pid/comm" 2>/dev/null) == redis-server ]]; then
		log "stopping redis-server (pid $pid)"
		kill -TERM "$pid" 2>/dev/null || true
		for _ in {1..50}; do
			state=$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null) || break
			[[ $state == Z ]] && break
			sleep 0.1
		done
	fi
	# Another run may have replaced the file meanwhile; remove only our own.
	[[ $(cat "$pidfile" 2>/dev/null) == "$pid" ]] && rm -f "$pidfile"
	return 0
}

if ! [[ $redward_port =~ ^[0-9]{1,5}$ ]] || ((redward_port < 1 || redward_port > 65535)); then
	die "REDWARD_PORT must be a port number, got '$redward_port'"
fi

# 1. Redis.
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
	apt_install redis-server redis-tools
	log "note: Debian also starts its own redis-server service on 127.0.0.1:6379;" \
		"this script does not use it (sudo systemctl disable --now redis-server stops it)"
fi

# 2. Build.
if ! command -v cargo >/dev/null 2>&1 && [[ -x $HOME/.cargo/bin/cargo ]]; then
	PATH=$HOME/.cargo/bin:$PATH
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust from https://rustup.rs"
command -v cc >/dev/null 2>&1 || apt_install gcc libc6-dev
log "building redward (cargo build --release)"
cargo build --release

# 3. Dev certificates.
if [[ ! -f $cert_dir/ca.crt || ! -f $cert_dir/server.crt || ! -f $cert_dir/server.key ]]; then
	log "making dev certificates in certs/dev/"
	"$bin" gen-certs --out certs/dev
fi

# 4. A private redis-server.
mkdir -p "$run_dir"
chmod 700 "$run_dir"
stop_redis

ensure_secret "$run_dir/redis-proxy.pass"
ensure_secret "$run_dir/app.pass"
proxy_pw=$(<"$run_dir/redis-proxy.pass")
app_pw=$(<"$run_dir/app.pass")
proxy_hash=$(sha256_hex "$proxy_pw")
app_hash=$(sha256_hex "$app_pw")

if port_in_use "$redward_port"; then
	die "127.0.0.1:$redward_port is in use (an earlier redward?); stop it or set REDWARD_PORT"
fi
redis_port=
for ((p = 6379; p < 6480; p++)); do
	[[ $p == "$redward_port" ]] && continue
	if ! port_in_use "$p"; then
		redis_port=$p
		break
	fi
done
[[ -n $redis_port ]] || die "no free port for redis-server in 6379-6479"

(
	umask 077
	cat >"$run_dir/redis.conf" <<EOF
# Written by scripts/quickstart.sh; rewritten on every run.
bind 127.0.0.1
port $redis_port
protected-mode yes
daemonize yes
pidfile "$run_dir/redis.pid"
logfile "$run_dir/redis.log"
dir "$run_dir"
save ""
appendonly no
user default off
user proxy on #$proxy_hash ~* &* +@all
EOF
)

log "starting redis-server on 127.0.0.1:$redis_port"
: >"$run_dir/redis.log"
redis-server "$run_dir/redis.conf"
trap stop_redis EXIT

ready=
for _ in {1..50}; do
	if [[ $(REDISCLI_AUTH=$proxy_pw redis-cli -h 127.0.0.1 -p "$redis_port" --user proxy ping 2>/dev/null) == PONG ]]; then
		ready=1
		break
	fi
	sleep 0.1
done
[[ -n $ready ]] || {
	tail -n 20 "$run_dir/redis.log" >&2 || true
	die "redis-server did not answer on 127.0.0.1:$redis_port (log above, run/redis.log)"
}

# 5. redward's config.
(
	umask 077
	cat >"$run_dir/redward.yaml" <<EOF
# Written by scripts/quickstart.sh; rewritten on every run. See config/redward.yaml.
listen:
  - address: "127.0.0.1:$redward_port"
    tls:
      cert: "$cert_dir/server.crt"
      key: "$cert_dir/server.key"
      min_version: "1.2"
upstream:
  address: "127.0.0.1:$redis_port"
  username: proxy
  password_file: "$run_dir/redis-proxy.pass"
  connect_timeout: 5s
users:
  - name: app
    rules: "on #$app_hash ~* &* +@all"
limits:
  handshake_timeout: 10s
  auth_timeout: 10s
  max_bulk_len: 512mb
  max_inline_len: 64kb
shutdown_grace: 10s
workers: 0
log:
  level: info
  format: text
EOF
)
"$bin" check --config "$run_dir/redward.yaml"

cacert=certs/dev/ca.crt
[[ $start_dir == "$root" ]] || cacert=$cert_dir/ca.crt
printf -v cli 'redis-cli --tls --cacert %q -p %s --user app --pass %s' "$cacert" "$redward_port" "$app_pw"
cat <<EOF

redward: 127.0.0.1:$redward_port (TLS)  ->  redis-server: 127.0.0.1:$redis_port
Connect with:

  $cli

Ctrl-C stops redward and this redis-server. Config, passwords and the redis log are in run/.

EOF

# 6. redward in the foreground. It runs as a child rather than through exec so
# that the EXIT trap above can stop redis-server once redward is gone; INT and
# TERM sent to this script are passed on to redward as TERM (graceful shutdown).
"$bin" --config "$run_dir/redward.yaml" &
redward_pid=$!
trap 'kill -TERM "$redward_pid" 2>/dev/null || true' INT TERM
status=0
wait "$redward_pid" || status=$?
while kill -0 "$redward_pid" 2>/dev/null; do
	status=0
	wait "$redward_pid" || status=$?
done
exit "$status"
