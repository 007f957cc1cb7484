//! The served tree in an S3-compatible bucket, for one writer and many
//! read-only nodes (`[storage] kind = "s3"`).
//!
//! ```text
//! PREFIX/blobs/sha256/ab/HEX              every served file's content, by SHA-256 (immutable)
//! PREFIX/manifests/VVVV.json              a signed base manifest, by its version (immutable)
//! PREFIX/manifests/VVVV-delta.json        a signed delta over a base, by its version (immutable)
//! PREFIX/proxy/VVVV.json                  the pull-through proxy's signed file list (immutable)
//! PREFIX/current.json                     the pointer: which manifest, delta and proxy list
//! PREFIX/lease.json                       who may write, until when
//! PREFIX/downloads/UNIX-RANDOM.json       read-only nodes' download counts, for the writer
//! PREFIX/probe/ID                         the writer's start-up check of conditional puts
//! ```
//!
//! S3 has no rename and no hard link, so a generation is its manifest: the
//! manifest names every path with the SHA-256 of its content, and the content
//! is the blob of that name. The writer builds each generation in its data
//! directory as before ([`super::Store`]), then uploads what the bucket lacks
//! in the order that keeps every reader whole (`upload`): blobs, then the
//! manifest, then the pointer, which is the one object that changes. The
//! pointer is written with a conditional put on the ETag the writer last saw
//! (fencing: a writer whose lease lapsed and whose pointer was replaced
//! cannot publish). Nothing a live pointer names is ever overwritten.
//!
//! The bucket is a trust boundary: readers verify the manifest's signature
//! and every object's hash (`reader`).

pub mod gc;
pub mod lease;
pub mod proxied;
pub mod reader;
pub mod upload;
pub mod writer;

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as Key;
use object_store::{
    GetOptions, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
};
use serde::{Deserialize, Serialize};

use crate::config::S3Config;

/// The pointer object's name under the prefix.
pub const POINTER: &str = "current.json";
/// The lease object's name under the prefix.
pub const LEASE: &str = "lease.json";

/// The largest pointer or lease object read.
pub const SMALL_OBJECT: u64 = 64 * 1024;
/// The largest base manifest read (hex.pm's is about 90 MB).
pub const MAX_MANIFEST: u64 = 1 << 30;
/// The largest delta read (at most 4,096 files).
pub const MAX_DELTA: u64 = 16 << 20;
/// The largest proxy file list a reader reads (about 1.5 million entries).
pub const MAX_PROXY_SET: u64 = 256 << 20;

/// The key of a blob, relative to the prefix.
pub fn blob_key(sha256: &[u8; 32]) -> String {
    let hex = hex::encode(sha256);
    format!("blobs/sha256/{}/{hex}", &hex[..2])
}

/// The key of a base manifest of `version`.
pub fn base_key(version: u64) -> String {
    format!("manifests/{version:020}.json")
}

/// The version a key's 20 zero-padded digits spell ([`base_key`],
/// [`delta_key`], [`proxy_key`]), or `None` for anything else.
pub fn version_digits(digits: &str) -> Option<u64> {
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

/// The key of the proxy's file list of `version` ([`proxied`]).
pub fn proxy_key(version: u64) -> String {
    format!("proxy/{version:020}.json")
}

/// The key of a delta of `version`.
pub fn delta_key(version: u64) -> String {
    format!("manifests/{version:020}-delta.json")
}

/// What the pointer says is served. Not signed: everything it names is, and
/// a reader checks the manifest's version against the pointer's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pointer {
    /// The served manifest's version (the delta's when there is one).
    pub version: u64,
    /// The generation's name.
    pub generation: String,
    /// The base manifest's version ([`base_key`]).
    pub base: u64,
    /// The base manifest object's SHA-256 (hex): a reader and the next
    /// writer follow the pointer only to these exact bytes.
    pub base_sha256: String,
    /// The delta's version ([`delta_key`]), if the generation was patched.
    pub delta: Option<u64>,
    /// The delta object's SHA-256 (hex), with `delta`.
    pub delta_sha256: Option<String>,
    /// The pull-through proxy's file list served beside the generation.
    #[serde(default)]
    pub proxy: Option<ProxyRef>,
    /// The lease holder that wrote it.
    pub holder: String,
    /// Unix time of writing.
    pub written_at: u64,
}

/// Which proxy file list ([`proxy_key`]) the pointer names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyRef {
    /// Its version.
    pub version: u64,
    /// Its object's SHA-256 (hex).
    pub sha256: String,
}

/// A bucket operation that failed, with the bucket and key it failed on.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    /// The store refused or could not be reached.
    #[error("bucket {bucket}: {action} {key}: {source}")]
    Store {
        /// The bucket (and prefix).
        bucket: String,
        /// What was being done: "get", "put", "list", "delete".
        action: &'static str,
        /// The object's key.
        key: String,
        /// What the store said.
        #[source]
        source: Box<object_store::Error>,
    },
    /// The S3 client could not be built from the configuration.
    #[error("bucket {bucket}: cannot set up the S3 client: {source}")]
    Client {
        /// The bucket.
        bucket: String,
        /// What object_store said.
        #[source]
        source: Box<object_store::Error>,
    },
    /// An object is larger than anything hexmirror writes there.
    #[error("bucket {bucket}: {key} is {size} bytes, more than the {max} it may be; not read")]
    TooLarge {
        /// The bucket (and prefix).
        bucket: String,
        /// The object.
        key: String,
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The credentials file is unreadable, readable by others, or lacks a key.
    #[error("storage.credentials_file {path}: {problem}")]
    Credentials {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it and what to do.
        problem: CredentialsProblem,
    },
    /// An object hexmirror reads back (the pointer, the lease) is not what
    /// it writes.
    #[error(
        "bucket {bucket}: {key} is not hexmirror's: {source}; remove it or point storage.prefix elsewhere"
    )]
    Foreign {
        /// The bucket (and prefix).
        bucket: String,
        /// The object.
        key: String,
        /// Why it did not parse.
        #[source]
        source: serde_json::Error,
    },
}

/// What is wrong with a credentials file.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsProblem {
    /// It could not be read.
    #[error("cannot read it: {0}")]
    Read(#[source] std::io::Error),
    /// Group or others may read it.
    #[error("it is readable by group or others (mode {0:o}); chmod 600 it")]
    Exposed(u32),
    /// A required line is absent.
    #[error("no {0}= line")]
    Missing(&'static str),
}

/// The outcome of a conditional put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Put {
    /// Written; the new object's ETag.
    Written(Option<String>),
    /// `PutMode::Create` found the object already there.
    Exists,
    /// `PutMode::Update` found a different version there (or none).
    Precondition,
}

/// An object read, with its validators.
#[derive(Debug, Clone)]
pub struct Object {
    /// The content.
    pub bytes: Bytes,
    /// The store's ETag.
    pub etag: Option<String>,
}

/// The bucket under the configured prefix.
#[derive(Debug, Clone)]
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// `bucket/prefix`, for messages.
    name: String,
}

impl Bucket {
    /// An S3 client for the configured bucket, with credentials from the
    /// environment or the credentials file.
    pub fn open(config: &S3Config) -> Result<Self, BucketError> {
        let mut builder = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region);
        if let Some(endpoint) = &config.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        if let Some(path) = &config.credentials_file {
            let creds = read_credentials(path)?;
            builder = builder
                .with_access_key_id(creds.access_key_id)
                .with_secret_access_key(creds.secret_access_key);
            if let Some(token) = creds.session_token {
                builder = builder.with_token(token);
            }
        }
        let store = builder.build().map_err(|source| BucketError::Client {
            bucket: config.bucket.clone(),
            source: Box::new(source),
        })?;
        Ok(Self::with_store(
            Arc::new(store),
            &config.bucket,
            &config.prefix,
        ))
    }

    /// A bucket over any object store (tests use the in-memory one).
    pub fn with_store(store: Arc<dyn ObjectStore>, bucket: &str, prefix: &str) -> Self {
        let name = if prefix.is_empty() {
            bucket.to_owned()
        } else {
            format!("{bucket}/{prefix}")
        };
        Self {
            store,
            prefix: prefix.to_owned(),
            name,
        }
    }

    /// `bucket/prefix`, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn key(&self, rel: &str) -> Key {
        if self.prefix.is_empty() {
            Key::from(rel)
        } else {
            Key::from(format!("{}/{rel}", self.prefix))
        }
    }

    fn fail(&self, action: &'static str, rel: &str, source: object_store::Error) -> BucketError {
        BucketError::Store {
            bucket: self.name.clone(),
            action,
            key: rel.to_owned(),
            source: Box::new(source),
        }
    }

    /// The object at `rel`, or `None` when there is none; one larger than
    /// `max` bytes is refused before its body is read (the bucket's content
    /// is not trusted).
    pub async fn get(&self, rel: &str, max: u64) -> Result<Option<Object>, BucketError> {
        match self.get_if_changed(rel, None, max).await? {
            Fetched::Body(object) => Ok(Some(object)),
            Fetched::Missing | Fetched::NotModified => Ok(None),
        }
    }

    /// The object at `rel` unless its ETag is still `etag` (at most `max`
    /// bytes, as [`Self::get`]).
    pub async fn get_if_changed(
        &self,
        rel: &str,
        etag: Option<&str>,
        max: u64,
    ) -> Result<Fetched, BucketError> {
        let options = GetOptions {
            if_none_match: etag.map(str::to_owned),
            ..GetOptions::default()
        };
        let result = match self.store.get_opts(&self.key(rel), options).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(Fetched::Missing),
            Err(object_store::Error::NotModified { .. }) => return Ok(Fetched::NotModified),
            Err(e) => return Err(self.fail("get", rel, e)),
        };
        let meta = result.meta.clone();
        if meta.size > max {
            return Err(BucketError::TooLarge {
                bucket: self.name.clone(),
                key: rel.to_owned(),
                size: meta.size,
                max,
            });
        }
        let bytes = result.bytes().await.map_err(|e| self.fail("get", rel, e))?;
        Ok(Fetched::Body(Object {
            bytes,
            etag: meta.e_tag,
        }))
    }

    /// The object's metadata, or `None` when there is none.
    pub async fn get_head(&self, rel: &str) -> Result<Option<ObjectMeta>, BucketError> {
        match self.store.head(&self.key(rel)).await {
            Ok(meta) => Ok(Some(meta)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.fail("head", rel, e)),
        }
    }

    /// Writes `bytes` at `rel` in `mode`.
    pub async fn put(&self, rel: &str, bytes: Bytes, mode: PutMode) -> Result<Put, BucketError> {
        let options = PutOptions {
            mode,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&self.key(rel), PutPayload::from_bytes(bytes), options)
            .await
        {
            Ok(result) => Ok(Put::Written(result.e_tag)),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Put::Exists),
            Err(object_store::Error::Precondition { .. }) => Ok(Put::Precondition),
            Err(e) => Err(self.fail("put", rel, e)),
        }
    }

    /// Every object under `rel` (a directory-like prefix), with keys made
    /// relative to the bucket's prefix again.
    pub async fn list(&self, rel: &str) -> Result<Vec<(String, ObjectMeta)>, BucketError> {
        use futures::TryStreamExt;
        let key = self.key(rel);
        let objects: Vec<ObjectMeta> = self
            .store
            .list(Some(&key))
            .try_collect()
            .await
            .map_err(|e| self.fail("list", rel, e))?;
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        Ok(objects
            .into_iter()
            .map(|meta| (meta.location.as_ref()[strip..].to_owned(), meta))
            .collect())
    }

    /// Removes the object at `rel` (absent is fine).
    pub async fn delete(&self, rel: &str) -> Result<(), BucketError> {
        match self.store.delete(&self.key(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail("delete", rel, e)),
        }
    }

    /// The pointer and its ETag, or `None` before the first publish.
    pub async fn pointer(&self) -> Result<Option<(Pointer, Option<String>)>, BucketError> {
        match self.get(POINTER, SMALL_OBJECT).await? {
            None => Ok(None),
            Some(object) => Ok(Some((self.parse(POINTER, &object.bytes)?, object.etag))),
        }
    }

    /// Parses a JSON object hexmirror wrote at `rel`.
    pub fn parse<T: serde::de::DeserializeOwned>(
        &self,
        rel: &str,
        bytes: &[u8],
    ) -> Result<T, BucketError> {
        serde_json::from_slice(bytes).map_err(|source| BucketError::Foreign {
            bucket: self.name.clone(),
            key: rel.to_owned(),
            source,
        })
    }
}

/// What a conditional get found.
#[derive(Debug, Clone)]
pub enum Fetched {
    /// The object, changed (or asked unconditionally).
    Body(Object),
    /// No object at that key.
    Missing,
    /// Still the ETag asked with.
    NotModified,
}

struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
}

/// Reads `KEY=VALUE` lines (systemd's EnvironmentFile format, `#` comments),
/// refusing a file others may read.
fn read_credentials(path: &std::path::Path) -> Result<Credentials, BucketError> {
    let fail = |problem| BucketError::Credentials {
        path: path.to_owned(),
        problem,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| fail(CredentialsProblem::Read(e)))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(fail(CredentialsProblem::Exposed(mode & 0o777)));
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(CredentialsProblem::Read(e)))?;
    let value = |name: &str| {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().trim_matches('"').to_owned())
            .filter(|v| !v.is_empty())
    };
    Ok(Credentials {
        access_key_id: value("AWS_ACCESS_KEY_ID")
            .ok_or_else(|| fail(CredentialsProblem::Missing("AWS_ACCESS_KEY_ID")))?,
        secret_access_key: value("AWS_SECRET_ACCESS_KEY")
            .ok_or_else(|| fail(CredentialsProblem::Missing("AWS_SECRET_ACCESS_KEY")))?,
        session_token: value("AWS_SESSION_TOKEN"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_laid_out_by_hash_and_sortable_by_version() {
        let sha = [0xab; 32];
        assert_eq!(
            blob_key(&sha),
            format!("blobs/sha256/ab/{}", "ab".repeat(32))
        );
        assert!(base_key(9) < base_key(10));
        assert_eq!(delta_key(7), "manifests/00000000000000000007-delta.json");
    }

    #[test]
    fn credentials_come_from_a_private_file_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s3.env");
        std::fs::write(
            &path,
            "# test\nAWS_ACCESS_KEY_ID=ak\nAWS_SECRET_ACCESS_KEY=\"sk\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            read_credentials(&path),
            Err(BucketError::Credentials {
                problem: CredentialsProblem::Exposed(0o644),
                ..
            })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let creds = read_credentials(&path).unwrap();
        assert_eq!(
            (
                creds.access_key_id.as_str(),
                creds.secret_access_key.as_str()
            ),
            ("ak", "sk")
        );
        std::fs::write(&path, "AWS_ACCESS_KEY_ID=ak\n").unwrap();
        assert!(matches!(
            read_credentials(&path),
            Err(BucketError::Credentials {
                problem: CredentialsProblem::Missing("AWS_SECRET_ACCESS_KEY"),
                ..
            })
        ));
    }

    #[tokio::test]
    async fn conditional_puts_answer_as_the_lease_needs_on_the_memory_store() {
        let bucket = Bucket::with_store(Arc::new(object_store::memory::InMemory::new()), "b", "p");
        let bytes = Bytes::from_static(b"x");
        let Put::Written(etag) = bucket
            .put("k", bytes.clone(), PutMode::Create)
            .await
            .unwrap()
        else {
            panic!("first create")
        };
        assert_eq!(
            bucket
                .put("k", bytes.clone(), PutMode::Create)
                .await
                .unwrap(),
            Put::Exists
        );
        let stale = object_store::UpdateVersion {
            e_tag: Some("\"nope\"".into()),
            version: None,
        };
        assert_eq!(
            bucket
                .put("k", bytes.clone(), PutMode::Update(stale))
                .await
                .unwrap(),
            Put::Precondition
        );
        let current = object_store::UpdateVersion {
            e_tag: etag,
            version: None,
        };
        assert!(matches!(
            bucket
                .put("k", bytes, PutMode::Update(current))
                .await
                .unwrap(),
            Put::Written(_)
        ));
        let listed = bucket.list("").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, "k");
    }
}
