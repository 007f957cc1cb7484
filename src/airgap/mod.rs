//! Air-gap bundles on disk: `hexmirror bundle export`, `import` and
//! `verify`. The format (manifest, chain, volume layout) is the pure
//! [`crate::bundle`]; this module reads the store, writes and reads the
//! volumes, and publishes the far side's generation.
//!
//! State: the exporter keeps every bundle manifest it wrote and the tree the
//! far side holds after the last one under `DATA_DIR/bundles/export/`; the
//! importer keeps its chain position in the state database, a copy of every
//! bundle manifest it imported under `DATA_DIR/bundles/import/` (audit),
//! and blobs read but not yet published under `DATA_DIR/bundles/staging/`
//! (what makes an interrupted import resume).

mod checks;
mod export;
mod import;
mod volumes;

use std::path::{Path, PathBuf};

pub use export::{ExportOptions, ExportReport, export};
pub use import::{ImportReport, import};
pub use volumes::{VolumeCheck, VolumeReport, verify_dir};

use crate::bundle::{BundleError, TooLarge};

/// Why an export, import or check failed. Nothing was published in any case.
#[derive(Debug, thiserror::Error)]
pub enum AirgapError {
    /// The data directory could not be read or written.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The current generation could not be read or the next one published.
    #[error(transparent)]
    Generation(#[from] crate::store::GenerationError),
    /// The state database.
    #[error(transparent)]
    Db(#[from] crate::store::DbError),
    /// A key file.
    #[error(transparent)]
    Key(#[from] crate::keyfiles::KeyFileError),
    /// A file of the bundle or of the exporter's state.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bundle manifest was refused: signature, consistency or chain.
    #[error("bundle {}: {source}", dir.display())]
    Bundle {
        /// The bundle directory.
        dir: PathBuf,
        /// Why.
        source: BundleError,
    },
    /// A state file that is not what this version writes.
    #[error("{}: {source}; it is hexmirror's own state: restore it from a backup, or start the chain again with `bundle export --full`", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// Nothing to export.
    #[error("nothing is published in {}: run `hexmirror sync` first", .0.display())]
    NothingPublished(PathBuf),
    /// The current manifest is not signed with the configured key.
    #[error(
        "the current generation's manifest is not signed with the configured manifest key (rotated?): let `serve` re-sign it or run `hexmirror sync`, then export"
    )]
    NotSignedByKey,
    /// The output directory already holds a bundle.
    #[error("{} already exists: bundles are never overwritten; choose an empty --out directory", .0.display())]
    Exists(PathBuf),
    /// Not enough free space.
    #[error("{}: {needed} bytes needed, {available} available; free space or choose another directory", dir.display())]
    NoSpace {
        /// Where.
        dir: PathBuf,
        /// Bytes needed.
        needed: u64,
        /// Bytes free.
        available: u64,
    },
    /// A blob does not fit the volume size asked for.
    #[error(transparent)]
    TooLarge(#[from] TooLarge),
    /// Re-export of a bundle the exporter has no record of.
    #[error(
        "this exporter wrote bundles 1 to {last}; there is no bundle {sequence} to write again"
    )]
    NoSuchBundle {
        /// Asked for.
        sequence: u64,
        /// The last one written (0: none).
        last: u64,
    },
    /// Re-export of a bundle whose content left the store.
    #[error(
        "bundle {sequence} cannot be written again: blob {blob} ({paths}) is no longer stored (collected by `gc`); export a new full bundle and import it with `--rebase`"
    )]
    BlobGone {
        /// The bundle.
        sequence: u64,
        /// The blob.
        blob: String,
        /// Where the tree serves it.
        paths: String,
    },
    /// No exporter keys configured on the importing side.
    #[error(
        "no exporter key is configured: set `[import] bundle_keys = [\"/path/to/bundle.pub.pem\"]` (the exporter's `keygen --bundle` writes it)"
    )]
    NoBundleKeys,
    /// Another writer holds the data directory.
    #[error("{}: a sync, publish or import is running; try again when it has finished", .0.display())]
    Locked(PathBuf),
    /// A volume the manifest lists is not there.
    #[error("volume {volume} is missing from {}: carry it again", dir.display())]
    MissingVolume {
        /// The bundle directory.
        dir: PathBuf,
        /// The volume's file name.
        volume: String,
    },
    /// A volume of the wrong size (truncated copy).
    #[error(
        "volume {volume} is {found} bytes, the bundle manifest says {expected}: the copy is incomplete or damaged; carry this volume again"
    )]
    VolumeSize {
        /// The volume.
        volume: String,
        /// Size listed.
        expected: u64,
        /// Size found.
        found: u64,
    },
    /// A volume longer than the manifest lists: something was appended to
    /// it, or another file took its name. Read no further than the listed
    /// size, so such a file costs no more memory or time than the real one.
    #[error(
        "{}: data past the {expected} bytes the bundle manifest lists for this volume: it was appended to or replaced; carry this volume again",
        path.display()
    )]
    TrailingData {
        /// The volume file.
        path: PathBuf,
        /// Size listed.
        expected: u64,
    },
    /// A volume whose bytes are not what the manifest lists.
    #[error(
        "volume {volume} does not match its SHA-256 (found {found}): it is damaged; carry this volume again"
    )]
    VolumeHash {
        /// The volume.
        volume: String,
        /// What it hashes to.
        found: String,
    },
    /// A blob whose bytes do not hash to its name.
    #[error(
        "volume {volume}: {paths} (blob {blob}) does not match its SHA-256 (found {found}): the volume is damaged; carry this volume again"
    )]
    BlobHash {
        /// The volume.
        volume: String,
        /// The blob.
        blob: String,
        /// Where the tree serves it.
        paths: String,
        /// What the bytes hash to.
        found: String,
    },
    /// The far side lacks content the bundle assumes it holds.
    #[error(
        "{path}: this side does not hold its content ({sha256}), which bundle {sequence} assumes arrived with an earlier bundle; this side's tree is not the chain's (restored from a backup?): re-base with a full bundle and `bundle import --rebase`"
    )]
    Lacking {
        /// The file.
        path: String,
        /// Its content.
        sha256: String,
        /// The bundle.
        sequence: u64,
    },
    /// The bundle would overwrite a repository hosted on this side.
    #[error(
        "the bundle carries {path}, but repository {repository} is hosted on this side: rename one of them (a far side's repositories must not share the exporter's names)"
    )]
    Collision {
        /// The file.
        path: String,
        /// The local repository.
        repository: String,
    },
    /// An upstream file inside the bundle failed its upstream check.
    #[error("{path}{}: {reason}", volume.as_ref().map(|v| format!(" (volume {v})")).unwrap_or_default())]
    Upstream {
        /// The file.
        path: String,
        /// The volume that carried it, when this bundle did.
        volume: Option<String>,
        /// What failed.
        reason: Box<UpstreamCheck>,
    },
    /// The exporter's manifest of this tree has expired.
    #[error("bundle {sequence}'s tree expired at {}: the exporter's manifest is stale; ask for a newer bundle or a heartbeat", crate::manifest::rfc3339(*expires_at))]
    Expired {
        /// The bundle.
        sequence: u64,
        /// When it expired.
        expires_at: u64,
    },
    /// Not a bundle directory.
    #[error("{} is not a bundle: it has no {}", dir.display(), crate::bundle::BUNDLE_MANIFEST_FILE)]
    NotABundle {
        /// The directory.
        dir: PathBuf,
    },
}

/// Why an upstream file carried by a bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamCheck {
    /// Signature, origin or format of a registry file.
    #[error("{0} (checked with the [upstream] public key)")]
    Registry(#[from] crate::registry::RegistryError),
    /// A tarball against its record.
    #[error(transparent)]
    Tarball(#[from] crate::tarball::TarballError),
    /// A tarball whose package record is not in the tree.
    #[error("no package record {0} in the tree for this tarball")]
    NoRecord(String),
    /// A tarball of a release its record does not list.
    #[error("its record does not list this release")]
    NotInRecord,
    /// A tarball whose content is not what the record's checksum says.
    #[error("its SHA-256 differs from the outer checksum of its signed record")]
    Checksum,
}

impl AirgapError {
    /// Exit status: 2 for a bundle, configuration or state refused (fix the
    /// input), 1 for local trouble (disk, database; retry).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Store(_) | Self::Generation(_) | Self::Db(_) | Self::Io { .. } => 1,
            Self::Locked(_) | Self::NoSpace { .. } => 1,
            _ => 2,
        }
    }
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> AirgapError + 'a {
    move |source| AirgapError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// `DATA_DIR/bundles`.
fn bundles_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("bundles")
}

/// The file a bundle manifest is kept under (exporter and importer alike).
fn kept_name(sequence: u64) -> String {
    format!("bundle-{sequence:06}.json")
}

/// Free bytes for an unprivileged writer at `dir`, if the OS says.
fn available_space(dir: &Path) -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid C string and a zeroed out-parameter of the right type.
        if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
            return None;
        }
        Some((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = dir;
        None
    }
}

/// Refuses to start when `dir` has less than `needed` bytes free.
fn check_space(dir: &Path, needed: u64) -> Result<(), AirgapError> {
    match available_space(dir) {
        Some(available) if available < needed => Err(AirgapError::NoSpace {
            dir: dir.to_owned(),
            needed,
            available,
        }),
        _ => Ok(()),
    }
}

/// Writes `bytes` to `path` whole or not at all (private name, fsync,
/// rename, directory fsync).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AirgapError> {
    write_whole(path, bytes)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", dir))
}

/// Writes `bytes` to `path` whole or not at all (private name, fsync,
/// rename); the caller fsyncs the directory when the name must survive a
/// power cut too.
fn write_whole(path: &Path, bytes: &[u8]) -> Result<(), AirgapError> {
    write_file(path, bytes, true)
}

/// Flushes everything written under `dir` to disk: one `syncfs` of its file
/// system where there is one, else an fsync of each file and of `dir`.
fn sync_tree(dir: &Path) -> Result<(), AirgapError> {
    let d = std::fs::File::open(dir).map_err(io("open", dir))?;
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a file descriptor this function owns for the call.
        if unsafe { libc::syncfs(d.as_raw_fd()) } == 0 {
            return Ok(());
        }
    }
    for entry in std::fs::read_dir(dir).map_err(io("list", dir))?.flatten() {
        let path = entry.path();
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(io("fsync", &path))?;
    }
    d.sync_all().map_err(io("fsync directory", dir))
}

/// Writes `bytes` under a private name and renames it to `path`; with
/// `durable`, fsyncs it first.
fn write_file(path: &Path, bytes: &[u8], durable: bool) -> Result<(), AirgapError> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("create directory", dir))?;
    let tmp = dir.join(format!(
        ".{}.{}.part",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    })()
    .map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io("write", path)(e)
    })
}

/// A SHA-256 in lowercase hex as bytes (the blob store's name).
fn sha_bytes(hex_sha: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_sha, &mut out).ok()?;
    Some(out)
}

/// The paths `bundle` serves blob `sha256` under, for messages.
fn paths_text(bundle: &crate::bundle::BundleManifest, sha256: &str) -> String {
    let paths = bundle.paths_of(sha256);
    match paths.len() {
        0 => "no path".into(),
        1..=3 => paths.join(", "),
        n => format!("{} and {} more", paths[..3].join(", "), n - 3),
    }
}
