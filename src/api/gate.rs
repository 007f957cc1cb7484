//! The read gate of private repositories: who may read `/repos/NAME/...`,
//! and the filtered index files a version-limited token gets instead of the
//! full ones (re-signed with our key, cached per generation and scopes, so
//! signing happens once per combination, off the async threads).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::http::header::HeaderMap;
use axum::response::Response;
use prost::Message;

use super::ApiState;
use super::wire::{Format, Reply};
use crate::auth::{self, Access, Scope};
use crate::registry::{self, proto};

/// Filtered files kept at most; the cache is cleared when it is full.
const MAX_CACHED: usize = 1024;

/// What the gate decided for one request.
#[derive(Debug)]
pub enum Gate {
    /// Serve the file as it is.
    Open,
    /// Serve these bytes instead (a filtered, re-signed index file).
    Filtered(Arc<Vec<u8>>),
    /// Answer with this (401, 403, 404, 429).
    Refused(Response),
}

/// Filtered index files by (generation, scopes, path).
#[derive(Debug, Default)]
pub(super) struct FilterCache(Mutex<HashMap<FilterKey, Arc<Vec<u8>>>>);

/// (generation directory, inode of its manifest delta (0: none), scopes as
/// JSON, file path). A hosted change patches the generation in place and
/// renames a new delta in, so the inode tells patched states apart.
type FilterKey = (PathBuf, u64, String, PathBuf);

impl ApiState {
    /// Decides a read of `relative` (a path under the served `root`) in the
    /// private repository `repo`.
    pub async fn gate(
        self: &Arc<Self>,
        root: &Path,
        repo: &str,
        relative: &Path,
        headers: &HeaderMap,
        client: Option<IpAddr>,
    ) -> Gate {
        let format = Format::from_headers(headers);
        let refuse = |r: Reply| Gate::Refused(r.render(format));
        let token = match self.authenticate(headers, client).await {
            Ok(Some(t)) => t,
            Ok(None) => {
                return refuse(Reply::error(
                    StatusCode::UNAUTHORIZED,
                    format!("reading repository {repo} needs an API key with read access to it"),
                ));
            }
            Err(r) => return refuse(r),
        };
        if !auth::allows(&token.scopes, repo, None, Access::Read) {
            return refuse(Reply::error(
                StatusCode::FORBIDDEN,
                format!("API key {} cannot read repository {repo}", token.name),
            ));
        }
        if !auth::is_version_limited(&token.scopes, repo) {
            return Gate::Open;
        }
        let this = Arc::clone(self);
        let (root, repo_owned, rel) = (root.to_owned(), repo.to_owned(), relative.to_owned());
        let scopes = token.scopes.clone();
        let result =
            tokio::task::spawn_blocking(move || this.filtered(&root, &repo_owned, &rel, &scopes))
                .await
                .unwrap_or_else(|e| Err(GateError::Task(e)));
        match result {
            Ok(Some(bytes)) => Gate::Filtered(bytes),
            Ok(None) => Gate::Open,
            Err(GateError::NotReadable) => refuse(Reply::error(StatusCode::NOT_FOUND, "not found")),
            Err(e) => refuse(
                Reply::error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
                    .with_detail(format!("filtering a private index of {repo} failed: {e}")),
            ),
        }
    }

    /// The filtered bytes of an index file, `None` for a file served as is,
    /// or [`GateError::NotReadable`] for something these scopes may not read.
    ///
    /// Signs on the request path, against invariant 5's rule, because the
    /// result depends on the token: it runs on the blocking pool, once per
    /// generation, scopes and file, and is cached.
    fn filtered(
        &self,
        root: &Path,
        repo: &str,
        relative: &Path,
        scopes: &[Scope],
    ) -> Result<Option<Arc<Vec<u8>>>, GateError> {
        let rel = relative.to_string_lossy();
        let inside = rel
            .strip_prefix(&format!("repos/{repo}/"))
            .ok_or(GateError::NotReadable)?;
        let release_of = |file: &str, ext: &str| -> Option<(String, String)> {
            let stem = file.strip_suffix(ext)?;
            let (name, version) = stem.split_once('-')?;
            Some((name.to_owned(), version.to_owned()))
        };
        if let Some(file) = inside.strip_prefix("tarballs/") {
            let readable = release_of(file, ".tar")
                .is_some_and(|(n, v)| auth::may_read_release(scopes, repo, &n, &v));
            return if readable {
                Ok(None)
            } else {
                Err(GateError::NotReadable)
            };
        }
        if let Some(file) = inside.strip_prefix("docs/") {
            let readable = release_of(file, ".tar.gz")
                .is_some_and(|(n, v)| auth::may_read_release(scopes, repo, &n, &v));
            return if readable {
                Ok(None)
            } else {
                Err(GateError::NotReadable)
            };
        }
        if inside == "public_key" {
            return Ok(None);
        }
        // The generation the `current` link names, so a cached answer never
        // outlives the files it was made from.
        let generation = std::fs::canonicalize(root).map_err(|source| GateError::Read {
            path: root.to_owned(),
            source,
        })?;
        let patched = std::fs::metadata(generation.join(crate::store::MANIFEST_DELTA_FILE))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap_or(0);
        let scope_key = serde_json::to_string(scopes).map_err(GateError::Scopes)?;
        let key = (generation.clone(), patched, scope_key, relative.to_owned());
        if let Some(hit) = self
            .gate
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(Some(Arc::clone(hit)));
        }
        let config = self.config();
        let signing = config.signing.key.clone().ok_or(GateError::NoSigningKey)?;
        let public = signing.public_key();
        let path_of = |name: &str| generation.join("repos").join(repo).join(name);
        let read = |name: &str| {
            let path = path_of(name);
            std::fs::read(&path).map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    GateError::NotReadable
                } else {
                    GateError::Read { path, source }
                }
            })
        };
        let refused = |name: &str| {
            let path = path_of(name);
            move |source| GateError::Registry { path, source }
        };
        let readable =
            |name: &str, version: &str| auth::may_read_release(scopes, repo, name, version);
        let payload = match inside {
            "versions" | "names" => {
                let mut versions = registry::verify_versions(&read("versions")?, public, repo)
                    .map_err(refused("versions"))?
                    .into_inner();
                filter_versions(&mut versions, &readable);
                if inside == "versions" {
                    versions.encode_to_vec()
                } else {
                    let mut names = registry::verify_names(&read("names")?, public, repo)
                        .map_err(refused("names"))?
                        .into_inner();
                    let kept: std::collections::BTreeSet<&str> =
                        versions.packages.iter().map(|p| p.name.as_str()).collect();
                    names.packages.retain(|p| kept.contains(p.name.as_str()));
                    names.encode_to_vec()
                }
            }
            other => {
                let name = other
                    .strip_prefix("packages/")
                    .ok_or(GateError::NotReadable)?;
                let mut record = registry::verify_package(&read(other)?, public, repo, name)
                    .map_err(refused(other))?
                    .into_inner();
                record.releases.retain(|r| readable(name, &r.version));
                if record.releases.is_empty() {
                    return Err(GateError::NotReadable);
                }
                record.encode_to_vec()
            }
        };
        let bytes = Arc::new(registry::seal_signed_fast(payload, &signing));
        let mut cache = self.gate.0.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(key, Arc::clone(&bytes));
        Ok(Some(bytes))
    }
}

/// Why the gate could not answer with a filtered file.
#[derive(Debug, thiserror::Error)]
enum GateError {
    /// These scopes may not read it (answered as 404, like a missing file).
    #[error("not readable with these scopes")]
    NotReadable,
    /// No key to re-sign the filtered file with.
    #[error("[signing] key is not configured; a private repository needs it")]
    NoSigningKey,
    /// A served file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A served file does not verify with our key.
    #[error("{} does not verify with [signing] key: {source}; run `hexmirror sync` to re-sign it", path.display())]
    Registry {
        /// The file.
        path: PathBuf,
        /// Why.
        source: registry::RegistryError,
    },
    /// The scopes could not be written as a cache key (a bug).
    #[error("cannot serialise the token's scopes: {0}")]
    Scopes(serde_json::Error),
    /// The filter task died (a bug).
    #[error("the filter task failed: {0}")]
    Task(tokio::task::JoinError),
}

/// Keeps in `/versions` only readable releases, re-indexing `retired` and
/// `with_advisories`, and drops packages left empty.
fn filter_versions(
    versions: &mut proto::versions::Versions,
    readable: &dyn Fn(&str, &str) -> bool,
) {
    for p in &mut versions.packages {
        let keep: Vec<bool> = p.versions.iter().map(|v| readable(&p.name, v)).collect();
        let mut new_index = Vec::with_capacity(keep.len());
        let mut next = 0i32;
        for k in &keep {
            new_index.push(k.then(|| {
                next += 1;
                next - 1
            }));
        }
        let remap = |list: &[i32]| -> Vec<i32> {
            list.iter()
                .filter_map(|i| {
                    usize::try_from(*i)
                        .ok()
                        .and_then(|i| new_index.get(i).copied().flatten())
                })
                .collect()
        };
        p.retired = remap(&p.retired);
        p.with_advisories = remap(&p.with_advisories);
        let mut i = 0;
        p.versions.retain(|_| {
            i += 1;
            keep[i - 1]
        });
    }
    versions.packages.retain(|p| !p.versions.is_empty());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_filter_reindexes_retired() {
        let mut v = proto::versions::Versions {
            repository: "acme".into(),
            packages: vec![
                proto::versions::Package {
                    name: "a".into(),
                    versions: vec![
                        "4.0.0".into(),
                        "5.0.0".into(),
                        "5.1.0".into(),
                        "6.0.0".into(),
                    ],
                    retired: vec![0, 2],
                    with_advisories: vec![3],
                },
                proto::versions::Package {
                    name: "b".into(),
                    versions: vec!["1.0.0".into()],
                    retired: vec![],
                    with_advisories: vec![],
                },
            ],
        };
        filter_versions(&mut v, &|name, ver| name == "a" && ver.starts_with('5'));
        assert_eq!(v.packages.len(), 1);
        assert_eq!(v.packages[0].versions, ["5.0.0", "5.1.0"]);
        assert_eq!(v.packages[0].retired, [1]);
        assert!(v.packages[0].with_advisories.is_empty());
    }
}
