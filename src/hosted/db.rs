//! SQL for hosted packages, their owners, API tokens and the audit log. The
//! tables live in the state database (`store::db` creates them); every
//! function here takes a connection and runs inside `Db::call`.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::{Value, json};

use crate::auth::Scope;
use crate::index::hosted::Retirement;
use crate::tarball::Requirement;

pub use crate::index::hosted::ReleaseRow;

fn requirements_json(reqs: &[Requirement]) -> String {
    Value::Array(
        reqs.iter()
            .map(|r| {
                json!({"name": r.name, "requirement": r.requirement, "optional": r.optional,
                       "app": r.app, "repository": r.repository})
            })
            .collect(),
    )
    .to_string()
}

fn requirements_from(text: &str) -> Vec<Requirement> {
    let Ok(Value::Array(items)) = serde_json::from_str::<Value>(text) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|v| {
            let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
            Some(Requirement {
                name: s("name")?,
                requirement: s("requirement")?,
                optional: v.get("optional").and_then(Value::as_bool).unwrap_or(false),
                app: s("app"),
                repository: s("repository"),
            })
        })
        .collect()
}

fn digest(text: String) -> rusqlite::Result<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(&text, &mut out).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(out)
}

const RELEASE_COLUMNS: &str = "repository, package, version, outer_sha256, inner_sha256, size, \
     requirements, meta, retired_reason, retired_message, docs_sha256, publisher, inserted_at, updated_at";

fn release_row(row: &Row<'_>) -> rusqlite::Result<ReleaseRow> {
    let reason: Option<String> = row.get(8)?;
    let message: Option<String> = row.get(9)?;
    let docs: Option<String> = row.get(10)?;
    Ok(ReleaseRow {
        repository: row.get(0)?,
        package: row.get(1)?,
        version: row.get(2)?,
        outer_sha256: digest(row.get(3)?)?,
        inner_sha256: digest(row.get(4)?)?,
        size: row.get::<_, i64>(5)? as u64,
        requirements: requirements_from(&row.get::<_, String>(6)?),
        meta: serde_json::from_str(&row.get::<_, String>(7)?).unwrap_or(Value::Null),
        retired: reason
            .as_deref()
            .and_then(Retirement::parse)
            .map(|r| (r, message.unwrap_or_default())),
        docs_sha256: docs.map(digest).transpose()?,
        publisher: row.get(11)?,
        inserted_at: row.get(12)?,
        updated_at: row.get(13)?,
    })
}

/// Every release of `package` in `repository`.
pub fn releases(
    conn: &Connection,
    repository: &str,
    package: &str,
) -> rusqlite::Result<Vec<ReleaseRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {RELEASE_COLUMNS} FROM hosted_releases WHERE repository = ?1 AND package = ?2"
    ))?;
    stmt.query_map(params![repository, package], release_row)?
        .collect()
}

/// One release, if it exists.
pub fn release(
    conn: &Connection,
    repository: &str,
    package: &str,
    version: &str,
) -> rusqlite::Result<Option<ReleaseRow>> {
    conn.query_row(
        &format!(
            "SELECT {RELEASE_COLUMNS} FROM hosted_releases \
             WHERE repository = ?1 AND package = ?2 AND version = ?3"
        ),
        params![repository, package, version],
        release_row,
    )
    .optional()
}

/// Every hosted release of every repository (what a sync merges in).
pub fn all_releases(conn: &Connection) -> rusqlite::Result<Vec<ReleaseRow>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {RELEASE_COLUMNS} FROM hosted_releases ORDER BY repository, package"
    ))?;
    stmt.query_map([], release_row)?.collect()
}

/// Inserts or replaces a release.
pub fn put_release(conn: &Connection, r: &ReleaseRow) -> rusqlite::Result<()> {
    conn.execute(
        &format!(
            "INSERT OR REPLACE INTO hosted_releases ({RELEASE_COLUMNS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
        ),
        params![
            r.repository,
            r.package,
            r.version,
            hex::encode(r.outer_sha256),
            hex::encode(r.inner_sha256),
            r.size as i64,
            requirements_json(&r.requirements),
            r.meta.to_string(),
            r.retired.as_ref().map(|(reason, _)| reason.as_str()),
            r.retired.as_ref().map(|(_, m)| m.as_str()),
            r.docs_sha256.map(hex::encode),
            r.publisher,
            r.inserted_at,
            r.updated_at,
        ],
    )?;
    Ok(())
}

/// Removes a release.
pub fn delete_release(
    conn: &Connection,
    repository: &str,
    package: &str,
    version: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM hosted_releases WHERE repository = ?1 AND package = ?2 AND version = ?3",
        params![repository, package, version],
    )?;
    Ok(())
}

/// Every release of repository `repository`.
pub fn repository_releases(
    conn: &Connection,
    repository: &str,
) -> rusqlite::Result<Vec<ReleaseRow>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {RELEASE_COLUMNS} FROM hosted_releases WHERE repository = ?1 ORDER BY package"
    ))?;
    stmt.query_map([repository], release_row)?.collect()
}

/// `rows` of repository `old` as rows of `new`: a requirement that named
/// `old` names `new`.
pub fn moved_rows(rows: &[ReleaseRow], old: &str, new: &str) -> Vec<ReleaseRow> {
    rows.iter()
        .map(|r| {
            let mut r = r.clone();
            r.repository = new.to_owned();
            for req in &mut r.requirements {
                if req.repository.as_deref() == Some(old) {
                    req.repository = Some(new.to_owned());
                }
            }
            r
        })
        .collect()
}

/// Moves repository `old`'s releases (`moved`, from [`moved_rows`]) and
/// owners to `new`, and forgets `old`'s signed-record cache.
pub fn move_repository(
    conn: &Connection,
    old: &str,
    new: &str,
    moved: &[ReleaseRow],
) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM hosted_releases WHERE repository = ?1", [old])?;
    for row in moved {
        put_release(conn, row)?;
    }
    conn.execute(
        "UPDATE hosted_owners SET repository = ?2 WHERE repository = ?1",
        params![old, new],
    )?;
    conn.execute("DELETE FROM signed_cache WHERE repository = ?1", [old])?;
    Ok(())
}

/// Names of the hosted packages of `repository`, sorted.
pub fn package_names(conn: &Connection, repository: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT package FROM hosted_releases WHERE repository = ?1 ORDER BY package",
    )?;
    stmt.query_map(params![repository], |r| r.get(0))?.collect()
}

/// Owners of a package: (user, level).
pub fn owners(
    conn: &Connection,
    repository: &str,
    package: &str,
) -> rusqlite::Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT username, level FROM hosted_owners WHERE repository = ?1 AND package = ?2 ORDER BY username",
    )?;
    stmt.query_map(params![repository, package], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

/// The packages `user` owns, as (repository, package), sorted.
pub fn owned_packages(conn: &Connection, user: &str) -> rusqlite::Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT repository, package FROM hosted_owners WHERE username = ?1 ORDER BY repository, package",
    )?;
    stmt.query_map(params![user], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
}

/// Adds or updates an owner.
pub fn put_owner(
    conn: &Connection,
    repository: &str,
    package: &str,
    user: &str,
    level: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO hosted_owners (repository, package, username, level) VALUES (?1, ?2, ?3, ?4)",
        params![repository, package, user, level],
    )?;
    Ok(())
}

/// Removes an owner; true when there was one.
pub fn delete_owner(
    conn: &Connection,
    repository: &str,
    package: &str,
    user: &str,
) -> rusqlite::Result<bool> {
    Ok(conn.execute(
        "DELETE FROM hosted_owners WHERE repository = ?1 AND package = ?2 AND username = ?3",
        params![repository, package, user],
    )? > 0)
}

/// An API token as stored: never the secret, only its hash.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenRow {
    /// Public id (the part of the token before the secret).
    pub id: String,
    /// Name, unique among live tokens (the key name of the Hex API).
    pub name: String,
    /// The user the token acts for (owners, audit log).
    pub username: String,
    /// SHA-256 of the secret.
    pub hash: [u8; 32],
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds after which it is refused.
    pub expires_at: Option<i64>,
    /// The token that created it (none for tokens made by the CLI).
    pub parent: Option<String>,
    /// Unix seconds of revocation.
    pub revoked_at: Option<i64>,
}

const TOKEN_COLUMNS: &str =
    "id, name, username, hash, scopes, created_at, expires_at, parent, revoked_at";

fn token_row(row: &Row<'_>) -> rusqlite::Result<TokenRow> {
    let hash: Vec<u8> = row.get(3)?;
    let scopes: String = row.get(4)?;
    Ok(TokenRow {
        id: row.get(0)?,
        name: row.get(1)?,
        username: row.get(2)?,
        // A malformed row can never match a presented secret.
        hash: hash.try_into().unwrap_or([0; 32]),
        scopes: serde_json::from_str(&scopes).unwrap_or_default(),
        created_at: row.get(5)?,
        expires_at: row.get(6)?,
        parent: row.get(7)?,
        revoked_at: row.get(8)?,
    })
}

/// Stores a new token.
pub fn insert_token(conn: &Connection, t: &TokenRow) -> rusqlite::Result<()> {
    let scopes = serde_json::to_string(&t.scopes)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    conn.execute(
        &format!(
            "INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
        ),
        params![
            t.id,
            t.name,
            t.username,
            t.hash.to_vec(),
            scopes,
            t.created_at,
            t.expires_at,
            t.parent,
            t.revoked_at
        ],
    )?;
    Ok(())
}

/// The token with public id `id`.
pub fn token(conn: &Connection, id: &str) -> rusqlite::Result<Option<TokenRow>> {
    conn.query_row(
        &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1"),
        params![id],
        token_row,
    )
    .optional()
}

/// Every live (not revoked) token, by name.
pub fn live_tokens(conn: &Connection) -> rusqlite::Result<Vec<TokenRow>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {TOKEN_COLUMNS} FROM tokens WHERE revoked_at IS NULL ORDER BY name"
    ))?;
    stmt.query_map([], token_row)?.collect()
}

/// Revokes a token and every token it created, transitively; returns how many.
pub fn revoke_token(conn: &Connection, id: &str, now: i64) -> rusqlite::Result<usize> {
    conn.execute(
        "WITH RECURSIVE tree(id) AS (SELECT ?1 UNION SELECT t.id FROM tokens t JOIN tree ON t.parent = tree.id)
         UPDATE tokens SET revoked_at = ?2 WHERE id IN tree AND revoked_at IS NULL",
        params![id, now],
    )
}

/// One audit-log entry.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AuditEntry {
    /// Unix seconds.
    pub at: i64,
    /// The user acting (a token's user, or `cli`).
    pub actor: String,
    /// The token's public id, if a token acted.
    pub token: Option<String>,
    /// What was done, e.g. `release.publish`.
    pub action: String,
    /// What it was done to, e.g. `acme/acme_web 1.0.0`.
    pub target: String,
    /// More detail (JSON text).
    pub detail: String,
    /// The client address.
    pub client: Option<String>,
}

/// Appends to the audit log.
pub fn audit(conn: &Connection, e: &AuditEntry) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO audit_log (at, actor, token, action, target, detail, client) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![e.at, e.actor, e.token, e.action, e.target, e.detail, e.client],
    )?;
    Ok(())
}

/// Which audit entries a reader may see.
#[derive(Debug, Clone, Copy)]
pub enum AuditScope<'a> {
    /// Every entry (a server administrator).
    All,
    /// What this user did.
    Actor(&'a str),
    /// What was done to this repository (an organization) or in it.
    Repository(&'a str),
}

/// The newest `limit` audit entries of `scope`, newest first, skipping
/// `offset`.
pub fn audit_log(
    conn: &Connection,
    scope: AuditScope<'_>,
    limit: u32,
    offset: u32,
) -> rusqlite::Result<Vec<AuditEntry>> {
    // Targets are `REPO`, `REPO/...` or `REPO/NAME VERSION`; a prefix
    // compare, not LIKE, since `_` in a name is a LIKE wildcard.
    let (filter, value) = match scope {
        AuditScope::All => ("1 = 1 OR ?3 IS NULL", ""),
        AuditScope::Actor(user) => ("actor = ?3", user),
        AuditScope::Repository(repo) => (
            "(target = ?3 OR substr(target, 1, length(?3) + 1) = ?3 || '/')",
            repo,
        ),
    };
    let mut stmt = conn.prepare(&format!(
        "SELECT at, actor, token, action, target, detail, client FROM audit_log WHERE {filter}
         ORDER BY id DESC LIMIT ?1 OFFSET ?2"
    ))?;
    stmt.query_map(params![limit, offset, value], |r| {
        Ok(AuditEntry {
            at: r.get(0)?,
            actor: r.get(1)?,
            token: r.get(2)?,
            action: r.get(3)?,
            target: r.get(4)?,
            detail: r.get(5)?,
            client: r.get(6)?,
        })
    })?
    .collect()
}
