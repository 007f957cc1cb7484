//! A read-only node's files: the generation the bucket's pointer names
//! (`store::bucket::reader`), answered with the same validators, ranges and
//! cache headers as files from a local tree. The ETag is the manifest's
//! SHA-256 of the content, cut as `etag.rs` cuts it, so a file has the same
//! ETag whichever node serves it; Last-Modified is the signing time of the
//! manifest, which no file of the generation postdates.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::http::header::{HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::Response;

use super::paths::{FileTarget, Kind};
use super::{FileAnswer, ServeError, ServerState, Source, file_response, text_response};
use crate::store::bucket::reader::{File, Reader};

pub(super) async fn serve_file(
    state: &Arc<ServerState>,
    reader: &Reader,
    method: &Method,
    target: &FileTarget,
    headers: &HeaderMap,
) -> Result<Response, ServeError> {
    // Private repositories need the writer's gate and database: a read-only
    // node answers for none of them, and as for any unknown path, so a
    // refusal names no repository.
    if target
        .org
        .as_ref()
        .is_some_and(|org| !state.public_repos.contains(org))
    {
        return Err(ServeError::NotFound);
    }
    let Some(snapshot) = reader.snapshot() else {
        return Ok(no_generation_yet());
    };
    let rel = target.relative.to_string_lossy();
    let mut signed_at = snapshot.signed_at;
    let (content, sha, len) = match target.kind {
        Kind::Manifest => {
            let (bytes, sha) = if rel == crate::manifest::MANIFEST_FILE {
                (snapshot.manifest.clone(), snapshot.manifest_sha256)
            } else if let Some((delta, sha)) = &snapshot.delta {
                (delta.clone(), *sha)
            } else {
                return Err(ServeError::NotFound);
            };
            let len = bytes.len() as u64;
            (Some(bytes), sha, len)
        }
        _ => {
            // The generation's file, or else one the writer's proxy
            // fetched (the upstream's own paths only, never a repository's).
            let file: File = match snapshot.file(&rel) {
                Some(file) => file,
                None => {
                    let (file, listed_at) = target
                        .org
                        .is_none()
                        .then(|| snapshot.proxied(&rel, crate::clock::unix_now()))
                        .flatten()
                        .ok_or(ServeError::NotFound)?;
                    signed_at = signed_at.max(listed_at);
                    file
                }
            };
            let content = if *method == Method::GET {
                Some(
                    reader
                        .content(file, crate::clock::unix_now())
                        .await
                        .map_err(ServeError::Bucket)?,
                )
            } else {
                None
            };
            (content, file.sha256, file.size)
        }
    };
    let etag = HeaderValue::from_str(&super::etag::from_sha256(&sha))
        .unwrap_or_else(|_| unreachable!("hex digits are a header value"));
    let last_modified = SystemTime::UNIX_EPOCH + Duration::from_secs(signed_at);
    let last_modified = super::http::truncate_to_secs(last_modified.min(SystemTime::now()));
    let answer = FileAnswer {
        etag,
        last_modified: Some(last_modified),
        last_modified_header: HeaderValue::from_str(&httpdate::fmt_http_date(last_modified)).ok(),
        len,
        len_header: None,
        source: content.map_or(Source::Nothing, |b: Bytes| Source::Memory(b, None)),
    };
    file_response(state, method, target, headers, answer, None).await
}

/// Before the first pointer is read: nothing to serve, say so, and keep
/// caches from remembering it.
fn no_generation_yet() -> Response {
    let mut res = text_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "no generation read from the bucket yet; try again shortly\n".to_owned(),
    );
    let h = res.headers_mut();
    h.insert(
        axum::http::header::RETRY_AFTER,
        HeaderValue::from_static("5"),
    );
    h.insert(
        axum::http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    res
}
