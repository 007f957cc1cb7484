//! Key files on disk: secrets are created with mode 0600 and never
//! overwritten, so a mistyped command cannot destroy a key clients trust.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

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
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyFileError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => KeyFileError::Exists(path.to_owned()),
            _ => io(e),
        })?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
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
    }
}
