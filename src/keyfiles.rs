//! Key files on disk: secrets are created with mode 0600 and never
//! overwritten, so a mistyped command cannot destroy a key clients trust.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::manifest::{ManifestKey, ManifestKeyError};

/// A key file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file is already there.
    #[error("{} already exists; refusing to overwrite a key (move it away first if you mean to replace it)", .0.display())]
    Exists(PathBuf),
    /// Any other I/O failure.
    #[error("cannot write key file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The key file could not be read.
    #[error("cannot read key file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a key of the expected kind.
    #[error("key file {}: {source}; point the setting at an Ed25519 private key (PKCS#8 PEM)", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why it was refused.
        source: ManifestKeyError,
    },
}

/// Loads the manifest signing key (Ed25519) from `path`, creating it there
/// (mode 0600, whole or not at all) the first time a generation is signed.
pub fn manifest_key(path: &Path) -> Result<ManifestKey, KeyFileError> {
    match std::fs::read_to_string(path) {
        Ok(pem) => ManifestKey::from_pem(&pem).map_err(|source| KeyFileError::Invalid {
            path: path.to_owned(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = ManifestKey::generate();
            write_new_secret(path, key.to_pkcs8_pem().as_bytes())?;
            tracing::info!(path = %path.display(), "created the manifest signing key (Ed25519)");
            Ok(key)
        }
        Err(source) => Err(KeyFileError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Loads an existing Ed25519 private key (the exporter's bundle key);
/// never creates one: a bundle key is made on purpose, with
/// `hexmirror keygen --bundle`.
pub fn bundle_key(path: &Path) -> Result<ManifestKey, KeyFileError> {
    let pem = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    ManifestKey::from_pem(&pem).map_err(|source| KeyFileError::Invalid {
        path: path.to_owned(),
        source,
    })
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyFileError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io)?;
    if path.exists() {
        return Err(KeyFileError::Exists(path.to_owned()));
    }
    // Written whole under a private name, then linked into place: a process
    // killed half-way (a `serve` stopped at start, a full disk) must not leave
    // an empty key file that every later run refuses. link(2), unlike rename,
    // fails when the name exists, so a key is still never overwritten.
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(
        ".{name}.{}-{:016x}.partial",
        std::process::id(),
        fastrand::u64(..)
    ));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(KeyFileError::Exists(path.to_owned()))
        }
        Err(e) => Err(io(e)),
    }
}

/// Creates a secret key file with mode 0600; fails if it exists.
pub fn write_new_secret(path: &Path, bytes: &[u8]) -> Result<(), KeyFileError> {
    write_new(path, bytes, 0o600)
}

/// Creates a public key file with mode 0644; fails if it exists.
pub fn write_new_public(path: &Path, bytes: &[u8]) -> Result<(), KeyFileError> {
    write_new(path, bytes, 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secrets_are_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/key.pem");
        write_new_secret(&path, b"one").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = write_new_secret(&path, b"two").unwrap_err();
        assert!(matches!(err, KeyFileError::Exists(_)), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        // Nothing but the key is left beside it.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("key.pem")]);
    }

    #[test]
    fn a_failed_link_leaves_only_what_was_there() {
        // A dangling symlink under the key's name: the bytes are written to
        // the private name, then linking fails, as a crash in between would
        // leave it: no partial key, no stray secret.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &path).unwrap();
        let err = write_new_secret(&path, b"one").unwrap_err();
        assert!(matches!(err, KeyFileError::Exists(_)), "{err}");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("key.pem")]);
    }
}
