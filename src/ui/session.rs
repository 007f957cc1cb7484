//! Signed-in browser sessions: a random id in an HttpOnly, SameSite=Strict
//! cookie, mapped in memory to the API key the user signed in with.
//!
//! The key never reaches a URL or the cookie; only the SHA-256 of a session
//! id is held, so a memory dump of the map does not hand out cookies. A
//! session ends at sign-out, after [`SESSION_TTL`], or when the server
//! restarts; the key itself is checked again by the API on every page, so
//! revoking or expiring it ends its sessions too.

use std::collections::HashMap;
use std::sync::Mutex;

use rand::RngCore;
use sha2::{Digest, Sha256};

/// How long a session lasts after sign-in (12 hours).
pub const SESSION_TTL: u64 = 12 * 3600;
/// Sessions held at once; the one closest to expiry makes room.
const MAX_SESSIONS: usize = 10_000;

/// The name of the session cookie.
pub const COOKIE: &str = "hexmirror_session";

#[derive(Debug)]
struct Session {
    token: String,
    expires_at: u64,
}

/// The open sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    open: Mutex<HashMap<[u8; 32], Session>>,
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// Opens a session for `token` at `now`; returns the cookie value.
    pub fn open(&self, token: String, now: u64) -> String {
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let id = hex::encode(raw);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, s| s.expires_at > now);
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(k, _)| *k)
        {
            open.remove(&oldest);
        }
        open.insert(
            digest(&id),
            Session {
                token,
                expires_at: now + SESSION_TTL,
            },
        );
        id
    }

    /// The API key of session `id`, if it is open at `now`.
    pub fn token(&self, id: &str, now: u64) -> Option<String> {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.get(&digest(id))
            .filter(|s| s.expires_at > now)
            .map(|s| s.token.clone())
    }

    /// Ends session `id`.
    pub fn close(&self, id: &str) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&digest(id));
    }
}

/// The session id in a `Cookie` header, if any.
pub fn from_cookie_header(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_ends_at_sign_out_and_at_expiry() {
        let s = Sessions::default();
        let id = s.open("hxm_a_b".into(), 1_000);
        assert_eq!(s.token(&id, 1_001).as_deref(), Some("hxm_a_b"));
        assert_eq!(s.token(&id, 1_000 + SESSION_TTL), None);
        let id = s.open("hxm_c_d".into(), 1_000);
        s.close(&id);
        assert_eq!(s.token(&id, 1_001), None);
        assert_eq!(s.token("not-a-session", 1_001), None);
    }

    #[test]
    fn the_cookie_is_found_among_others_and_must_look_like_an_id() {
        let id = "a".repeat(64);
        let header = format!("theme=dark; {COOKIE}={id}; x=y");
        assert_eq!(from_cookie_header(&header), Some(id.as_str()));
        assert_eq!(from_cookie_header(&format!("{COOKIE}=../../etc")), None);
        assert_eq!(from_cookie_header("other=1"), None);
    }

    #[test]
    fn the_map_stays_bounded() {
        let s = Sessions::default();
        for i in 0..(MAX_SESSIONS + 10) {
            s.open(format!("t{i}"), 1_000 + i as u64);
        }
        assert_eq!(s.open.lock().unwrap().len(), MAX_SESSIONS);
    }
}
