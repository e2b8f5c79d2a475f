//! Promise: real client libraries work through redward as they work against Redis, each with
//! its own default handshake (redis-py: `AUTH` or `HELLO 3 AUTH`, `CLIENT SETNAME`, `CLIENT
//! SETINFO`, `SELECT`; node-redis the same in one pipeline, plus `CLIENT MAINT_NOTIFICATIONS`
//! in RESP3), over TLS with the test CA, on shared upstream connections (the default).
//!
//! Each script in `tests/clients/` runs pipelines, MULTI/EXEC with a WATCH conflict, pub/sub,
//! a BLPOP released by another client, a database other than 0 and CLIENT SETNAME/GETNAME,
//! asserts what it gets and prints a transcript. The same script is run directly against
//! redis-server (plaintext) and through redward: both must pass, with the same transcript.
//!
//! `tests/clients/hold_open.py` keeps 20 redis-py clients open at once, each checking its own
//! name, database and protocol, while Redis's connections are counted: clients with redis-py's
//! default handshake share upstream connections as bare ones do: redward keeps their name,
//! library info, database and protocol itself.
//!
//! The libraries are installed by `scripts/test.sh` (pip: redis; npm: `tests/clients/
//! package.json` into `tests/clients/node_modules`), which also sets
//! `REDWARD_REQUIRE_CLIENT_LIBS=1`. Without that, a missing library makes its test say so and
//! pass.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A script must finish within this (each also stops itself after 60 s).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

#[derive(Clone, Copy, Debug)]
enum Library {
    /// redis-py, from PyPI (`python3 -m pip install redis`).
    RedisPy,
    /// node-redis (`redis` on npm), from `tests/clients/node_modules`.
    NodeRedis,
}

impl Library {
    fn program(self) -> (&'static str, PathBuf) {
        match self {
            Library::RedisPy => ("python3", clients_dir().join("redis_py.py")),
            Library::NodeRedis => ("node", clients_dir().join("node_redis.js")),
        }
    }

    /// `None` when the library is there, else how to install it.
    fn missing(self) -> Option<&'static str> {
        let ok = match self {
            Library::RedisPy => Command::new("python3")
                .args(["-c", "import redis"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            Library::NodeRedis => {
                Command::new("node")
                    .arg("--version")
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
                    && clients_dir()
                        .join("node_modules/redis/package.json")
                        .is_file()
            }
        };
        match (ok, self) {
            (true, _) => None,
            (false, Library::RedisPy) => Some("python3 -m pip install redis"),
            (false, Library::NodeRedis) => Some("cd tests/clients && npm ci"),
        }
    }

    /// Whether the test can run; a missing library is a failure under `scripts/test.sh`.
    fn available(self) -> bool {
        let Some(install) = self.missing() else {
            return true;
        };
        if std::env::var_os("REDWARD_REQUIRE_CLIENT_LIBS").is_some_and(|v| v == "1") {
            panic!("{self:?} is missing and REDWARD_REQUIRE_CLIENT_LIBS=1 ({install})");
        }
        eprintln!("SKIP: {self:?} is not installed ({install}; scripts/test.sh does it)");
        false
    }
}

/// What one run of a script did.
struct Run {
    /// `None` if it had to be killed.
    success: Option<bool>,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = match self.success {
            Some(true) => "exit 0",
            Some(false) => "failed",
            None => "killed after the timeout",
        };
        write!(
            f,
            "{status}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }
}

/// Runs `library`'s script against `port` (with TLS when `ca` is given) as the `app` user.
async fn run(library: Library, protocol: u8, port: u16, ca: Option<PathBuf>) -> Run {
    let (program, script) = library.program();
    let protocol = ["--protocol".to_owned(), protocol.to_string()];
    run_program(program, script, protocol.to_vec(), port, ca).await
}

/// Runs the Python `script` with `extra` arguments against `port`, as [`run`] does.
async fn run_script(script: &Path, extra: &[&str], port: u16, ca: Option<PathBuf>) -> Run {
    let extra = extra.iter().map(|s| (*s).to_owned()).collect();
    run_program("python3", script.to_path_buf(), extra, port, ca).await
}

async fn run_program(
    program: &'static str,
    script: PathBuf,
    extra: Vec<String>,
    port: u16,
    ca: Option<PathBuf>,
) -> Run {
    tokio::task::spawn_blocking(move || {
        let out = tempfile::tempdir().expect("tempdir");
        let (stdout, stderr) = (out.path().join("stdout"), out.path().join("stderr"));
        let mut cmd = Command::new(program);
        cmd.arg(&script)
            .args(["--port", &port.to_string()])
            .args(["--user", APP_USER, "--password", APP_PASSWORD])
            .args(&extra)
            .current_dir(clients_dir())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"));
        if let Some(ca) = &ca {
            cmd.arg("--tls-ca").arg(ca);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("run {program}: {e}"));
        let deadline = Instant::now() + SCRIPT_TIMEOUT;
        let success = loop {
            if let Some(status) = child.try_wait().expect("wait for the script") {
                break Some(status.success());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let read =
            |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
        Run {
            success,
            stdout: read(&stdout),
            stderr: read(&stderr),
        }
    })
    .await
    .expect("script runner")
}

/// How many connections Redis has accepted so far (`INFO stats`), the admin's own included.
fn connections_received(redis: &Redis) -> u64 {
    let mut c = redis.admin();
    let info: String = redis::cmd("INFO").arg("stats").query(&mut c).expect("INFO");
    info.lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("total_connections_received in INFO stats")
}

fn flushall(redis: &Redis) {
    let mut c = redis.admin();
    let _: () = redis::cmd("FLUSHALL").query(&mut c).expect("FLUSHALL");
}

/// The script passes directly against redis-server and through redward, printing the same
/// transcript both times.
async fn same_as_redis(library: Library, protocol: u8) {
    if !library.available() {
        return;
    }
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;

    flushall(&redis);
    let before = connections_received(&redis);
    let direct = run(library, protocol, redis.port, None).await;
    let direct_connections = connections_received(&redis) - before - 1;
    assert_eq!(
        direct.success,
        Some(true),
        "{library:?} RESP{protocol} fails against redis-server itself (a broken script, not \
         redward):\n{direct}"
    );

    flushall(&redis);
    let before = connections_received(&redis);
    let via = run(library, protocol, proxy.port(), Some(proxy.certs.ca())).await;
    let via_connections = connections_received(&redis) - before - 1;
    eprintln!("{library:?} RESP{protocol} through redward: {via}");
    // For information only: how many of the script's clients rode a shared connection.
    eprintln!(
        "{library:?} RESP{protocol}: connections Redis accepted: {direct_connections} from the \
         script directly, {via_connections} from redward for the same script"
    );
    assert_eq!(
        via.success,
        Some(true),
        "{library:?} RESP{protocol} through redward:\n{via}\n\
         --- the same script directly against redis-server printed ---\n{}",
        direct.stdout
    );
    assert_eq!(
        via.stdout, direct.stdout,
        "{library:?} RESP{protocol}: through redward (left) and directly against redis-server \
         (right) the transcripts differ"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_resp2() {
    same_as_redis(Library::RedisPy, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_resp3() {
    same_as_redis(Library::RedisPy, 3).await;
}

/// redis-py's client-side caching (`CacheConfig`, RESP3: `CLIENT TRACKING on` and
/// `invalidate` pushes on the reading connection) through redward, against Redis 7.0.15 and
/// Valkey 8.1.8, with the transcript the server itself gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_client_side_caching_resp3() {
    if !Library::RedisPy.available() {
        return;
    }
    for kind in ServerKind::ALL {
        let Some(redis) = matrix_server(kind) else {
            continue;
        };
        let proxy = proxy().start(&redis).await;
        let name = if kind == ServerKind::Valkey {
            "valkey"
        } else {
            "redis"
        };
        let script = clients_dir().join("redis_py_cache.py");
        let extra = ["--server-name", name];
        let direct = run_script(&script, &extra, redis.port, None).await;
        assert_eq!(
            direct.success,
            Some(true),
            "{} directly:\n{direct}",
            kind.name()
        );
        let via = run_script(&script, &extra, proxy.port(), Some(proxy.certs.ca())).await;
        assert_eq!(
            via.success,
            Some(true),
            "{} through redward:\n{via}",
            kind.name()
        );
        assert_eq!(via.stdout, direct.stdout, "{}", kind.name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_redis_resp2() {
    same_as_redis(Library::NodeRedis, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_redis_resp3() {
    same_as_redis(Library::NodeRedis, 3).await;
}

/// 20 redis-py clients with the default handshake and `extra` options (`--db 1`, a name, RESP3),
/// all open at once, each checked to see its own name, database and protocol: Redis must see
/// at most a few upstream connections, not one per client (issue 12).
async fn twenty_clients_share_upstream_connections(extra: &[&str]) {
    if !Library::RedisPy.available() {
        return;
    }
    let redis = Redis::start();
    let proxy = proxy().start(&redis).await;
    let mut cmd = Command::new("python3");
    cmd.arg(clients_dir().join("hold_open.py"))
        .args(["--port", &proxy.port().to_string()])
        .args(["--user", APP_USER, "--password", APP_PASSWORD])
        .arg("--tls-ca")
        .arg(proxy.certs.ca())
        .args(["--clients", "20"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().expect("run python3");
    let stdout = child.stdout.take().expect("stdout");
    // The script stops itself after 60 s, so this read ends.
    let ready = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        line
    })
    .await
    .expect("read the script's output");
    let upstream = redis.client_count();
    drop(child.stdin.take()); // the script exits
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("wait")
        .expect("wait for the script");
    assert_eq!(
        ready.trim(),
        "ready",
        "hold_open.py {extra:?} failed through redward ({status})"
    );
    assert!(status.success(), "hold_open.py {extra:?}: {status}");
    assert!(
        upstream <= 3,
        "20 redis-py clients ({extra:?}) through redward: Redis has {upstream} connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_without_client_info_shares_upstream_connections() {
    // AUTH only (and the check that this test counts right).
    twenty_clients_share_upstream_connections(&["--protocol", "2", "--no-client-info"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_default_handshake_shares_upstream_connections() {
    // CLIENT SETINFO LIB-NAME / LIB-VER, and CLIENT SETNAME.
    twenty_clients_share_upstream_connections(&["--protocol", "2", "--name-prefix", "py"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_resp3_shares_upstream_connections() {
    // HELLO 3 AUTH, then CLIENT SETINFO.
    twenty_clients_share_upstream_connections(&["--protocol", "3"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_db1_shares_upstream_connections() {
    // SELECT 1 in the handshake.
    twenty_clients_share_upstream_connections(&["--protocol", "2", "--db", "1"]).await;
}
