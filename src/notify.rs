//! systemd readiness notification (`sd_notify`), without a crate.
//!
//! The unit in `deploy/systemd/redward.service` is `Type=notify`: systemd considers redward
//! started only when it says `READY=1`, which [`ready`] sends once every listener is bound. So
//! `systemctl start redward` returns (and units ordered `After=redward.service` start) only when
//! clients can actually connect, and a bad certificate or a port in use fails the start instead
//! of looking like a successful one. [`stopping`] tells systemd that a graceful drain has begun.
//!
//! The protocol is one datagram of `KEY=VALUE` lines to the unix socket named by
//! `$NOTIFY_SOCKET`: a path, or an abstract socket name written with a leading `@`. When the
//! variable is unset (not started by systemd, or another `Type=`) both functions do nothing.
//! A failure to send is logged, never fatal: systemd then times the start out on its own.

use std::io;
use std::os::unix::net::UnixDatagram;

/// Tells systemd that start-up is finished: listeners are bound and clients can connect.
pub fn ready() {
    notify_env("READY=1");
}

/// Tells systemd that redward is shutting down (graceful drain in progress).
pub fn stopping() {
    notify_env("STOPPING=1");
}

/// Sends `msg` to the socket in `$NOTIFY_SOCKET`, if set.
fn notify_env(msg: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = match socket.to_str() {
        Some("") => return,
        Some(path) => notify_to(path, msg),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "NOTIFY_SOCKET is not valid UTF-8",
        )),
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, message = msg, "could not notify systemd");
    }
}

/// Sends one notification datagram `msg` (e.g. `READY=1`) to the unix datagram socket at `path`,
/// or to the abstract socket `path[1..]` when `path` starts with `@`.
///
/// # Errors
/// An empty path, or any error creating the socket or sending.
pub fn notify_to(path: &str, msg: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let sent = if let Some(name) = path.strip_prefix('@') {
        send_abstract(&sock, name, msg)?
    } else if path.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty notify socket path",
        ));
    } else {
        sock.send_to(msg.as_bytes(), path)?
    };
    if sent == msg.len() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "notification datagram truncated",
        ))
    }
}

#[cfg(target_os = "linux")]
fn send_abstract(sock: &UnixDatagram, name: &str, msg: &str) -> io::Result<usize> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    sock.send_to_addr(msg.as_bytes(), &addr)
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_sock: &UnixDatagram, _name: &str, _msg: &str) -> io::Result<usize> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract unix sockets exist only on Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let path = path.to_str().unwrap();
        notify_to(path, "READY=1").unwrap();
        assert_eq!(recv(&server), "READY=1");
        notify_to(path, "STOPPING=1").unwrap();
        assert_eq!(recv(&server), "STOPPING=1");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!(
            "redward-notify-test-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        );
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(&format!("@{name}"), "READY=1").unwrap();
        assert_eq!(recv(&server), "READY=1");
    }

    #[test]
    fn errors_are_returned_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nobody-listens.sock");
        assert!(notify_to(missing.to_str().unwrap(), "READY=1").is_err());
        assert!(notify_to("", "READY=1").is_err());
    }
}
