//! Small helpers many tests share: a logged-in connection, one request and its reply as
//! text, redward's metrics.

use std::net::SocketAddr;

use super::{cmd, Proxy, Raw, APP_PASSWORD, APP_USER};

/// A TLS connection to `proxy` logged in as the `app` user (every permission).
pub async fn as_app(proxy: &Proxy) -> Raw {
    let mut c = proxy.raw().await;
    c.send(&cmd(&["AUTH", APP_USER, APP_PASSWORD])).await;
    assert_eq!(c.replies(1).await, b"+OK\r\n");
    c
}

/// Sends one request on `c` and returns its reply as text.
pub async fn ask(c: &mut Raw, args: &[&str]) -> String {
    c.send(&cmd(args)).await;
    String::from_utf8_lossy(&c.replies(1).await).into_owned()
}

/// redward's `/metrics` text from its admin endpoint.
pub async fn admin_metrics(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("admin");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

/// A server of the matrix with redward's upstream user and the app user (`default` off), or
/// `None` when `kind` cannot run here (the test skips it, saying why).
pub fn matrix_server(kind: super::ServerKind) -> Option<super::Redis> {
    match super::Redis::start_kind(kind, super::matrix_acl()) {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("skipping {}: {e}", kind.name());
            None
        }
    }
}

/// The ACL lines of [`matrix_server`]: `default` off, redward's upstream user, the app user.
pub fn matrix_acl() -> Vec<String> {
    use super::{APP_PASSWORD, APP_USER, UPSTREAM_PASSWORD, UPSTREAM_USER};
    vec![
        "user default off".to_owned(),
        format!("user {UPSTREAM_USER} on >{UPSTREAM_PASSWORD} ~* &* +@all"),
        format!("user {APP_USER} on >{APP_PASSWORD} ~* &* +@all"),
    ]
}

impl super::Redis {
    /// Stops this server and starts it again on `port`, with the same directory (a cluster
    /// node keeps its `nodes.conf`, so its id), as a rescheduled pod comes back.
    pub fn restart_at(&mut self, port: u16) {
        self.kill();
        self.port = port;
        assert!(
            self.spawn().expect("spawn redis-server"),
            "redis-server did not start on port {port}"
        );
    }
}
