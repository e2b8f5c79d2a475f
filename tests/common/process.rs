//! redward as a process of its own, for what only a process shows: its CPU time, its memory
//! and its log.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, Certs};

/// A redward process, killed on drop.
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Process {
    /// Starts `redward --config` with `text` (its listener on `127.0.0.1:0` is given a free
    /// port), stderr to a file; returns once it listens.
    pub fn start(certs: &Certs, text: &str) -> Process {
        let port = free_port();
        let text = text.replacen("127.0.0.1:0", &format!("127.0.0.1:{port}"), 1);
        let path = certs.dir.path().join("process.yaml");
        std::fs::write(&path, &text).unwrap();
        let log = certs.dir.path().join("redward.log");
        let child = Command::new(env!("CARGO_BIN_EXE_redward"))
            .arg("--config")
            .arg(&path)
            .env_remove("RUST_LOG")
            .stderr(std::fs::File::create(&log).unwrap())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut p = Process {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(p.addr).is_err() {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("redward exited ({status}): {}", p.log());
            }
            assert!(
                Instant::now() < deadline,
                "redward did not listen: {}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    /// User plus system CPU seconds the process has used.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the command name (which is in parentheses): utime is the 14th field.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
        ticks / clock_ticks()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process's resident memory in bytes (`VmRSS`).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clock_ticks() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}
