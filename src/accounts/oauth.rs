//! The OAuth device flow's and refresh tokens' rows (blocking queries).
//!
//! A device code is what the client polls with: 256 random bits, stored as
//! its SHA-256. A user code is what a person types or confirms: 8 letters
//! from an alphabet without look-alikes, single-use, for 10 minutes, and
//! guesses count towards the failed-authentication limiter. A refresh
//! token has the API-key shape but lives in its own table, so it is never
//! accepted as a key.

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

/// Letters a user code is made of: no vowels (no words), no look-alikes.
const USER_CODE_ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
/// Letters in a user code (20^8: 2.6e10 codes).
pub const USER_CODE_LEN: usize = 8;
/// How long a device code lives.
pub const DEVICE_SECS: i64 = 600;
/// How often a client may poll.
pub const POLL_SECS: i64 = 5;
/// Pending device codes at most: the endpoint needs no key.
pub const MAX_PENDING: i64 = 1000;
/// How long a refresh token lives.
pub const REFRESH_SECS: i64 = 30 * 86_400;

/// A new device authorization: (device code to give the client, user code).
pub fn new_codes(rng: &mut (impl rand::RngCore + rand::CryptoRng)) -> (String, String) {
    use base64::Engine as _;
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    let device = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let user = (0..USER_CODE_LEN)
        .map(|_| {
            let i = (rng.next_u32() as usize) % USER_CODE_ALPHABET.len();
            USER_CODE_ALPHABET[i] as char
        })
        .collect();
    (device, user)
}

/// A user code as typed: dashes and spaces dropped, uppercased.
pub fn normalize_user_code(typed: &str) -> String {
    typed
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn hash(code: &str) -> Vec<u8> {
    Sha256::digest(code.as_bytes()).to_vec()
}

/// Stores a device authorization; `false` when too many are pending.
pub fn create_device(
    c: &Connection,
    device_code: &str,
    user_code: &str,
    client_name: Option<&str>,
    scope: &str,
    now: i64,
) -> rusqlite::Result<bool> {
    c.execute(
        "DELETE FROM oauth_devices WHERE expires_at < ?1",
        [now - 86_400],
    )?;
    let pending: i64 = c.query_row(
        "SELECT count(*) FROM oauth_devices WHERE expires_at >= ?1 AND done = 0",
        [now],
        |r| r.get(0),
    )?;
    if pending >= MAX_PENDING {
        return Ok(false);
    }
    c.execute(
        "INSERT INTO oauth_devices (device_hash, user_code, client_name, scope, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![hash(device_code), user_code, client_name, scope, now, now + DEVICE_SECS],
    )?;
    Ok(true)
}

/// A pending device authorization, as an approver sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The client's name for itself (hostname), if it gave one.
    pub client_name: Option<String>,
    /// The scopes asked for.
    pub scope: String,
}

/// The live, undecided device authorization with `user_code`.
pub fn pending(c: &Connection, user_code: &str, now: i64) -> rusqlite::Result<Option<Pending>> {
    c.query_row(
        "SELECT client_name, scope FROM oauth_devices
         WHERE user_code = ?1 AND expires_at >= ?2 AND done = 0 AND approved_by IS NULL AND denied = 0",
        params![user_code, now],
        |r| Ok(Pending { client_name: r.get(0)?, scope: r.get(1)? }),
    )
    .optional()
}

/// Approves (with key `token_id`) or denies the pending authorization
/// `user_code`; `false` when there is none.
pub fn decide(
    c: &Connection,
    user_code: &str,
    token_id: &str,
    approve: bool,
    now: i64,
) -> rusqlite::Result<bool> {
    let n = c.execute(
        "UPDATE oauth_devices SET approved_by = CASE WHEN ?3 THEN ?2 END, denied = NOT ?3
         WHERE user_code = ?1 AND expires_at >= ?4 AND done = 0 AND approved_by IS NULL AND denied = 0",
        params![user_code, token_id, approve, now],
    )?;
    Ok(n > 0)
}

/// What a poll with a device code finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// No such code, or already used.
    Invalid,
    /// Past its life.
    Expired,
    /// Denied by the user.
    Denied,
    /// Not decided yet.
    Pending,
    /// Polled again before the interval passed.
    SlowDown,
    /// Approved by this key, with these scopes; now used up.
    Approved {
        /// The approving key's id.
        token_id: String,
        /// The scopes the client asked for.
        scope: String,
    },
}

/// A device authorization as a poll reads it.
struct DeviceRow {
    expires_at: i64,
    last_poll: Option<i64>,
    approved_by: Option<String>,
    denied: bool,
    done: bool,
    scope: String,
}

/// Polls with `device_code` (marks an approved one used, once).
pub fn poll(c: &mut Connection, device_code: &str, now: i64) -> rusqlite::Result<Poll> {
    let tx = c.transaction()?;
    let row = tx
        .query_row(
            "SELECT expires_at, last_poll, approved_by, denied, done, scope FROM oauth_devices
             WHERE device_hash = ?1",
            [hash(device_code)],
            |r| {
                Ok(DeviceRow {
                    expires_at: r.get(0)?,
                    last_poll: r.get(1)?,
                    approved_by: r.get(2)?,
                    denied: r.get(3)?,
                    done: r.get(4)?,
                    scope: r.get(5)?,
                })
            },
        )
        .optional()?;
    let Some(DeviceRow {
        expires_at,
        last_poll,
        approved_by,
        denied,
        done,
        scope,
    }) = row
    else {
        return Ok(Poll::Invalid);
    };
    let outcome = if done {
        Poll::Invalid
    } else if expires_at < now {
        Poll::Expired
    } else if denied {
        Poll::Denied
    } else if let Some(token_id) = approved_by {
        tx.execute(
            "UPDATE oauth_devices SET done = 1 WHERE device_hash = ?1",
            [hash(device_code)],
        )?;
        Poll::Approved { token_id, scope }
    } else if last_poll.is_some_and(|t| now - t < POLL_SECS - 1) {
        Poll::SlowDown
    } else {
        Poll::Pending
    };
    tx.execute(
        "UPDATE oauth_devices SET last_poll = ?2 WHERE device_hash = ?1",
        params![hash(device_code), now],
    )?;
    tx.commit()?;
    Ok(outcome)
}

/// Stores refresh token `id` (secret hashed) for key `parent`.
pub fn create_refresh(
    c: &Connection,
    id: &str,
    secret_hash: &[u8; 32],
    parent: &str,
    scope: &str,
    now: i64,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO oauth_refresh (id, hash, parent, scope, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            id,
            secret_hash.to_vec(),
            parent,
            scope,
            now,
            now + REFRESH_SECS
        ],
    )?;
    Ok(())
}

/// A live refresh token: (stored hash, parent key id, scope).
pub fn refresh(
    c: &Connection,
    id: &str,
    now: i64,
) -> rusqlite::Result<Option<([u8; 32], String, String)>> {
    c.query_row(
        "SELECT hash, parent, scope FROM oauth_refresh
         WHERE id = ?1 AND revoked_at IS NULL AND expires_at >= ?2",
        params![id, now],
        |r| {
            let h: Vec<u8> = r.get(0)?;
            Ok((h.try_into().unwrap_or([0; 32]), r.get(1)?, r.get(2)?))
        },
    )
    .optional()
}

/// Revokes refresh token `id`; `false` when it was not live.
pub fn revoke_refresh(c: &Connection, id: &str, now: i64) -> rusqlite::Result<bool> {
    Ok(c.execute(
        "UPDATE oauth_refresh SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
        params![id, now],
    )? > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE tokens (username TEXT, created_at INTEGER);
             CREATE TABLE hosted_owners (username TEXT);",
        )
        .unwrap();
        c.execute_batch(crate::store::db::ACCOUNTS_SCHEMA).unwrap();
        c
    }

    #[test]
    fn a_device_code_is_approved_once_polled_once_and_expires() {
        let mut c = db();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (device, user) = new_codes(&mut rng);
        assert_eq!(user.len(), USER_CODE_LEN);
        assert_eq!(
            normalize_user_code(&format!("{}-{}", &user[..4], &user[4..]).to_lowercase()),
            user
        );
        assert!(
            create_device(&c, &device, &user, Some("laptop"), "api repositories", 100).unwrap()
        );
        assert_eq!(poll(&mut c, &device, 100).unwrap(), Poll::Pending);
        assert_eq!(poll(&mut c, &device, 101).unwrap(), Poll::SlowDown);
        assert_eq!(
            pending(&c, &user, 102)
                .unwrap()
                .unwrap()
                .client_name
                .as_deref(),
            Some("laptop")
        );
        assert!(!decide(&c, "WRONGCOD", "k1", true, 102).unwrap());
        assert!(decide(&c, &user, "k1", true, 102).unwrap());
        assert!(!decide(&c, &user, "k2", true, 102).unwrap(), "decided once");
        assert_eq!(
            poll(&mut c, &device, 110).unwrap(),
            Poll::Approved {
                token_id: "k1".into(),
                scope: "api repositories".into()
            }
        );
        assert_eq!(
            poll(&mut c, &device, 120).unwrap(),
            Poll::Invalid,
            "single use"
        );
        assert_eq!(poll(&mut c, "no such code", 120).unwrap(), Poll::Invalid);
        let (device2, user2) = new_codes(&mut rng);
        create_device(&c, &device2, &user2, None, "api", 100).unwrap();
        assert!(decide(&c, &user2, "k1", false, 101).unwrap());
        assert_eq!(poll(&mut c, &device2, 110).unwrap(), Poll::Denied);
        let (device3, user3) = new_codes(&mut rng);
        create_device(&c, &device3, &user3, None, "api", 100).unwrap();
        assert_eq!(
            poll(&mut c, &device3, 100 + DEVICE_SECS + 1).unwrap(),
            Poll::Expired
        );
        assert!(!decide(&c, &user3, "k1", true, 100 + DEVICE_SECS + 1).unwrap());
    }
}
