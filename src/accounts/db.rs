//! Users, organizations and members in the state database (blocking
//! queries; callers run them on the blocking pool).

use rusqlite::{Connection, OptionalExtension, params};

use crate::auth::Access;
use crate::registry::PackageName;

/// The tables (created with the rest of the state database).
pub use crate::store::db::ACCOUNTS_SCHEMA as SCHEMA;

/// Why an account change was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// Not a valid name.
    #[error("{0:?} is not a valid name: lowercase letters, digits and `_`, starting with a letter")]
    BadName(String),
    /// The name is a configured repository, the upstream's, a user's or
    /// another organization's.
    #[error("the name {name:?} is taken ({by}); choose another")]
    Taken {
        /// The name.
        name: String,
        /// What has it.
        by: &'static str,
    },
    /// No such organization.
    #[error("no organization {0:?}")]
    NoOrg(String),
    /// No such user.
    #[error("no user {0:?}: create it with `hexmirror user create {0}`")]
    NoUser(String),
    /// An organization with packages cannot be deleted.
    #[error("organization {0:?} still has packages; revert or move them first")]
    NotEmpty(String),
    /// The last admin of an organization cannot leave or be demoted.
    #[error("{user:?} is the last admin of {org:?}; make another member admin first")]
    LastAdmin {
        /// The organization.
        org: String,
        /// The member.
        user: String,
    },
    /// Not a role.
    #[error("{0:?} is not a role: admin, write or read")]
    BadRole(String),
    /// Not an email address.
    #[error("{0:?} is not an email address (NAME@DOMAIN, at most 254 bytes)")]
    BadEmail(String),
    /// The state database.
    #[error(transparent)]
    Db(#[from] crate::store::DbError),
    /// A query failed.
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// A user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user name.
    pub name: String,
    /// A server administrator.
    pub admin: bool,
    /// Unix seconds.
    pub created_at: i64,
}

/// An organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Org {
    /// Its name, also its repository's.
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the last change (creation, update or rename).
    pub updated_at: i64,
    /// Where billing mail would go (seed 000's one updatable field; kept
    /// and shown, never used to send anything).
    pub billing_email: Option<String>,
}

const ORG_COLUMNS: &str = "name, created_at, coalesce(updated_at, created_at), billing_email";

fn org_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Org> {
    Ok(Org {
        name: r.get(0)?,
        created_at: r.get(1)?,
        updated_at: r.get(2)?,
        billing_email: r.get(3)?,
    })
}

/// A member of an organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The organization.
    pub org: String,
    /// The user.
    pub username: String,
    /// What the member may do in it.
    pub role: Access,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the last role change.
    pub updated_at: i64,
}

fn checked_name(name: &str) -> Result<(), AccountError> {
    PackageName::parse(name)
        .map(|_| ())
        .map_err(|_| AccountError::BadName(name.to_owned()))
}

/// Creates user `name`.
pub fn create_user(
    c: &Connection,
    name: &str,
    admin: bool,
    now: i64,
) -> Result<User, AccountError> {
    checked_name(name)?;
    if org(c, name)?.is_some() {
        return Err(AccountError::Taken {
            name: name.into(),
            by: "an organization",
        });
    }
    if user(c, name)?.is_some() {
        return Err(AccountError::Taken {
            name: name.into(),
            by: "a user",
        });
    }
    c.execute(
        "INSERT INTO users (name, admin, created_at) VALUES (?1, ?2, ?3)",
        params![name, admin, now],
    )?;
    Ok(User {
        name: name.into(),
        admin,
        created_at: now,
    })
}

/// Sets (or, with `None`, removes) `name`'s password hash; `false` when
/// there is no such user.
pub fn set_password(c: &Connection, name: &str, phc: Option<&str>) -> rusqlite::Result<bool> {
    Ok(c.execute(
        "UPDATE users SET password_hash = ?2 WHERE name = ?1",
        params![name, phc],
    )? > 0)
}

/// `name`'s password hash, if the user exists and has a password.
pub fn password_hash(c: &Connection, name: &str) -> rusqlite::Result<Option<String>> {
    Ok(c.query_row(
        "SELECT password_hash FROM users WHERE name = ?1",
        [name],
        |r| r.get::<_, Option<String>>(0),
    )
    .optional()?
    .flatten())
}

/// User `name`.
pub fn user(c: &Connection, name: &str) -> rusqlite::Result<Option<User>> {
    c.query_row(
        "SELECT name, admin, created_at FROM users WHERE name = ?1",
        [name],
        |r| {
            Ok(User {
                name: r.get(0)?,
                admin: r.get(1)?,
                created_at: r.get(2)?,
            })
        },
    )
    .optional()
}

/// Creates organization `name`, with `admin` (a user) as its first admin.
/// `taken` names what the name may not be (configured repositories, the
/// upstream's name).
pub fn create_org(
    c: &mut Connection,
    name: &str,
    admin: Option<&str>,
    taken: &[String],
    now: i64,
) -> Result<Org, AccountError> {
    checked_name(name)?;
    if taken.iter().any(|t| t == name) {
        return Err(AccountError::Taken {
            name: name.into(),
            by: "a configured repository",
        });
    }
    let tx = c.transaction()?;
    if org(&tx, name)?.is_some() {
        return Err(AccountError::Taken {
            name: name.into(),
            by: "an organization",
        });
    }
    if user(&tx, name)?.is_some() {
        return Err(AccountError::Taken {
            name: name.into(),
            by: "a user",
        });
    }
    tx.execute(
        "INSERT INTO orgs (name, created_at, updated_at) VALUES (?1, ?2, ?2)",
        params![name, now],
    )?;
    if let Some(admin) = admin {
        if user(&tx, admin)?.is_none() {
            return Err(AccountError::NoUser(admin.into()));
        }
        tx.execute(
            "INSERT INTO org_members (org, username, role, created_at, updated_at)
             VALUES (?1, ?2, 'admin', ?3, ?3)",
            params![name, admin, now],
        )?;
    }
    tx.commit()?;
    Ok(Org {
        name: name.into(),
        created_at: now,
        updated_at: now,
        billing_email: None,
    })
}

/// Every organization, by name.
pub fn orgs(c: &Connection) -> rusqlite::Result<Vec<Org>> {
    c.prepare(&format!("SELECT {ORG_COLUMNS} FROM orgs ORDER BY name"))?
        .query_map([], org_row)?
        .collect()
}

/// Organization `name`.
pub fn org(c: &Connection, name: &str) -> rusqlite::Result<Option<Org>> {
    c.query_row(
        &format!("SELECT {ORG_COLUMNS} FROM orgs WHERE name = ?1"),
        [name],
        org_row,
    )
    .optional()
}

/// Sets organization `name`'s billing email (`None` clears it).
pub fn update_org(
    c: &Connection,
    name: &str,
    billing_email: Option<&str>,
    now: i64,
) -> Result<Org, AccountError> {
    if let Some(e) = billing_email
        && (e.len() > 254
            || e.split_once('@')
                .is_none_or(|(l, d)| l.is_empty() || d.is_empty()))
    {
        return Err(AccountError::BadEmail(e.to_owned()));
    }
    let changed = c.execute(
        "UPDATE orgs SET billing_email = ?2, updated_at = ?3 WHERE name = ?1",
        params![name, billing_email, now],
    )?;
    if changed == 0 {
        return Err(AccountError::NoOrg(name.into()));
    }
    org(c, name)?.ok_or_else(|| AccountError::NoOrg(name.into()))
}

/// Whether organization `old` may become `new`: `old` exists and `new` is
/// a valid name that no configured repository (`taken`), organization or
/// user has.
pub fn check_rename(
    c: &Connection,
    old: &str,
    new: &str,
    taken: &[String],
) -> Result<(), AccountError> {
    if org(c, old)?.is_none() {
        return Err(AccountError::NoOrg(old.into()));
    }
    checked_name(new)?;
    let by = if taken.iter().any(|t| t == new) {
        Some("a configured repository")
    } else if org(c, new)?.is_some() {
        Some("an organization")
    } else if user(c, new)?.is_some() {
        Some("a user")
    } else {
        None
    };
    match by {
        Some(by) => Err(AccountError::Taken {
            name: new.into(),
            by,
        }),
        None => Ok(()),
    }
}

/// Renames organization `old` to `new` in the account tables: the
/// organization, its members and invitations, its keys (tokens of the
/// organization) and every token scope naming it, and the audit entries
/// about it, so its history stays its own. The caller moves the hosted
/// rows and commits.
pub fn rename_org(
    tx: &rusqlite::Transaction<'_>,
    old: &str,
    new: &str,
    taken: &[String],
    now: i64,
) -> Result<(), AccountError> {
    check_rename(tx, old, new, taken)?;
    tx.execute(
        "UPDATE orgs SET name = ?2, updated_at = ?3 WHERE name = ?1",
        params![old, new, now],
    )?;
    for table in ["org_members", "org_invites"] {
        tx.execute(
            &format!("UPDATE {table} SET org = ?2 WHERE org = ?1"),
            params![old, new],
        )?;
    }
    tx.execute(
        "UPDATE tokens SET username = ?2 WHERE username = ?1",
        params![old, new],
    )?;
    let scoped: Vec<(String, String)> = tx
        .prepare("SELECT id, scopes FROM tokens")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (id, text) in scoped {
        let Ok(mut scopes) = serde_json::from_str::<Vec<crate::auth::Scope>>(&text) else {
            continue;
        };
        let mut moved = false;
        for s in scopes.iter_mut().filter(|s| s.repository == old) {
            s.repository = new.to_owned();
            moved = true;
        }
        if moved {
            let text = serde_json::to_string(&scopes)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            tx.execute(
                "UPDATE tokens SET scopes = ?2 WHERE id = ?1",
                params![id, text],
            )?;
        }
    }
    // Targets are `ORG` or `ORG/...` (see `hosted::db::audit_log`).
    tx.execute(
        "UPDATE audit_log SET target = ?2 || substr(target, length(?1) + 1)
         WHERE target = ?1 OR substr(target, 1, length(?1) + 1) = ?1 || '/'",
        params![old, new],
    )?;
    Ok(())
}

/// Deletes organization `name`, which must have no hosted release.
pub fn delete_org(c: &mut Connection, name: &str) -> Result<(), AccountError> {
    let tx = c.transaction()?;
    if org(&tx, name)?.is_none() {
        return Err(AccountError::NoOrg(name.into()));
    }
    let releases: i64 = tx.query_row(
        "SELECT count(*) FROM hosted_releases WHERE repository = ?1",
        [name],
        |r| r.get(0),
    )?;
    if releases > 0 {
        return Err(AccountError::NotEmpty(name.into()));
    }
    tx.execute("DELETE FROM org_members WHERE org = ?1", [name])?;
    tx.execute("DELETE FROM orgs WHERE name = ?1", [name])?;
    tx.commit()?;
    Ok(())
}

fn member_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Member> {
    let role: String = r.get(2)?;
    Ok(Member {
        org: r.get(0)?,
        username: r.get(1)?,
        // Written only through `set_member`, which takes an `Access`.
        role: Access::parse(&role).unwrap_or(Access::Read),
        created_at: r.get(3)?,
        updated_at: r.get(4)?,
    })
}

const MEMBER_COLUMNS: &str = "org, username, role, created_at, updated_at";

/// The members of `org`, by name.
pub fn members(c: &Connection, org: &str) -> rusqlite::Result<Vec<Member>> {
    c.prepare(&format!(
        "SELECT {MEMBER_COLUMNS} FROM org_members WHERE org = ?1 ORDER BY username"
    ))?
    .query_map([org], member_row)?
    .collect()
}

/// `user`'s membership of `org`.
pub fn member(c: &Connection, org: &str, user: &str) -> rusqlite::Result<Option<Member>> {
    c.query_row(
        &format!("SELECT {MEMBER_COLUMNS} FROM org_members WHERE org = ?1 AND username = ?2"),
        [org, user],
        member_row,
    )
    .optional()
}

/// Every organization `user` belongs to.
pub fn memberships(c: &Connection, user: &str) -> rusqlite::Result<Vec<Member>> {
    c.prepare_cached(&format!(
        "SELECT {MEMBER_COLUMNS} FROM org_members WHERE username = ?1 ORDER BY org"
    ))?
    .query_map([user], member_row)?
    .collect()
}

/// Makes `user` a member of `org` with `role` (or changes the role).
pub fn set_member(
    c: &mut Connection,
    org: &str,
    user: &str,
    role: Access,
    now: i64,
) -> Result<Member, AccountError> {
    let tx = c.transaction()?;
    if self::org(&tx, org)?.is_none() {
        return Err(AccountError::NoOrg(org.into()));
    }
    if self::user(&tx, user)?.is_none() {
        return Err(AccountError::NoUser(user.into()));
    }
    if role != Access::Admin {
        last_admin_check(&tx, org, user)?;
    }
    tx.execute(
        "INSERT INTO org_members (org, username, role, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?4)
         ON CONFLICT (org, username) DO UPDATE SET role = ?3, updated_at = ?4",
        params![org, user, role.as_str(), now],
    )?;
    let m = member(&tx, org, user)?.ok_or_else(|| AccountError::NoUser(user.into()))?;
    tx.commit()?;
    Ok(m)
}

/// Removes `user` from `org`; `false` when it was no member.
pub fn remove_member(c: &mut Connection, org: &str, user: &str) -> Result<bool, AccountError> {
    let tx = c.transaction()?;
    last_admin_check(&tx, org, user)?;
    let n = tx.execute(
        "DELETE FROM org_members WHERE org = ?1 AND username = ?2",
        [org, user],
    )?;
    tx.commit()?;
    Ok(n > 0)
}

/// Refuses to leave `org` without an admin by taking `user`'s role away.
fn last_admin_check(c: &Connection, org: &str, user: &str) -> Result<(), AccountError> {
    let admins: Vec<String> = c
        .prepare("SELECT username FROM org_members WHERE org = ?1 AND role = 'admin'")?
        .query_map([org], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if admins.len() == 1 && admins[0] == user {
        return Err(AccountError::LastAdmin {
            org: org.into(),
            user: user.into(),
        });
    }
    Ok(())
}

/// How long an invitation waits for an answer.
pub const INVITE_SECS: i64 = 7 * 86_400;

/// An invitation to an organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    /// The organization.
    pub org: String,
    /// The user invited.
    pub username: String,
    /// The role they get on accepting.
    pub role: Access,
    /// Who invited them.
    pub invited_by: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds after which it is void.
    pub expires_at: i64,
}

const INVITE_COLUMNS: &str = "org, username, role, invited_by, created_at, expires_at";

fn invite_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Invite> {
    let role: String = r.get(2)?;
    Ok(Invite {
        org: r.get(0)?,
        username: r.get(1)?,
        role: Access::parse(&role).unwrap_or(Access::Read),
        invited_by: r.get(3)?,
        created_at: r.get(4)?,
        expires_at: r.get(5)?,
    })
}

/// Invites `user` to `org` with `role` (again: a new expiry and role).
pub fn invite(
    c: &Connection,
    org: &str,
    user: &str,
    role: Access,
    by: &str,
    now: i64,
) -> Result<Invite, AccountError> {
    if self::org(c, org)?.is_none() {
        return Err(AccountError::NoOrg(org.into()));
    }
    if self::user(c, user)?.is_none() {
        return Err(AccountError::NoUser(user.into()));
    }
    if member(c, org, user)?.is_some() {
        return Err(AccountError::Taken {
            name: user.into(),
            by: "a member already",
        });
    }
    c.execute(
        "INSERT INTO org_invites (org, username, role, invited_by, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (org, username) DO UPDATE SET role = ?3, invited_by = ?4, created_at = ?5,
             expires_at = ?6",
        params![org, user, role.as_str(), by, now, now + INVITE_SECS],
    )?;
    Ok(Invite {
        org: org.into(),
        username: user.into(),
        role,
        invited_by: by.into(),
        created_at: now,
        expires_at: now + INVITE_SECS,
    })
}

/// The live invitations of `org`, or (with `user`) of that user.
pub fn invites(
    c: &Connection,
    org: Option<&str>,
    user: Option<&str>,
    now: i64,
) -> rusqlite::Result<Vec<Invite>> {
    c.prepare(&format!(
        "SELECT {INVITE_COLUMNS} FROM org_invites WHERE expires_at >= ?1
         AND (?2 IS NULL OR org = ?2) AND (?3 IS NULL OR username = ?3) ORDER BY org, username"
    ))?
    .query_map(params![now, org, user], invite_row)?
    .collect()
}

/// Removes `user`'s invitation to `org` (declined or cancelled); `false`
/// when there was none.
pub fn drop_invite(c: &Connection, org: &str, user: &str) -> rusqlite::Result<bool> {
    Ok(c.execute(
        "DELETE FROM org_invites WHERE org = ?1 AND username = ?2",
        [org, user],
    )? > 0)
}

/// `user` accepts the live invitation to `org`: a member with its role.
pub fn accept(
    c: &mut Connection,
    org: &str,
    user: &str,
    now: i64,
) -> Result<Option<Member>, AccountError> {
    let found = invites(c, Some(org), Some(user), now)?.into_iter().next();
    let Some(inv) = found else {
        return Ok(None);
    };
    let m = set_member(c, org, user, inv.role, now)?;
    drop_invite(c, org, user)?;
    Ok(Some(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE tokens (id TEXT, username TEXT, scopes TEXT, created_at INTEGER);
             CREATE TABLE hosted_owners (username TEXT);
             CREATE TABLE hosted_releases (repository TEXT);
             CREATE TABLE audit_log (target TEXT);",
        )
        .unwrap();
        c.execute_batch(SCHEMA).unwrap();
        c
    }

    #[test]
    fn names_are_one_namespace_and_an_org_keeps_an_admin() {
        let mut c = db();
        create_user(&c, "alice", false, 1).unwrap();
        create_user(&c, "bob", false, 1).unwrap();
        assert!(matches!(
            create_user(&c, "Alice", false, 1),
            Err(AccountError::BadName(_))
        ));
        assert!(matches!(
            create_org(&mut c, "alice", None, &[], 1),
            Err(AccountError::Taken { .. })
        ));
        assert!(matches!(
            create_org(&mut c, "acme", None, &["acme".into()], 1),
            Err(AccountError::Taken { .. })
        ));
        assert!(matches!(
            create_org(&mut c, "acme", Some("nobody"), &[], 1),
            Err(AccountError::NoUser(_))
        ));
        assert!(
            org(&c, "acme").unwrap().is_none(),
            "a refused create leaves nothing"
        );
        create_org(&mut c, "acme", Some("alice"), &[], 2).unwrap();
        assert!(matches!(
            create_user(&c, "acme", false, 1),
            Err(AccountError::Taken { .. })
        ));
        // The last admin can neither leave nor be demoted.
        assert!(matches!(
            set_member(&mut c, "acme", "alice", Access::Read, 3),
            Err(AccountError::LastAdmin { .. })
        ));
        assert!(matches!(
            remove_member(&mut c, "acme", "alice"),
            Err(AccountError::LastAdmin { .. })
        ));
        set_member(&mut c, "acme", "bob", Access::Admin, 3).unwrap();
        assert_eq!(
            set_member(&mut c, "acme", "alice", Access::Read, 4)
                .unwrap()
                .role,
            Access::Read
        );
        assert_eq!(memberships(&c, "alice").unwrap()[0].role, Access::Read);
        assert!(remove_member(&mut c, "acme", "alice").unwrap());
        assert!(memberships(&c, "alice").unwrap().is_empty());
        c.execute("INSERT INTO hosted_releases VALUES ('acme')", [])
            .unwrap();
        assert!(matches!(
            delete_org(&mut c, "acme"),
            Err(AccountError::NotEmpty(_))
        ));
        c.execute("DELETE FROM hosted_releases", []).unwrap();
        delete_org(&mut c, "acme").unwrap();
        assert!(orgs(&c).unwrap().is_empty());
    }

    #[test]
    fn a_rename_moves_members_invites_keys_scopes_and_history() {
        let mut c = db();
        create_user(&c, "alice", false, 1).unwrap();
        create_user(&c, "bob", false, 1).unwrap();
        create_org(&mut c, "acme", Some("alice"), &[], 1).unwrap();
        create_org(&mut c, "other", None, &[], 1).unwrap();
        invite(&c, "acme", "bob", Access::Read, "alice", 2).unwrap();
        c.execute_batch(
            r#"INSERT INTO tokens VALUES ('k1', 'acme', '[{"repository":"acme","package":"*","access":"read"}]', 1);
               INSERT INTO tokens VALUES ('k2', 'bob', '[{"repository":"acme","package":"x","access":"read"},{"repository":"acme_two","package":"*","access":"read"}]', 1);
               INSERT INTO audit_log VALUES ('acme'), ('acme/alice'), ('acme_two/x'), ('acmex');"#,
        )
        .unwrap();
        for (new, why) in [
            ("other", "an organization"),
            ("bob", "a user"),
            ("cfg", "a configured repository"),
        ] {
            match check_rename(&c, "acme", new, &["cfg".into()]) {
                Err(AccountError::Taken { by, .. }) => assert_eq!(by, why),
                other => panic!("{new}: {other:?}"),
            }
        }
        assert!(matches!(
            check_rename(&c, "acme", "Bad", &[]),
            Err(AccountError::BadName(_))
        ));
        assert!(matches!(
            check_rename(&c, "nope", "fine", &[]),
            Err(AccountError::NoOrg(_))
        ));
        let tx = c.transaction().unwrap();
        rename_org(&tx, "acme", "team", &[], 5).unwrap();
        tx.commit().unwrap();
        assert!(org(&c, "acme").unwrap().is_none());
        let team = org(&c, "team").unwrap().unwrap();
        assert_eq!((team.created_at, team.updated_at), (1, 5));
        assert_eq!(members(&c, "team").unwrap()[0].username, "alice");
        assert_eq!(invites(&c, Some("team"), None, 3).unwrap().len(), 1);
        let tokens: Vec<(String, String)> = c
            .prepare("SELECT username, scopes FROM tokens ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0).unwrap(), r.get(1).unwrap())))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(tokens[0].0, "team", "the organization's key");
        assert!(tokens[0].1.contains(r#""repository":"team""#), "{tokens:?}");
        assert!(tokens[1].1.contains(r#""repository":"team""#), "{tokens:?}");
        assert!(
            tokens[1].1.contains(r#""repository":"acme_two""#),
            "{tokens:?}"
        );
        let targets: Vec<String> = c
            .prepare("SELECT target FROM audit_log")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(targets, ["team", "team/alice", "acme_two/x", "acmex"]);
        let updated = update_org(&c, "team", Some("billing@example.com"), 6).unwrap();
        assert_eq!(
            updated.billing_email.as_deref(),
            Some("billing@example.com")
        );
        assert!(matches!(
            update_org(&c, "team", Some("nobody"), 7),
            Err(AccountError::BadEmail(_))
        ));
    }

    #[test]
    fn an_invitation_is_accepted_once_and_expires() {
        let mut c = db();
        create_user(&c, "alice", false, 1).unwrap();
        create_user(&c, "bob", false, 1).unwrap();
        create_org(&mut c, "acme", Some("alice"), &[], 1).unwrap();
        assert!(matches!(
            invite(&c, "acme", "alice", Access::Read, "alice", 2),
            Err(AccountError::Taken { .. })
        ));
        invite(&c, "acme", "bob", Access::Write, "alice", 2).unwrap();
        assert_eq!(invites(&c, None, Some("bob"), 3).unwrap().len(), 1);
        assert!(
            invites(&c, None, Some("bob"), 3 + INVITE_SECS)
                .unwrap()
                .is_empty(),
            "expired"
        );
        assert!(
            accept(&mut c, "acme", "bob", 3 + INVITE_SECS)
                .unwrap()
                .is_none()
        );
        assert_eq!(
            accept(&mut c, "acme", "bob", 3).unwrap().unwrap().role,
            Access::Write
        );
        assert!(accept(&mut c, "acme", "bob", 3).unwrap().is_none(), "once");
    }
}
