//! What the API reads out of the catalog: one package with its releases,
//! a search page, the dependents of a package.

use rusqlite::types::Value as Sql;
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::query::{PAGE_SIZE, Query, Sort, like_escape};
use crate::index::hosted::cmp_versions;

/// A package and its releases, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct PackageView {
    /// The repository it is served in.
    pub repository: String,
    /// Its name.
    pub name: String,
    /// The upstream's `updated_at` (Unix seconds), if known.
    pub updated_at: Option<u64>,
    /// Local: when this mirror first saw it (Unix seconds).
    pub first_seen: u64,
    /// Releases, newest first.
    pub releases: Vec<ReleaseView>,
}

/// One release.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleaseView {
    /// Its version.
    pub version: String,
    /// SHA-256 of the tarball (hex), from the signed record.
    pub outer_checksum: Option<String>,
    /// SHA-256 of the tarball's contents (hex), from the signed record.
    pub inner_checksum: String,
    /// Retirement: reason and message.
    pub retired: Option<(String, Option<String>)>,
    /// The tarball's metadata, once the mirror holds the tarball.
    pub meta: Option<Value>,
    /// Whether docs are held.
    pub has_docs: bool,
    /// Local: when this mirror first saw it (Unix seconds).
    pub first_seen: u64,
    /// When the upstream published it, if its signed record says.
    pub published_at: Option<u64>,
    /// Its dependencies.
    pub requirements: Vec<Requirement>,
}

/// One dependency of a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The dependency's name.
    pub name: String,
    /// Its repository, when not the release's own.
    pub repository: Option<String>,
    /// The version requirement.
    pub requirement: String,
    /// Optional dependency.
    pub optional: bool,
    /// OTP application name, when not the package name.
    pub app: Option<String>,
}

/// A package depending on another, through which releases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependent {
    /// Its repository.
    pub repository: String,
    /// Its name.
    pub name: String,
    /// Its releases that depend on the package, newest first.
    pub versions: Vec<String>,
}

impl PackageView {
    /// The newest release's metadata that has any (a proxied record may
    /// come before its tarballs).
    pub fn meta(&self) -> Option<&Value> {
        self.releases.iter().find_map(|r| r.meta.as_ref())
    }
}

fn load(conn: &Connection, id: i64) -> rusqlite::Result<Option<PackageView>> {
    let head = conn
        .query_row(
            "SELECT repository, name, updated_at, first_seen FROM package WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            },
        )
        .optional()?;
    let Some((repository, name, updated_at, first_seen)) = head else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT r.version, r.outer_checksum, r.inner_checksum, r.retired_reason,
                r.retired_message, m.meta, r.has_docs, r.first_seen, r.published_at
         FROM release r LEFT JOIN tarball_meta m ON m.sha256 = r.outer_checksum
         WHERE r.package_id = ?1",
    )?;
    let mut releases: Vec<ReleaseView> = stmt
        .query_map([id], |r| {
            let reason: Option<String> = r.get(3)?;
            let message: Option<String> = r.get(4)?;
            let meta: Option<String> = r.get(5)?;
            Ok(ReleaseView {
                version: r.get(0)?,
                outer_checksum: r.get(1)?,
                inner_checksum: r.get(2)?,
                retired: reason.map(|reason| (reason, message)),
                meta: meta.and_then(|m| serde_json::from_str(&m).ok()),
                has_docs: r.get(6)?,
                first_seen: r.get::<_, i64>(7)?.max(0) as u64,
                published_at: r.get::<_, Option<i64>>(8)?.map(|t| t.max(0) as u64),
                requirements: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut stmt = conn.prepare_cached(
        "SELECT version, name, repository, requirement, optional, app
         FROM requirement WHERE package_id = ?1 ORDER BY rowid",
    )?;
    let rows = stmt.query_map([id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            Requirement {
                name: r.get(1)?,
                repository: r.get(2)?,
                requirement: r.get(3)?,
                optional: r.get(4)?,
                app: r.get(5)?,
            },
        ))
    })?;
    for row in rows {
        let (version, req) = row?;
        if let Some(rel) = releases.iter_mut().find(|r| r.version == version) {
            rel.requirements.push(req);
        }
    }
    releases.sort_by(|a, b| cmp_versions(&b.version, &a.version));
    Ok(Some(PackageView {
        repository,
        name,
        updated_at: updated_at.map(|u| u.max(0) as u64),
        first_seen: first_seen.max(0) as u64,
        releases,
    }))
}

/// Mirrored package `name` of the upstream `repository` (a hosted one is
/// read from its rows, not from here).
pub fn package(
    conn: &Connection,
    repository: &str,
    name: &str,
) -> rusqlite::Result<Option<PackageView>> {
    let id: Option<i64> = conn
        .query_row(
            "SELECT id FROM package WHERE repository = ?1 AND name = ?2 AND hosted = 0",
            params![repository, name],
            |r| r.get(0),
        )
        .optional()?;
    match id {
        Some(id) => load(conn, id),
        None => Ok(None),
    }
}

/// An FTS5 query matching any of `words` in the description column.
fn fts_any(words: &[String]) -> String {
    let terms: Vec<String> = words.iter().map(|w| format!("\"{w}\"")).collect();
    format!("description : ({})", terms.join(" OR "))
}

/// Which releases a reader may see, when not all of them (a version-limited
/// key): `(package, version) -> may read`.
pub type Visible = std::sync::Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// The SQL function [`search`] registers for a [`Visible`] while it runs.
const VISIBLE_FN: &str = "hm_visible";

/// Keeps [`VISIBLE_FN`] registered on a connection for as long as it lives.
struct Registered<'c>(&'c Connection);

impl<'c> Registered<'c> {
    fn new(conn: &'c Connection, visible: Visible) -> rusqlite::Result<Self> {
        use rusqlite::functions::FunctionFlags;
        conn.create_scalar_function(
            VISIBLE_FN,
            2,
            FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
            move |ctx| {
                let (package, version): (String, String) = (ctx.get(0)?, ctx.get(1)?);
                Ok(visible(&package, &version))
            },
        )?;
        Ok(Self(conn))
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        // The connection is shared: no later query may see this reader's
        // function. Removing one that exists does not fail.
        let _ = self.0.remove_function(VISIBLE_FN, 2);
    }
}

/// Page `page` (from 1) of `per_page` (at most [`PAGE_SIZE`]) packages of
/// `view` that match `q`.
///
/// With `visible`, what a package matches and sorts by comes from the
/// releases the reader may see only, so a hidden release's description,
/// requirements, build tools, metadata, times and downloads decide nothing.
/// The description is indexed for the newest release, so it counts only when
/// every release is visible: a miss, never a leak.
pub fn search(
    conn: &Connection,
    view: &View,
    q: &Query,
    sort: Sort,
    page: usize,
    per_page: usize,
    visible: Option<Visible>,
) -> rusqlite::Result<Vec<PackageView>> {
    let per_page = per_page.clamp(1, PAGE_SIZE);
    let limited = visible.is_some();
    let _registered = visible.map(|v| Registered::new(conn, v)).transpose()?;
    // Conditions on release rows, empty for a reader who sees them all.
    let seen = |version: &str| {
        if limited {
            format!(" AND {VISIBLE_FN}(p.name, {version})")
        } else {
            String::new()
        }
    };
    // What the reader sees of the package: that it has a release, whether
    // all of them (the description is the newest one's), and its update and
    // first-seen times.
    let (shown, all_seen, updated, inserted) = if limited {
        (
            format!(
                " AND EXISTS (SELECT 1 FROM release v WHERE v.package_id = p.id{})",
                seen("v.version")
            ),
            format!(
                " AND NOT EXISTS (SELECT 1 FROM release v WHERE v.package_id = p.id \
                 AND NOT {VISIBLE_FN}(p.name, v.version))"
            ),
            format!(
                "(SELECT max(coalesce(v.published_at, v.first_seen)) FROM release v \
                 WHERE v.package_id = p.id{})",
                seen("v.version")
            ),
            format!(
                "(SELECT min(v.first_seen) FROM release v WHERE v.package_id = p.id{})",
                seen("v.version")
            ),
        )
    } else {
        let none = String::new;
        (
            none(),
            none(),
            "p.updated_at".to_owned(),
            "p.first_seen".to_owned(),
        )
    };
    let mut args: Vec<Sql> = Vec::new();
    let mut sql = format!(
        "SELECT p.id FROM package p WHERE {}{shown}",
        view.condition(&mut args)
    );
    if !q.words.is_empty() {
        // hex.pm: the name contains the text (from three characters on,
        // else equals it), or the description has any of its words.
        let text = q.text();
        let like = if text.chars().count() >= 3 {
            format!("%{}%", like_escape(&text))
        } else {
            like_escape(&text)
        };
        sql.push_str(&format!(
            " AND (p.name LIKE ? ESCAPE '\\' OR (p.id IN \
             (SELECT rowid FROM package_text WHERE package_text MATCH ?){all_seen}))"
        ));
        args.push(Sql::Text(like));
        args.push(Sql::Text(fts_any(&q.words)));
    }
    if let Some(n) = &q.name {
        sql.push_str(" AND p.name LIKE ? ESCAPE '\\'");
        args.push(Sql::Text(n.like()));
        if let Some(r) = &n.repository {
            sql.push_str(" AND p.repository = ?");
            args.push(Sql::Text(r.clone()));
        }
    }
    if !q.description.is_empty() {
        sql.push_str(&format!(
            " AND p.id IN (SELECT rowid FROM package_text WHERE package_text MATCH ?){all_seen}"
        ));
        args.push(Sql::Text(fts_any(&q.description)));
    }
    if let Some(d) = &q.depends {
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM requirement q WHERE q.package_id = p.id AND q.name = ?{}",
            seen("q.version")
        ));
        args.push(Sql::Text(d.name.clone()));
        if let Some(r) = &d.repository {
            sql.push_str(" AND coalesce(q.repository, p.repository) = ?");
            args.push(Sql::Text(r.clone()));
        }
        sql.push(')');
    }
    if let Some(tool) = &q.build_tool {
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM release x JOIN tarball_meta m ON m.sha256 = x.outer_checksum, \
             json_each(m.meta, '$.build_tools') t WHERE x.package_id = p.id AND t.value = ?{})",
            seen("x.version")
        ));
        args.push(Sql::Text(tool.clone()));
    }
    if let Some(after) = q.updated_after {
        sql.push_str(&format!(" AND {updated} > ?"));
        args.push(Sql::Integer(after as i64));
    }
    if let Some((keys, value)) = &q.extra {
        // JSON path of quoted keys, so any key text is a literal.
        let path: String = keys
            .iter()
            .map(|k| format!(".\"{}\"", k.replace('"', "")))
            .collect();
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM release x JOIN tarball_meta m ON m.sha256 = x.outer_checksum \
             WHERE x.package_id = p.id AND CAST(json_extract(m.meta, ?) AS TEXT) = ?{})",
            seen("x.version")
        ));
        args.push(Sql::Text(format!("$.extra{path}")));
        args.push(Sql::Text(value.clone()));
    }
    let counted = seen("d.version");
    sql.push_str(&match sort {
        Sort::Name => " ORDER BY p.name, p.repository".to_owned(),
        Sort::Downloads => format!(
            " ORDER BY (SELECT coalesce(sum(d.count), 0) FROM download d \
             WHERE d.repository = p.repository AND d.name = p.name{counted}) DESC, p.name"
        ),
        Sort::RecentDownloads => format!(
            " ORDER BY (SELECT coalesce(sum(d.count), 0) FROM download d \
             WHERE d.repository = p.repository AND d.name = p.name \
             AND d.day > CAST(strftime('%s', 'now') AS INTEGER) / 86400 - 90{counted}) DESC, p.name"
        ),
        Sort::InsertedAt => format!(" ORDER BY {inserted} DESC, p.name"),
        Sort::UpdatedAt => format!(" ORDER BY {updated} IS NULL, {updated} DESC, p.name"),
    });
    sql.push_str(" LIMIT ? OFFSET ?");
    args.push(Sql::Integer(per_page as i64));
    args.push(Sql::Integer(
        (page.max(1) - 1)
            .saturating_mul(per_page)
            .min(i64::MAX as usize) as i64,
    ));
    let ids: Vec<i64> = conn
        .prepare(&sql)?
        .query_map(rusqlite::params_from_iter(args), |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.extend(load(conn, id)?);
    }
    Ok(out)
}

/// The packages of `view` depending on `repository`/`name`.
pub fn dependents(
    conn: &Connection,
    view: &View,
    repository: &str,
    name: &str,
) -> rusqlite::Result<Vec<Dependent>> {
    let mut args = vec![Sql::Text(name.to_owned()), Sql::Text(repository.to_owned())];
    let sql = format!(
        "SELECT p.repository, p.name, q.version FROM requirement q JOIN package p ON p.id = q.package_id
         WHERE q.name = ? AND coalesce(q.repository, p.repository) = ? AND {}
         ORDER BY p.name, p.repository",
        view.condition(&mut args)
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut out: Vec<Dependent> = Vec::new();
    for row in rows {
        let (repo, pkg, version) = row?;
        match out.last_mut() {
            Some(d) if d.repository == repo && d.name == pkg => d.versions.push(version),
            _ => out.push(Dependent {
                repository: repo,
                name: pkg,
                versions: vec![version],
            }),
        }
    }
    for d in &mut out {
        d.versions.sort_by(|a, b| cmp_versions(b, a));
    }
    Ok(out)
}

/// Which packages a read covers: what a client resolving from one
/// repository sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    /// The mirror of the upstream (its repository name).
    Mirror(String),
    /// A repository of ours: its hosted packages, and the upstream's
    /// packages its curated tree serves (the catalog's `member` rows).
    Ours {
        /// Our repository.
        repository: String,
        /// The upstream's repository name.
        upstream: String,
    },
}

impl View {
    /// The SQL condition on `package p` for this view, its values pushed
    /// onto `args`.
    fn condition(&self, args: &mut Vec<Sql>) -> &'static str {
        match self {
            Self::Mirror(upstream) => {
                args.push(Sql::Text(upstream.clone()));
                "(p.hosted = 0 AND p.repository = ?)"
            }
            // A hosted package takes its name in the repository: the
            // upstream's of that name is not served there (it is reserved).
            Self::Ours {
                repository,
                upstream,
            } => {
                args.push(Sql::Text(repository.clone()));
                args.push(Sql::Text(upstream.clone()));
                args.push(Sql::Text(repository.clone()));
                args.push(Sql::Text(repository.clone()));
                "((p.hosted = 1 AND p.repository = ?) OR (p.hosted = 0 AND p.repository = ? \
                 AND p.name IN (SELECT m.name FROM member m WHERE m.repository = ?) \
                 AND p.name NOT IN (SELECT h.name FROM package h WHERE h.hosted = 1 \
                 AND h.repository = ?)))"
            }
        }
    }
}

/// Figures of one repository for `/api/stats`.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// Packages.
    pub packages: u64,
    /// Releases.
    pub releases: u64,
    /// The newest releases: (name, version, published_at, first_seen).
    pub newest: Vec<(String, String, Option<u64>, u64)>,
    /// The most recently updated packages: (name, updated_at).
    pub updated: Vec<(String, u64)>,
    /// The most downloaded packages: (name, all downloads).
    pub most_downloaded: Vec<(String, u64)>,
}

/// The figures of `repository`, with `top` entries per list.
pub fn stats(conn: &Connection, repository: &str, top: usize) -> rusqlite::Result<Stats> {
    let (packages, releases): (i64, i64) = conn.query_row(
        "SELECT (SELECT count(*) FROM package WHERE repository = ?1 AND hosted = 0),
                (SELECT count(*) FROM release r JOIN package p ON p.id = r.package_id
                 WHERE p.repository = ?1 AND p.hosted = 0)",
        [repository],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let top = top as i64;
    let newest = conn
        .prepare(
            "SELECT p.name, r.version, r.published_at, r.first_seen
             FROM release r JOIN package p ON p.id = r.package_id
             WHERE p.repository = ?1 AND p.hosted = 0
             ORDER BY coalesce(r.published_at, r.first_seen) DESC, p.name LIMIT ?2",
        )?
        .query_map(params![repository, top], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get::<_, Option<i64>>(2)?.map(|t| t.max(0) as u64),
                r.get::<_, i64>(3)?.max(0) as u64,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let updated = conn
        .prepare(
            "SELECT name, updated_at FROM package
             WHERE repository = ?1 AND hosted = 0 AND updated_at IS NOT NULL
             ORDER BY updated_at DESC, name LIMIT ?2",
        )?
        .query_map(params![repository, top], |r| {
            Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let most_downloaded = conn
        .prepare(
            "SELECT name, sum(count) AS n FROM download WHERE repository = ?1
             GROUP BY name ORDER BY n DESC, name LIMIT ?2",
        )?
        .query_map(params![repository, top], |r| {
            Ok((r.get(0)?, r.get::<_, i64>(1)?.max(0) as u64))
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Stats {
        packages: packages.max(0) as u64,
        releases: releases.max(0) as u64,
        newest,
        updated,
        most_downloaded,
    })
}
