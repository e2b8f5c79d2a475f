//! Signed lockout messages (`limits.shared_state: upstream`): an instance locks an address out
//! only for a message another instance signed, so a client that manages to `PUBLISH` on
//! `redward:lockouts` (a script of a user allowed `&*`, under `upstream.identity: per_user`)
//! cannot lock anyone out. A message is `<ip> <unix ms> <hex HMAC-SHA-256>`, valid for five
//! minutes either way (clocks differ).
//!
//! The key: derived from redward's own upstream credential (every instance sharing the Redis
//! has it), or, without one, a random key the first instance stores in the hidden state
//! database (`redward:signing-key`, `SET NX`), which no client can read (`upstream/confine.rs`,
//! `shared_limits::reserved`).

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use redis_protocol::resp2::types::OwnedFrame;
use sha2::Sha256;

use crate::resp::encode_command;
use crate::upstream::Connector;

/// How far a message's time may be from ours.
const WINDOW: Duration = Duration::from_secs(300);
/// Where the key lives without an upstream credential.
const KEY_NAME: &str = "redward:signing-key";

/// Signs and checks lockout messages.
#[derive(Clone)]
pub struct Signer {
    key: [u8; 32],
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<redacted>)")
    }
}

impl Signer {
    pub fn new(key: [u8; 32]) -> Signer {
        Signer { key }
    }

    fn mac(&self, body: &str) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(b"redward lockout\0");
        mac.update(body.as_bytes());
        mac
    }

    /// The message announcing a lockout of `ip`, at `now`.
    pub fn sign(&self, ip: IpAddr, now: SystemTime) -> String {
        let ms = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let body = format!("{ip} {ms}");
        let tag = hex::encode(self.mac(&body).finalize().into_bytes());
        format!("{body} {tag}")
    }

    /// The address a message locks out, if this key signed it within the window of `now`.
    pub fn verify(&self, message: &[u8], now: SystemTime) -> Option<IpAddr> {
        let text = std::str::from_utf8(message).ok()?;
        let (body, tag) = text.rsplit_once(' ')?;
        let (ip, ms) = body.split_once(' ')?;
        let tag = hex::decode(tag).ok()?;
        self.mac(body).verify_slice(&tag).ok()?;
        let at = UNIX_EPOCH + Duration::from_millis(ms.parse().ok()?);
        let skew = now.duration_since(at).unwrap_or_else(|e| e.duration());
        (skew <= WINDOW).then_some(())?;
        ip.parse().ok()
    }
}

/// The signing key derived from redward's own credential; `None` without one (then the key
/// is the one stored in Redis: [`key_requests`], [`from_stored`]).
pub fn from_credential(connector: &Connector) -> Option<Signer> {
    connector
        .derive_key(b"redward lockout signing v1")
        .map(Signer::new)
}

/// `SET redward:signing-key <fresh> NX` then `GET redward:signing-key`: the key the first
/// instance stored, for every instance. `None` without randomness.
pub fn key_requests() -> Option<Vec<u8>> {
    let mut fresh = [0u8; 32];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut fresh)
        .ok()?;
    let fresh = hex::encode(fresh);
    let mut req = Vec::new();
    encode_command(
        &mut req,
        ["SET", KEY_NAME, &fresh, "NX"].iter().map(|a| a.as_bytes()),
    );
    encode_command(&mut req, ["GET", KEY_NAME].iter().map(|a| a.as_bytes()));
    Some(req)
}

/// The signer for the `GET`'s reply to [`key_requests`].
pub fn from_stored(reply: &OwnedFrame) -> Option<Signer> {
    let OwnedFrame::BulkString(hexkey) = reply else {
        return None;
    };
    let bytes = hex::decode(hexkey).ok()?;
    Some(Signer::new(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_fresh_message_signed_with_the_key_locks_out() {
        let s = Signer::new([7; 32]);
        let now = SystemTime::now();
        let ip: IpAddr = "10.1.2.3".parse().expect("ip");
        let m = s.sign(ip, now);
        assert_eq!(s.verify(m.as_bytes(), now), Some(ip));
        assert_eq!(Signer::new([8; 32]).verify(m.as_bytes(), now), None);
        assert_eq!(
            s.verify(m.replace("10.1.2.3", "10.1.2.4").as_bytes(), now),
            None
        );
        assert_eq!(s.verify(b"10.1.2.3", now), None);
        assert_eq!(s.verify(m.as_bytes(), now + Duration::from_secs(600)), None);
    }
}
