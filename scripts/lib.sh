# shellcheck shell=bash
# Shell helpers shared by scripts/quickstart.sh and scripts/test.sh (sourced, not run).
# The sourcing script sets PROG to the name its messages carry.

log() { printf '%s: %s\n' "${PROG:-redward}" "$*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# Runs a command as root: directly when we are root, otherwise through sudo.
as_root() {
	if [[ $(id -u) -eq 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		die "root or sudo is needed to run: $*"
	fi
}

# apt-get install; the package lists are refreshed only if the first try fails.
apt_install() {
	log "installing $* with apt-get"
	if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"; then
		as_root env DEBIAN_FRONTEND=noninteractive apt-get update
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@"
	fi
}
