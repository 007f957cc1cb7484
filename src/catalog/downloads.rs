//! Download counts: every tarball served counts for its release, by day.
//!
//! `serve` counts in memory ([`Counter`], sharded so requests rarely share
//! a lock) and a background task writes the counts into the catalog in one
//! transaction every few seconds and at shutdown, off the request path.
//! For a tree served by nginx, `hexmirror downloads import LOG` reads its
//! access log; each line counts once, however often the log is imported.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::Mutex;

use rusqlite::{Connection, Transaction, params};
use sha2::{Digest, Sha256};

/// One release of one repository.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Release {
    /// The repository it is served in.
    pub repository: String,
    /// The package.
    pub name: String,
    /// The version.
    pub version: String,
}

/// Counts of a package, as hex.pm gives them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Since the mirror started counting.
    pub all: u64,
    /// The last 90 days (today included).
    pub recent: u64,
    /// The last 7 days (today included).
    pub week: u64,
    /// Today (UTC).
    pub day: u64,
}

const SHARDS: usize = 16;

/// Counts by day, then by request path.
type Shard = HashMap<u64, HashMap<String, u64>>;

/// In-memory counts of downloads not yet written, by request path and day.
/// A path already counted that day costs a hash, a lock and an add: no
/// allocation on the request path; paths become releases when written.
#[derive(Debug, Default)]
pub struct Counter {
    shards: [Mutex<Shard>; SHARDS],
    hasher: std::collections::hash_map::RandomState,
}

/// Counts taken from a [`Counter`]: (request path, day) and how many.
pub type Taken = Vec<((String, u64), u64)>;

impl Counter {
    fn shard(&self, path: &str) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[(self.hasher.hash_one(path) as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Counts `n` downloads of the tarball at request path `path` on `day`.
    fn add(&self, path: &str, day: u64, n: u64) {
        let mut shard = self.shard(path);
        let by_path = shard.entry(day).or_default();
        match by_path.get_mut(path) {
            Some(count) => *count += n,
            None => {
                by_path.insert(path.to_owned(), n);
            }
        }
    }

    /// Counts one download of the tarball at request path `path` on day
    /// `day` (Unix days).
    pub fn count(&self, path: &str, day: u64) {
        self.add(path, day, 1);
    }

    /// Takes every count so far, leaving none.
    pub fn take(&self) -> Taken {
        let mut out = Vec::new();
        for shard in &self.shards {
            let taken = std::mem::take(&mut *shard.lock().unwrap_or_else(|p| p.into_inner()));
            for (day, by_path) in taken {
                out.extend(by_path.into_iter().map(|(path, n)| ((path, day), n)));
            }
        }
        out
    }

    /// Puts counts back after a failed write, so none is lost.
    pub fn restore(&self, counts: Taken) {
        for ((path, day), n) in counts {
            self.add(&path, day, n);
        }
    }
}

/// The release a tarball request path serves (`/tarballs/NAME-VERSION.tar`
/// or `/repos/REPO/tarballs/...`, percent-encoding allowed), counted under
/// `upstream` when not under `/repos/`. `None` for anything else.
pub fn release_of_path(path: &str, upstream: &str) -> Option<Release> {
    let path = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .ok()?;
    let path = path.split('?').next().unwrap_or(&path);
    let (repository, file) = match path.strip_prefix("/repos/") {
        Some(rest) => {
            let (repo, file) = rest.split_once('/')?;
            (repo.to_owned(), file)
        }
        None => (upstream.to_owned(), path.trim_start_matches('/')),
    };
    let tarball = file.strip_prefix("tarballs/")?.strip_suffix(".tar")?;
    let (name, version) = tarball.split_once('-')?;
    let valid = crate::registry::PackageName::parse(name).is_ok()
        && crate::registry::is_valid_version(version)
        && crate::registry::PackageName::parse(&repository).is_ok();
    valid.then(|| Release {
        repository,
        name: name.to_owned(),
        version: version.to_owned(),
    })
}

/// Adds `n` downloads of `release` on `day`.
pub fn add(tx: &Transaction<'_>, release: &Release, day: u64, n: u64) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO download (repository, name, version, day, count) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (repository, name, version, day) DO UPDATE SET count = count + ?5",
        params![
            release.repository,
            release.name,
            release.version,
            day as i64,
            n as i64
        ],
    )?;
    Ok(())
}

/// Writes `counts` (request paths, as the server counted them) in one
/// transaction; root-level tarballs count under `upstream`.
pub fn write(conn: &mut Connection, counts: &Taken, upstream: &str) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for ((path, day), n) in counts {
        if let Some(release) = release_of_path(path, upstream) {
            add(&tx, &release, *day, *n)?;
        }
    }
    tx.commit()
}

/// Writes `counts` once per `id` (a batch's identity, e.g. the hash of its
/// bucket key): a batch written before counts nothing again, so the one who
/// imports it may crash before deleting it. Returns whether it counted.
pub fn write_once(
    conn: &mut Connection,
    id: &[u8; 32],
    counts: &Taken,
    upstream: &str,
) -> rusqlite::Result<bool> {
    let tx = conn.transaction()?;
    let new = tx.execute(
        "INSERT OR IGNORE INTO download_log_line (hash) VALUES (?1)",
        [&id[..]],
    )? == 1;
    if new {
        for ((path, day), n) in counts {
            if let Some(release) = release_of_path(path, upstream) {
                add(&tx, &release, *day, *n)?;
            }
        }
    }
    tx.commit()?;
    Ok(new)
}

/// The counts of each of `names` in `repository`, on day `today`.
pub fn package_counts(
    conn: &Connection,
    repository: &str,
    names: &[&str],
    today: u64,
) -> rusqlite::Result<HashMap<String, Counts>> {
    counts_of(conn, repository, names, today, None)
}

/// [`package_counts`] over the releases a version-limited reader may see
/// only: the others' downloads are theirs to know.
pub fn visible_package_counts(
    conn: &Connection,
    repository: &str,
    names: &[&str],
    today: u64,
    visible: &super::Visible,
) -> rusqlite::Result<HashMap<String, Counts>> {
    counts_of(conn, repository, names, today, Some(visible))
}

fn counts_of(
    conn: &Connection,
    repository: &str,
    names: &[&str],
    today: u64,
    visible: Option<&super::Visible>,
) -> rusqlite::Result<HashMap<String, Counts>> {
    let mut stmt = conn.prepare_cached(
        "SELECT version, coalesce(sum(count), 0),
                coalesce(sum(CASE WHEN day > ?3 - 90 THEN count END), 0),
                coalesce(sum(CASE WHEN day > ?3 - 7 THEN count END), 0),
                coalesce(sum(CASE WHEN day = ?3 THEN count END), 0)
         FROM download WHERE repository = ?1 AND name = ?2 GROUP BY version",
    )?;
    let mut out = HashMap::new();
    for name in names {
        let mut counts = Counts::default();
        let rows = stmt.query_map(params![repository, name, today as i64], |r| {
            Ok((
                r.get::<_, String>(0)?,
                [r.get::<_, i64>(1)?, r.get(2)?, r.get(3)?, r.get(4)?].map(|n| n.max(0) as u64),
            ))
        })?;
        for row in rows {
            let (version, [all, recent, week, day]) = row?;
            if visible.is_some_and(|v| !v(name, &version)) {
                continue;
            }
            counts.all += all;
            counts.recent += recent;
            counts.week += week;
            counts.day += day;
        }
        out.insert((*name).to_owned(), counts);
    }
    Ok(out)
}

/// All downloads of one release.
pub fn release_count(conn: &Connection, release: &Release) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT coalesce(sum(count), 0) FROM download
         WHERE repository = ?1 AND name = ?2 AND version = ?3",
        params![release.repository, release.name, release.version],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n.max(0) as u64)
}

/// What `downloads import` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Lines read.
    pub lines: u64,
    /// Tarball downloads counted now.
    pub counted: u64,
    /// Tarball downloads counted by an earlier import of the same lines.
    pub already: u64,
    /// Lines that are not access-log lines (skipped).
    pub unreadable: u64,
}

/// One download in an access-log line: the release and the Unix day.
/// `None` for anything else (other files, other methods or statuses).
pub fn parse_log_line(line: &str, upstream: &str) -> Option<Option<(Release, u64)>> {
    // Combined format: IP - USER [10/Oct/2000:13:55:36 -0700] "GET /path HTTP/1.1" 200 ...
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    let day = log_day(&line[open + 1..close])?;
    let rest = &line[close + 1..];
    let q1 = rest.find('"')?;
    let q2 = q1 + 1 + rest[q1 + 1..].find('"')?;
    let mut request = rest[q1 + 1..q2].split(' ');
    let (method, target) = (request.next()?, request.next()?);
    let status = rest[q2 + 1..].split_whitespace().next()?;
    if method != "GET" || status != "200" {
        return Some(None);
    }
    if !target.contains("/tarballs/") {
        return Some(None);
    }
    Some(release_of_path(target, upstream).map(|release| (release, day)))
}

/// The Unix day of an access-log time (`10/Oct/2000:13:55:36 -0700`).
fn log_day(t: &str) -> Option<u64> {
    let (stamp, zone) = t.split_once(' ')?;
    let mut parts = stamp.splitn(4, [':', '/']);
    let (d, mon, y) = (parts.next()?, parts.next()?, parts.next()?);
    let time = parts.next()?;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = MONTHS.iter().position(|x| *x == mon)? + 1;
    let iso = format!("{y}-{m:02}-{d:0>2}T{time}Z");
    let local = super::query::parse_utc(&iso)? as i64;
    let sign = if zone.starts_with('-') { -1 } else { 1 };
    let digits = zone.trim_start_matches(['+', '-']);
    let (hh, mm) = (
        digits.get(..2)?.parse::<i64>().ok()?,
        digits.get(2..4)?.parse::<i64>().ok()?,
    );
    let utc = local - sign * (hh * 3600 + mm * 60);
    u64::try_from(utc).ok().map(|s| s / 86_400)
}

/// Downloads counted per transaction: a log of any size is read in bounded
/// memory, and a stop part-way keeps what was counted (each line once, so
/// running the import again counts only the rest).
const IMPORT_BATCH: usize = 10_000;

/// The longest access-log line read; longer ones are unreadable (nginx
/// writes far shorter, and a line is held in memory whole).
const MAX_LOG_LINE: usize = 64 * 1024;

/// Counts the tarball downloads in `log` (an nginx access log in the
/// combined format). Each line counts once: its hash is remembered.
pub fn import_log(
    conn: &mut Connection,
    mut log: impl std::io::BufRead,
    upstream: &str,
) -> Result<ImportReport, LogImportError> {
    let mut report = ImportReport::default();
    let mut found: Vec<((Release, u64), [u8; 32])> = Vec::with_capacity(IMPORT_BATCH);
    use std::io::{BufRead, Read};
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut log)
            .take(MAX_LOG_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(LogImportError::Read)?;
        if read == 0 {
            break;
        }
        report.lines += 1;
        if line.len() > MAX_LOG_LINE && line.last() != Some(&b'\n') {
            // Skip the rest of the overlong line.
            report.unreadable += 1;
            skip_line(&mut log).map_err(LogImportError::Read)?;
            continue;
        }
        let text = std::str::from_utf8(&line).map(|t| t.trim_end_matches(['\n', '\r']));
        match text
            .ok()
            .and_then(|t| parse_log_line(t, upstream).map(|d| (t, d)))
        {
            None => report.unreadable += 1,
            Some((_, None)) => {}
            Some((t, Some(download))) => {
                found.push((download, Sha256::digest(t.as_bytes()).into()));
                if found.len() == IMPORT_BATCH {
                    count_batch(conn, &mut found, &mut report)?;
                }
            }
        }
    }
    count_batch(conn, &mut found, &mut report)?;
    Ok(report)
}

/// Reads up to and including the next newline, keeping none of it.
fn skip_line(log: &mut impl std::io::BufRead) -> std::io::Result<()> {
    loop {
        let buf = log.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|b| *b == b'\n') {
            Some(at) => {
                log.consume(at + 1);
                return Ok(());
            }
            None => {
                let n = buf.len();
                log.consume(n);
            }
        }
    }
}

/// Counts `found` (emptied) in one transaction: each line not seen before.
fn count_batch(
    conn: &mut Connection,
    found: &mut Vec<((Release, u64), [u8; 32])>,
    report: &mut ImportReport,
) -> Result<(), LogImportError> {
    let tx = conn.transaction().map_err(LogImportError::Db)?;
    let mut counts: BTreeMap<(Release, u64), u64> = BTreeMap::new();
    {
        let mut remember = tx
            .prepare_cached("INSERT OR IGNORE INTO download_log_line (hash) VALUES (?1)")
            .map_err(LogImportError::Db)?;
        for (download, hash) in found.drain(..) {
            if remember.execute([&hash[..]]).map_err(LogImportError::Db)? == 0 {
                report.already += 1;
            } else {
                report.counted += 1;
                *counts.entry(download).or_insert(0) += 1;
            }
        }
    }
    for ((release, day), n) in &counts {
        add(&tx, release, *day, *n).map_err(LogImportError::Db)?;
    }
    tx.commit().map_err(LogImportError::Db)
}

/// Why a log import stopped (what was counted before stays counted).
#[derive(Debug, thiserror::Error)]
pub enum LogImportError {
    /// The log could not be read.
    #[error("reading the log: {0}")]
    Read(std::io::Error),
    /// The catalog database.
    #[error("catalog: {0}")]
    Db(rusqlite::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(name: &str, version: &str) -> Release {
        Release {
            repository: "hexpm".into(),
            name: name.into(),
            version: version.into(),
        }
    }

    #[test]
    fn counts_reach_the_file_by_day_and_windows() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = super::super::Catalog::open(dir.path()).unwrap();
        let counter = Counter::default();
        let today = 20_000;
        for _ in 0..3 {
            counter.count("/tarballs/a-1.0.0.tar", today);
        }
        counter.count("/tarballs/a-0.9.0.tar", today - 3);
        counter.count("/tarballs/a-0.9.0.tar", today - 30);
        counter.count("/tarballs/a-0.9.0.tar", today - 400);
        counter.count("/tarballs/b-1.0.0.tar", today);
        // Another repository's tarball, and a percent-encoded version.
        counter.count("/repos/acme/tarballs/a-1.0.0.tar", today);
        counter.count("/tarballs/c-1.0.0%2Bbuild.tar", today);
        counter.count("/tarballs/not-a-release", today);
        let taken = counter.take();
        assert!(counter.take().is_empty(), "taken once");
        catalog
            .call_blocking(|c| write(c, &taken, "hexpm"))
            .unwrap();
        // A failed write puts its counts back: nothing is lost.
        counter.restore(vec![(("/tarballs/a-1.0.0.tar".to_owned(), today), 2)]);
        catalog
            .call_blocking(|c| write(c, &counter.take(), "hexpm"))
            .unwrap();
        let counts = catalog
            .call_blocking(|c| package_counts(c, "hexpm", &["a", "b", "c", "d"], today))
            .unwrap();
        assert_eq!(
            counts["a"],
            Counts {
                all: 8,
                recent: 7,
                week: 6,
                day: 5
            }
        );
        assert_eq!((counts["b"].all, counts["c"].all), (1, 1));
        assert_eq!(counts["d"], Counts::default());
        let acme = catalog
            .call_blocking(|c| package_counts(c, "acme", &["a"], today))
            .unwrap();
        assert_eq!(acme["a"].all, 1);
        // A reader who may see only 1.x counts a-1.0.0's 5, not a-0.9.0's 3.
        let ones: crate::catalog::Visible =
            std::sync::Arc::new(|_: &str, v: &str| v.starts_with("1."));
        let seen = catalog
            .call_blocking(|c| visible_package_counts(c, "hexpm", &["a", "b"], today, &ones))
            .unwrap();
        let five = Counts {
            all: 5,
            recent: 5,
            week: 5,
            day: 5,
        };
        assert_eq!((seen["a"], seen["b"].all), (five, 1));
        let n = catalog
            .call_blocking(|c| release_count(c, &rel("a", "0.9.0")))
            .unwrap();
        assert_eq!(n, 3);
        let plus = catalog
            .call_blocking(|c| release_count(c, &rel("c", "1.0.0+build")))
            .unwrap();
        assert_eq!(plus, 1);
    }

    #[test]
    fn access_log_lines() {
        let line = |req: &str, status: u16| {
            format!(
                r#"10.0.0.1 - - [04/Dec/2026:23:30:00 -0200] "{req}" {status} 1234 "-" "rebar3""#
            )
        };
        let day_utc = |y: &str| super::super::query::parse_utc(y).unwrap() / 86_400;
        // 23:30 at -02:00 is 01:30 UTC the next day.
        assert_eq!(
            parse_log_line(
                &line("GET /tarballs/jason-1.4.4.tar HTTP/1.1", 200),
                "hexpm"
            ),
            Some(Some((
                rel("jason", "1.4.4"),
                day_utc("2026-12-05T01:30:00Z")
            )))
        );
        let (private, _) = parse_log_line(
            &line("GET /repos/acme/tarballs/x-1.0.0-rc.1.tar HTTP/2.0", 200),
            "hexpm",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (private.repository.as_str(), private.version.as_str()),
            ("acme", "1.0.0-rc.1")
        );
        for (req, status) in [
            ("GET /tarballs/jason-1.4.4.tar HTTP/1.1", 304),
            ("HEAD /tarballs/jason-1.4.4.tar HTTP/1.1", 200),
            ("GET /packages/jason HTTP/1.1", 200),
            ("GET /tarballs/../x-1.0.0.tar HTTP/1.1", 200),
        ] {
            assert_eq!(
                parse_log_line(&line(req, status), "hexpm"),
                Some(None),
                "{req} {status}"
            );
        }
        assert_eq!(parse_log_line("not a log line", "hexpm"), None);
        // Regression: a year past i64's days overflowed; it is unreadable.
        let huge = r#"1.2.3.4 - - [04/Dec/9223372036854775807:23:30:00 -0200] "GET /tarballs/a-1.0.0.tar HTTP/1.1" 200 1"#;
        assert_eq!(parse_log_line(huge, "hexpm"), None);
        let zone = r#"1.2.3.4 - - [01/Jan/1970:00:00:00 +9999] "GET /tarballs/a-1.0.0.tar HTTP/1.1" 200 1"#;
        assert_eq!(parse_log_line(zone, "hexpm"), None);
    }

    #[test]
    fn a_log_imported_twice_counts_once() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = super::super::Catalog::open(dir.path()).unwrap();
        let log = "\
1.1.1.1 - - [04/Dec/2026:10:00:00 +0000] \"GET /tarballs/a-1.0.0.tar HTTP/1.1\" 200 10 \"-\" \"mix\"
1.1.1.1 - - [04/Dec/2026:10:00:01 +0000] \"GET /tarballs/a-1.0.0.tar HTTP/1.1\" 200 10 \"-\" \"mix\"
1.1.1.1 - - [04/Dec/2026:10:00:02 +0000] \"GET /packages/a HTTP/1.1\" 200 10 \"-\" \"mix\"
garbage
";
        let first = catalog
            .call_blocking(|c| Ok(import_log(c, log.as_bytes(), "hexpm").unwrap()))
            .unwrap();
        assert_eq!(
            first,
            ImportReport {
                lines: 4,
                counted: 2,
                already: 0,
                unreadable: 1
            }
        );
        let again = catalog
            .call_blocking(|c| Ok(import_log(c, log.as_bytes(), "hexpm").unwrap()))
            .unwrap();
        assert_eq!((again.counted, again.already), (0, 2));
        let n = catalog
            .call_blocking(|c| release_count(c, &rel("a", "1.0.0")))
            .unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn a_long_log_counts_in_batches_and_skips_overlong_lines() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = super::super::Catalog::open(dir.path()).unwrap();
        let mut log = String::new();
        for second in 0..IMPORT_BATCH + 5 {
            log.push_str(&format!(
                "1.1.1.1 - - [04/Dec/2026:10:00:00 +0000] \"GET /tarballs/a-1.0.0.tar?{second} \
                 HTTP/1.1\" 200 10 \"-\" \"mix\"\n"
            ));
        }
        log.push_str(&format!("{}\n", "x".repeat(MAX_LOG_LINE * 2)));
        log.push_str(
            "1.1.1.1 - - [04/Dec/2026:10:00:00 +0000] \"GET /tarballs/b-1.0.0.tar HTTP/1.1\" 200 1\n",
        );
        let report = catalog
            .call_blocking(|c| Ok(import_log(c, log.as_bytes(), "hexpm").unwrap()))
            .unwrap();
        assert_eq!(
            (report.lines, report.counted, report.unreadable),
            (IMPORT_BATCH as u64 + 7, IMPORT_BATCH as u64 + 6, 1)
        );
        let b = catalog
            .call_blocking(|c| release_count(c, &rel("b", "1.0.0")))
            .unwrap();
        assert_eq!(b, 1);
    }
}
