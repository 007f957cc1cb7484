//! What each page shows, made from the API's JSON: links, snippets, the
//! fields a template prints. No I/O; the templates escape every value.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};

use crate::registry::PackageName;
use crate::version::Version;

/// Whether `s` may name a package or repository in a URL.
pub fn valid_name(s: &str) -> bool {
    PackageName::parse(s).is_ok()
}

/// What a query-string value keeps as is: RFC 3986's unreserved characters.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `s` as one query-string value.
pub fn encode(s: &str) -> String {
    utf8_percent_encode(s, QUERY_VALUE).to_string()
}

/// The list's sorts, as the UI names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// By name.
    Name,
    /// Most downloaded in the last 90 days.
    Recent,
    /// Most downloaded ever.
    Downloads,
    /// Most recently updated.
    Updated,
}

const SORTS: [(Sort, &str, &str); 4] = [
    (Sort::Name, "name", "Name"),
    (Sort::Recent, "recent", "Recent downloads"),
    (Sort::Downloads, "downloads", "All-time downloads"),
    (Sort::Updated, "updated", "Recently updated"),
];

impl Sort {
    /// The UI's `sort` parameter (name by default).
    pub fn parse(s: Option<&str>) -> Self {
        SORTS
            .iter()
            .find(|(_, key, _)| Some(*key) == s)
            .map_or(Self::Name, |(sort, _, _)| *sort)
    }

    fn key(self) -> &'static str {
        SORTS
            .iter()
            .find(|(s, _, _)| *s == self)
            .map_or("name", |(_, key, _)| key)
    }

    /// The API's name for it.
    pub fn api(self) -> &'static str {
        match self {
            Self::Name => "name",
            Self::Recent => "recent_downloads",
            Self::Downloads => "total_downloads",
            Self::Updated => "updated_at",
        }
    }
}

/// `?repo=R` for links that stay in repository `repo` (none for the default).
fn repo_query(repo: Option<&str>) -> String {
    repo.map_or_else(String::new, |r| format!("?repo={}", encode(r)))
}

/// The page of package `name` (release `version`) in `repo`; the name and
/// version were checked ([`valid_name`], `is_valid_version`), so they are
/// path-safe as they are.
fn package_url(prefix: &str, repo: Option<&str>, name: &str, version: Option<&str>) -> String {
    let version = version.map_or_else(String::new, |v| format!("/{v}"));
    format!("{prefix}/packages/{name}{version}{}", repo_query(repo))
}

fn list_url(prefix: &str, repo: Option<&str>, search: &str, sort: Sort, page: usize) -> String {
    let mut q = vec![];
    if let Some(r) = repo {
        q.push(format!("repo={}", encode(r)));
    }
    if !search.is_empty() {
        q.push(format!("q={}", encode(search)));
    }
    if sort != Sort::Name {
        q.push(format!("sort={}", sort.key()));
    }
    if page > 1 {
        q.push(format!("page={page}"));
    }
    if q.is_empty() {
        format!("{prefix}/")
    } else {
        format!("{prefix}/?{}", q.join("&"))
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// The date part of an ISO 8601 time.
fn day(v: Option<&str>) -> Option<String> {
    v.map(|t| t.split('T').next().unwrap_or(t).to_owned())
}

/// What the list shows: a search, its sort, and which page.
#[derive(Debug, Clone, Copy)]
pub struct Listing<'a> {
    /// The search text (hex.pm's syntax).
    pub search: &'a str,
    /// The order.
    pub sort: Sort,
    /// The page, from 1.
    pub page: usize,
}

/// The list page: the packages found, the sorts, pages and repositories.
pub fn list(
    prefix: &str,
    mirror: &str,
    repo: Option<&str>,
    listing: Listing<'_>,
    found: &Value,
    repos: &[Value],
) -> Value {
    let Listing { search, sort, page } = listing;
    let packages: Vec<Value> = found
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            let name = str_of(p, "name").filter(|n| valid_name(n))?;
            Some(json!({
                "name": name,
                "url": package_url(prefix, repo, name, None),
                "description": p.get("meta").and_then(|m| str_of(m, "description")),
                "latest": str_of(p, "latest_stable_version").or_else(|| str_of(p, "latest_version")),
                "downloads": p.get("downloads").and_then(|d| d.get("all")),
                "recent": p.get("downloads").and_then(|d| d.get("recent")),
                "updated": day(str_of(p, "updated_at")),
            }))
        })
        .collect();
    let full = packages.len() >= crate::catalog::query::PAGE_SIZE;
    json!({
        "search": search,
        "repo": repo,
        "title": repo.unwrap_or(mirror),
        "packages": packages,
        "page": page,
        "prev_url": (page > 1).then(|| list_url(prefix, repo, search, sort, page - 1)),
        "next_url": full.then(|| list_url(prefix, repo, search, sort, page + 1)),
        "sorts": SORTS.iter().map(|(s, _, label)| json!({
            "label": label, "active": *s == sort,
            "url": list_url(prefix, repo, search, *s, 1),
        })).collect::<Vec<_>>(),
        "repos": repos.iter().filter_map(|r| {
            let name = str_of(r, "name").filter(|n| valid_name(n))?;
            let public = r.get("public").and_then(Value::as_bool).unwrap_or(true);
            let link = (name != mirror).then_some(name);
            Some(json!({"name": name, "public": public, "active": link == repo,
                        "url": list_url(prefix, link, search, sort, 1)}))
        }).collect::<Vec<_>>(),
    })
}

/// Links the page may show as links: http and https only (a `javascript:`
/// link from a package's metadata stays text).
fn links(meta: Option<&Value>) -> Vec<Value> {
    meta.and_then(|m| m.get("links"))
        .and_then(Value::as_object)
        .map(|links| {
            links
                .iter()
                .filter_map(|(label, url)| {
                    let url = url.as_str()?;
                    let lower = url.to_ascii_lowercase();
                    let safe = lower.starts_with("https://") || lower.starts_with("http://");
                    Some(json!({"label": label, "url": url, "safe": safe}))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A release's requirements, each linked to its package's page.
fn requirements(prefix: &str, repo: Option<&str>, package_repo: &str, rel: &Value) -> Vec<Value> {
    let Some(reqs) = rel.get("requirements").and_then(Value::as_object) else {
        return Vec::new();
    };
    reqs.iter()
        .map(|(name, d)| {
            // A requirement names its repository when it is another one.
            let in_repo = str_of(d, "repository").filter(|r| valid_name(r));
            let link_repo = match in_repo {
                Some(r) if r != package_repo || repo.is_some() => Some(r),
                Some(_) => None,
                None => repo,
            };
            json!({
                "name": name,
                "requirement": str_of(d, "requirement"),
                "optional": d.get("optional").and_then(Value::as_bool).unwrap_or(false),
                "repository": in_repo,
                "url": valid_name(name).then(|| package_url(prefix, link_repo, name, None)),
            })
        })
        .collect()
}

/// `gleam.toml`'s line for release `version` of `name`, as `gleam add`
/// writes it: from this version up to the next major.
fn gleam(name: &str, version: &str) -> Option<String> {
    let v = Version::parse(version).ok()?;
    Some(format!(
        "{name} = \">= {version} and < {}.0.0\"",
        v.major().saturating_add(1)
    ))
}

/// The install snippets of `rel` in a repository described by `repo_info`.
fn install(name: &str, rel: Option<&Value>, repo_info: &Value, base: &str) -> Value {
    let configs = rel.and_then(|r| r.get("configs"));
    let snippet = |k: &str| configs.and_then(|c| str_of(c, k)).map(str::to_owned);
    let version = rel.and_then(|r| str_of(r, "version"));
    let repo = str_of(repo_info, "name");
    let ours = repo_info
        .get("hexmirror")
        .and_then(|h| str_of(h, "kind"))
        .is_some_and(|k| k == "ours");
    let fingerprint = repo_info
        .get("hexmirror")
        .and_then(|h| str_of(h, "public_key_fingerprint"));
    let repo_add = match (ours, repo) {
        (true, Some(repo)) => Some(match fingerprint {
            Some(f) => {
                format!("mix hex.repo add {repo} {base}/repos/{repo} --fetch-public-key {f}")
            }
            None => format!("mix hex.repo add {repo} {base}/repos/{repo}"),
        }),
        _ => None,
    };
    json!({
        "mix": snippet("mix.exs"),
        "rebar3": snippet("rebar.config"),
        "erlang_mk": snippet("erlang.mk"),
        // Gleam resolves from hex.pm's repository only.
        "gleam": (!ours).then(|| version.and_then(|v| gleam(name, v))).flatten(),
        "repo_add": repo_add,
        "fingerprint": fingerprint,
        "public_key_url": repo.filter(|_| ours).map(|r| format!("{base}/repos/{r}/public_key")),
    })
}

/// The package page.
pub fn package(
    prefix: &str,
    repo: Option<&str>,
    pkg: &Value,
    release: Option<&Value>,
    dependents: &Value,
    repo_info: &Value,
    base: &str,
) -> Value {
    let name = str_of(pkg, "name").unwrap_or("");
    let package_repo = str_of(pkg, "repository").unwrap_or("");
    let retirements = pkg.get("retirements").and_then(Value::as_object);
    let versions: Vec<Value> = pkg
        .get("releases")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|r| {
            let v = str_of(r, "version").filter(|v| crate::registry::is_valid_version(v))?;
            let retired = retirements.and_then(|m| m.get(v));
            Some(json!({
                "version": v,
                "url": package_url(prefix, repo, name, Some(v)),
                "date": day(str_of(r, "inserted_at")),
                "retired": retired.map(|r| json!({"reason": str_of(r, "reason"), "message": str_of(r, "message")})),
            }))
        })
        .collect();
    let meta = pkg.get("meta");
    let dependents_total = dependents.get("total").and_then(Value::as_u64);
    let dependents: Vec<Value> = dependents
        .get("items")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|d| {
            let n = str_of(d, "package").filter(|n| valid_name(n))?;
            Some(json!({
                "name": n,
                "url": package_url(prefix, repo, n, None),
                "versions": d.get("versions"),
            }))
        })
        .collect();
    json!({
        "name": name,
        "repository": package_repo,
        "description": meta.and_then(|m| str_of(m, "description")),
        "licenses": meta.and_then(|m| m.get("licenses")),
        "links": links(meta),
        "versions": versions,
        "latest": release.and_then(|r| str_of(r, "version")),
        "checksum": release.and_then(|r| str_of(r, "checksum")),
        "requirements": release.map(|r| requirements(prefix, repo, package_repo, r)).unwrap_or_default(),
        "dependents": dependents,
        "dependents_total": dependents_total,
        "downloads": pkg.get("downloads"),
        "updated": day(str_of(pkg, "updated_at")),
        "install": install(name, release, repo_info, base),
        "back_url": list_url(prefix, repo, "", Sort::Name, 1),
        "mirrored": pkg.get("hexmirror").is_some(),
    })
}

/// The release page.
pub fn release(prefix: &str, repo: Option<&str>, name: &str, pkg: &Value, rel: &Value) -> Value {
    let package_repo = str_of(pkg, "repository").unwrap_or("");
    let meta = rel.get("meta");
    json!({
        "name": name,
        "version": str_of(rel, "version"),
        "package_url": package_url(prefix, repo, name, None),
        "checksum": str_of(rel, "checksum"),
        "inner_checksum": str_of(rel, "inner_checksum"),
        "retirement": rel.get("retirement").filter(|r| !r.is_null()),
        "requirements": requirements(prefix, repo, package_repo, rel),
        "downloads": rel.get("downloads"),
        "published": day(str_of(rel, "inserted_at")),
        "publisher": rel.get("publisher").and_then(|p| str_of(p, "username")),
        "build_tools": meta.and_then(|m| m.get("build_tools")),
        "elixir": meta.and_then(|m| str_of(m, "elixir")),
        "mix": rel.get("configs").and_then(|c| str_of(c, "mix.exs")),
        "rebar3": rel.get("configs").and_then(|c| str_of(c, "rebar.config")),
        "description": pkg.get("meta").and_then(|m| str_of(m, "description")),
    })
}

/// The status page: the server's report and the mirror's stats.
pub fn status(report: &Value, stats: &Value) -> Value {
    json!({
        "status": str_of(report, "status"),
        "storage": report.get("storage"),
        "last_sync": report.get("last_sync"),
        "syncs": report.get("syncs"),
        "quarantined": report.get("quarantined"),
        "proxy": report.get("proxy_cache"),
        "air_gap": report.get("air_gap"),
        "lag_secs": report.get("lag_secs"),
        "manifest_expires_in_secs": report.get("manifest_expires_in_secs"),
        "stats": (!stats.is_null()).then_some(stats),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_web_links_are_links() {
        let meta = json!({"links": {"GitHub": "https://github.com/x", "Evil": "javascript:alert(1)", "Data": "DATA:text/html,x"}});
        let l = links(Some(&meta));
        let safe: Vec<bool> = l.iter().map(|v| v["safe"].as_bool().unwrap()).collect();
        assert_eq!(l.len(), 3);
        assert_eq!(safe.iter().filter(|s| **s).count(), 1);
    }

    #[test]
    fn gleam_takes_up_to_the_next_major() {
        assert_eq!(
            gleam("gleam_json", "1.2.3").as_deref(),
            Some("gleam_json = \">= 1.2.3 and < 2.0.0\"")
        );
        assert_eq!(
            gleam("x", "0.4.0").as_deref(),
            Some("x = \">= 0.4.0 and < 1.0.0\"")
        );
        assert_eq!(gleam("x", "nope"), None);
    }

    #[test]
    fn list_links_keep_the_repository_search_and_sort() {
        assert_eq!(
            list_url("/ui", Some("acme"), "a b&c", Sort::Recent, 2),
            "/ui/?repo=acme&q=a%20b%26c&sort=recent&page=2"
        );
        assert_eq!(list_url("/ui", None, "", Sort::Name, 1), "/ui/");
        assert_eq!(Sort::parse(Some("bogus")), Sort::Name);
    }

    #[test]
    fn a_requirement_links_to_its_own_repository() {
        let rel = json!({"requirements": {
            "jason": {"requirement": "~> 1.0", "optional": false, "repository": "hexpm"},
            "inhouse": {"requirement": ">= 0.0.0", "optional": true},
        }});
        let deps = requirements("/ui", None, "hexpm", &rel);
        assert_eq!(deps[0]["url"], "/ui/packages/inhouse");
        assert_eq!(deps[1]["url"], "/ui/packages/jason");
        let deps = requirements("/ui", Some("acme"), "acme", &rel);
        assert_eq!(deps[0]["url"], "/ui/packages/inhouse?repo=acme");
        assert_eq!(deps[1]["url"], "/ui/packages/jason?repo=hexpm");
    }
}
