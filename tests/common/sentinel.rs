//! Real Sentinels (`redis-server --sentinel`) on loopback, monitoring [`MASTER`].

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, Certs, UPSTREAM_PASSWORD, UPSTREAM_USER};

/// The name every test Sentinel monitors.
pub const MASTER: &str = "mymaster";

/// A `redis-server --sentinel` child, killed on drop.
pub struct Sentinel {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sentinel {
    pub fn start(master_port: u16) -> Sentinel {
        Sentinel::start_with(master_port, None)
    }

    /// A Sentinel that clients reach over TLS only (`tls-port`, with these certificates).
    pub fn start_with(master_port: u16, tls: Option<&Certs>) -> Sentinel {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        let listen = match tls {
            None => format!("port {port}\n"),
            Some(c) => format!(
                "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\n\
                 tls-ca-cert-file {}\ntls-auth-clients no\n",
                c.cert().display(),
                c.key().display(),
                c.ca().display()
            ),
        };
        std::fs::write(
            &conf,
            format!(
                "{listen}bind 127.0.0.1\ndir {}\n\
                 sentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 5000\n\
                 sentinel auth-user {MASTER} {UPSTREAM_USER}\n\
                 sentinel auth-pass {MASTER} {UPSTREAM_PASSWORD}\n",
                dir.path().display()
            ),
        )
        .expect("write sentinel.conf");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel");
        let s = Sentinel {
            child,
            port,
            _dir: dir,
        };
        wait_until("the Sentinel listens", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        s
    }

    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.port))
            .expect("client")
            .get_connection()
            .expect("Sentinel connection")
    }

    pub fn master_port(&self) -> Option<u16> {
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(MASTER)
            .query(&mut self.conn())
            .ok()?;
        addr.map(|a| a.1)
    }

    pub fn replicas(&self) -> usize {
        let r: Vec<redis::Value> = redis::cmd("SENTINEL")
            .arg("replicas")
            .arg(MASTER)
            .query(&mut self.conn())
            .unwrap_or_default();
        r.len()
    }
}

/// Polls `check` every 50 ms for up to 60 s (a bound, not a timing assertion).
pub fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
