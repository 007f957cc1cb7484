//! Repositories of our own: the mirrored packages, curated and re-signed
//! with the mirror's RSA key, served under `/repos/NAME/`.
//!
//! The upstream signs with `fixtures/keys/upstream.pem`; the mirror signs
//! with `fixtures/keys/other.pem`, a different key, so a client that accepts
//! a file under `other.pub.pem` proves hexmirror re-signed it. hex_core (the
//! oracle) and stock rebar3 are the judges, as in the other suites.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::*;
use hexmirror::registry::proto::{names, package, versions};
use hexmirror::registry::{
    PublicKey, SigningKey, seal_signed, verify_names, verify_package, verify_versions,
};
use prost::Message;

/// Every package of [`SPEC_SMALL`].
const PACKAGES: [&str; 4] = ["alpha", "beta", "gamma", "delta"];

/// The dependency every rebar3 project here asks for: it pulls in alpha and,
/// as an optional dependency, gamma.
const BETA: (&str, &str) = ("beta", "0.2.1");

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A mirror of `upstream` serving the repositories `repos`, signed with the
/// mirror's key (`other.pem`), after one sync that must succeed.
fn synced_mirror(upstream: &TestUpstream, repos: &[&str]) -> Mirror {
    let mirror = Mirror::new(
        upstream,
        &repositories_config(&fixture_key("other.pem"), repos),
    );
    let out = mirror.sync();
    assert!(out.ok(), "{out}");
    mirror
}

fn public_key(path: &Path) -> PublicKey {
    PublicKey::from_pem(&fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The decoded, verified registry files of one repository directory.
#[derive(Debug)]
struct Registry {
    names: names::Names,
    versions: versions::Versions,
    packages: BTreeMap<String, package::Package>,
}

impl Registry {
    /// Verifies `names`, `versions` and every package `names` lists under
    /// `root` with `key` and repository `repo`; panics on any refusal.
    fn load(root: &Path, repo: &str, key: &PublicKey) -> Self {
        let names = verify_names(&read(&root.join("names")), key, repo)
            .unwrap_or_else(|e| panic!("{}/names: {e}", root.display()))
            .into_inner();
        let versions = verify_versions(&read(&root.join("versions")), key, repo)
            .unwrap_or_else(|e| panic!("{}/versions: {e}", root.display()))
            .into_inner();
        let packages = names
            .packages
            .iter()
            .map(|p| {
                let file = root.join("packages").join(&p.name);
                let record = verify_package(&read(&file), key, repo, &p.name)
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
                    .into_inner();
                (p.name.clone(), record)
            })
            .collect();
        Self {
            names,
            versions,
            packages,
        }
    }

    /// Package names in `/names`, sorted.
    fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .names
            .packages
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        v.sort();
        v
    }

    /// Package names in `/versions`, sorted.
    fn versions_names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .versions
            .packages
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        v.sort();
        v
    }

    /// The `/versions` entry of `name`.
    fn versions_of(&self, name: &str) -> &versions::Package {
        self.versions
            .packages
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("{name} not in /versions"))
    }
}

/// Asserts that `resigned` carries exactly `upstream`'s payloads except for
/// the repository name: every record field by field (prost's `PartialEq`
/// covers releases and their order, checksums, dependencies with optional,
/// app and repository, retirement, advisories, published_at), `/names` with
/// `updated_at`, `/versions` with `retired` and `with_advisories`. The order
/// of packages inside `/names` and `/versions` carries no meaning for
/// clients, so both sides are sorted by name first.
fn assert_same_payloads(upstream: &Registry, resigned: &Registry, repo: &str) {
    assert_eq!(resigned.packages.len(), upstream.packages.len());
    for (name, record) in &upstream.packages {
        let expected = package::Package {
            repository: repo.to_owned(),
            ..record.clone()
        };
        assert_eq!(resigned.packages.get(name), Some(&expected), "{name}");
    }

    let mut expected = upstream.names.clone();
    expected.repository = repo.to_owned();
    expected.packages.sort_by(|a, b| a.name.cmp(&b.name));
    let mut got = resigned.names.clone();
    got.packages.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(got, expected, "/names");

    let mut expected = upstream.versions.clone();
    expected.repository = repo.to_owned();
    expected.packages.sort_by(|a, b| a.name.cmp(&b.name));
    let mut got = resigned.versions.clone();
    got.packages.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(got, expected, "/versions");
}

/// Reads the signed payload of registry file `rel` under `dir`, lets `edit`
/// change it and seals it again with the upstream's key: the upstream then
/// publishes fields hex_core 0.7.1 cannot emit.
fn reseal<T: Message + Default>(dir: &Path, rel: &str, edit: impl FnOnce(&mut T)) {
    let path = dir.join(rel);
    let key = SigningKey::from_pem(&fs::read_to_string(fixture_key("upstream.pem")).unwrap())
        .expect("upstream.pem");
    let payload = hexmirror::registry::open_signed(&read(&path), key.public_key())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut value = T::decode(payload.as_slice()).expect("decode payload");
    edit(&mut value);
    fs::write(&path, seal_signed(value.encode_to_vec(), &key)).unwrap();
}

/// Turns the oracle-built upstream in `dir` into one with everything the
/// registry format can carry: beta gets an advisory (on its retired 0.2.0),
/// `published_at` on every release and a dependency with `app` and an
/// explicit `repository`; `/names` gets `updated_at` for every package and
/// `/versions` the matching `with_advisories`.
fn enrich_upstream(dir: &Path) {
    reseal(dir, "packages/beta", |p: &mut package::Package| {
        p.advisories = vec![package::SecurityAdvisory {
            id: "GHSA-beta-0000-0001".into(),
            summary: "beta 0.2.0 leaks secrets".into(),
            html_url: "https://example.invalid/advisories/1".into(),
            severity: Some(package::AdvisorySeverity::SeverityHigh as i32),
            cvss_score: Some(7.5),
            api_url: "https://example.invalid/api/advisories/1".into(),
            aliases: vec!["CVE-2099-0001".into()],
        }];
        for (i, release) in p.releases.iter_mut().enumerate() {
            release.published_at = Some(package::Timestamp {
                seconds: 1_700_000_000 + 86_400 * i as i64,
                nanos: 250_000_000,
            });
            if release.version == "0.2.0" {
                release.advisory_indexes = vec![0];
            }
            if release.version == "0.2.1" {
                let alpha = release
                    .dependencies
                    .iter_mut()
                    .find(|d| d.package == "alpha")
                    .expect("beta 0.2.1 depends on alpha");
                alpha.app = Some("alpha".into());
                alpha.repository = Some("hexpm".into());
            }
        }
    });
    reseal(dir, "names", |n: &mut names::Names| {
        for (i, p) in n.packages.iter_mut().enumerate() {
            p.updated_at = Some(names::Timestamp {
                seconds: 1_710_000_000 + i as i64,
                nanos: 1_000 * i as i32,
            });
        }
    });
    let beta = Registry::load(dir, "hexpm", &public_key(&fixture_key("upstream.pub.pem")))
        .packages
        .remove("beta")
        .unwrap();
    reseal(dir, "versions", |v: &mut versions::Versions| {
        let entry = v.packages.iter_mut().find(|p| p.name == "beta").unwrap();
        entry.with_advisories = beta
            .releases
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.advisory_indexes.is_empty())
            .map(|(i, _)| i as i32)
            .collect();
    });
}

/// `Oracle::fetch` of `package` from repository `repo` at `url`, panicking
/// with hex_core's reason on refusal.
fn oracle_releases(url: &str, repo: &str, key: &Path, package: &str) -> Vec<(String, String)> {
    Oracle::fetch(url, repo, key, package)
        .unwrap_or_else(|e| panic!("oracle fetch {package} from {url} as {repo}: {e}"))
}

/// File names of every tarball under `root/tarballs`, sorted.
fn tarball_names(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(root.join("tarballs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A fresh rebar3 project (own cache) depending on `dep` through the
/// repository `name` served at `url/repos/NAME`, trusting the mirror's key.
fn project_through(dep: (&str, &str), name: &str, url: &str) -> Rebar3Project {
    Rebar3Project::with_repo(
        &[dep],
        name,
        Some(&format!("{url}/repos/{name}")),
        &fixture_key("other.pub.pem"),
    )
}

fn assert_compiled(project: &Rebar3Project, run: &Rebar3Run, apps: &[&str]) {
    assert!(run.success, "rebar3 failed:\n{}", run.output);
    for app in apps {
        assert!(
            project.has_beam(app),
            "{app} was not compiled:\n{}",
            run.output
        );
    }
}

// ---------------------------------------------------------------------------
// The re-signed files, judged by hex_core and by our own decoder
// ---------------------------------------------------------------------------

#[test]
fn hex_core_accepts_the_resigned_repository_only_with_the_mirror_key_and_name() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = synced_mirror(&upstream, &["name = \"mirror\""]);
    let server = mirror.serve();
    let repo_url = format!("{}/repos/mirror", server.url());
    let (mirror_key, upstream_key) = (
        fixture_key("other.pub.pem"),
        fixture_key("upstream.pub.pem"),
    );

    for package in PACKAGES {
        let want = oracle_releases(&upstream.url(), "hexpm", &upstream_key, package);
        let got = oracle_releases(&repo_url, "mirror", &mirror_key, package);
        // Same releases in the same order, with the tarballs' outer checksums:
        // re-signing changes the envelope, never what it vouches for.
        assert_eq!(got, want, "{package}");
        assert!(
            Oracle::fetch(&repo_url, "mirror", &upstream_key, package).is_err(),
            "{package}: the re-signed record verified with the upstream's key"
        );
        assert!(
            Oracle::fetch(&repo_url, "hexpm", &mirror_key, package).is_err(),
            "{package}: the origin check passed for repository hexpm"
        );
    }

    // The served key is the one clients are told to trust.
    let served = http("GET", &format!("{repo_url}/public_key"), &[]);
    assert_eq!(served.status, 200);
    let served = PublicKey::from_pem(&String::from_utf8(served.body).unwrap()).unwrap();
    assert_eq!(served.spki_pem(), public_key(&mirror_key).spki_pem());

    let root = mirror.tree().join("repos/mirror");
    for (file, kind) in [
        ("names", RegistryFile::Names),
        ("versions", RegistryFile::Versions),
        ("packages/beta", RegistryFile::Package("beta")),
    ] {
        Oracle::verify_file(&root.join(file), kind, "mirror", &mirror_key)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
    }
    // hex_core's fetch says only "unverified" for both refusals above; on a
    // file it tells them apart: the signature holds, the origin check fails.
    let err = Oracle::verify_file(
        &root.join("packages/beta"),
        RegistryFile::Package("beta"),
        "hexpm",
        &mirror_key,
    )
    .unwrap_err();
    assert!(err.contains("signature ok"), "{err}");
}

#[test]
fn resigned_payloads_equal_the_upstream_except_for_the_repository() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = synced_mirror(&upstream, &["name = \"mirror\""]);
    let want = Registry::load(
        upstream.dir(),
        "hexpm",
        &public_key(&fixture_key("upstream.pub.pem")),
    );
    let got = Registry::load(
        &mirror.tree().join("repos/mirror"),
        "mirror",
        &public_key(&fixture_key("other.pub.pem")),
    );
    assert_same_payloads(&want, &got, "mirror");
    // hex_core emits the retirement; it must survive with reason and message.
    let retired = got.packages["beta"].releases[1].retired.clone();
    assert_eq!(
        retired,
        Some(package::RetirementStatus {
            reason: package::RetirementReason::RetiredSecurity as i32,
            message: Some("use 0.2.1".into()),
        })
    );
    assert_eq!(got.versions_of("beta").retired, vec![1]);
}

#[test]
fn advisories_timestamps_and_dependency_fields_survive_resigning() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    enrich_upstream(upstream.dir());
    let want = Registry::load(
        upstream.dir(),
        "hexpm",
        &public_key(&fixture_key("upstream.pub.pem")),
    );
    // The fixture really carries what the comparison is about.
    let beta = &want.packages["beta"];
    assert_eq!(beta.advisories.len(), 1);
    assert!(beta.releases.iter().all(|r| r.published_at.is_some()));
    assert_eq!(want.versions_of("beta").with_advisories, vec![1]);
    assert!(want.names.packages.iter().all(|p| p.updated_at.is_some()));
    let alpha_dep = &beta.releases[2].dependencies[0];
    assert_eq!(
        (alpha_dep.app.as_deref(), alpha_dep.repository.as_deref()),
        (Some("alpha"), Some("hexpm"))
    );

    let mirror = synced_mirror(&upstream, &["name = \"mirror\""]);
    let root = mirror.tree().join("repos/mirror");
    let got = Registry::load(&root, "mirror", &public_key(&fixture_key("other.pub.pem")));
    assert_same_payloads(&want, &got, "mirror");
    // The reference client still reads the richer record.
    Oracle::verify_file(
        &root.join("packages/beta"),
        RegistryFile::Package("beta"),
        "mirror",
        &fixture_key("other.pub.pem"),
    )
    .unwrap();
}

// ---------------------------------------------------------------------------
// Curation
// ---------------------------------------------------------------------------

#[test]
fn a_curated_repository_holds_its_roots_and_their_closure_sharing_the_blobs() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = synced_mirror(&upstream, &["name = \"curated\"\npackages = [\"beta\"]"]);
    let tree = mirror.tree();
    let root = tree.join("repos/curated");
    let got = Registry::load(&root, "curated", &public_key(&fixture_key("other.pub.pem")));
    // gamma is reached only as an optional dependency; clients fetch it too.
    assert_eq!(got.names(), ["alpha", "beta", "gamma"]);
    assert_eq!(got.versions_names(), ["alpha", "beta", "gamma"]);
    assert!(!root.join("packages/delta").exists());
    assert!(!root.join("tarballs/delta-1.0.0.tar").exists());
    // The upstream tree still has everything: curation is per repository.
    assert!(tree.join("packages/delta").is_file());

    let tarballs = tarball_names(&root);
    // alpha's three releases, beta's three, gamma's one.
    assert_eq!(tarballs.len(), 3 + 3 + 1, "{tarballs:?}");
    for tar in &tarballs {
        // One blob store: the curated tarball is the upstream tree's file.
        let ino = |p: PathBuf| fs::metadata(&p).unwrap().ino();
        assert_eq!(
            ino(root.join("tarballs").join(tar)),
            ino(tree.join("tarballs").join(tar)),
            "{tar} is a copy, not the same blob"
        );
    }
}

#[test]
fn denied_releases_and_packages_leave_only_their_repository() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    // Two repositories in one sync: each denylist applies to its own only.
    let mirror = synced_mirror(
        &upstream,
        &[
            "name = \"no_alpha_11\"\ndeny = [\"alpha == 1.1.0\"]",
            "name = \"no_delta\"\ndeny = [\"delta\"]",
        ],
    );
    let key = public_key(&fixture_key("other.pub.pem"));
    let tree = mirror.tree();

    let root = tree.join("repos/no_alpha_11");
    let got = Registry::load(&root, "no_alpha_11", &key);
    let alpha: Vec<&str> = got.packages["alpha"]
        .releases
        .iter()
        .map(|r| r.version.as_str())
        .collect();
    assert_eq!(alpha, ["1.0.0", "2.0.0-rc.1"]);
    assert_eq!(got.versions_of("alpha").versions, alpha);
    assert!(!root.join("tarballs/alpha-1.1.0.tar").exists());
    assert!(root.join("tarballs/alpha-1.0.0.tar").is_file());
    assert_eq!(got.names(), ["alpha", "beta", "delta", "gamma"]);

    let root = tree.join("repos/no_delta");
    let got = Registry::load(&root, "no_delta", &key);
    assert_eq!(got.names(), ["alpha", "beta", "gamma"]);
    assert_eq!(got.versions_names(), ["alpha", "beta", "gamma"]);
    assert!(!root.join("packages/delta").exists());
    assert!(!root.join("tarballs/delta-1.0.0.tar").exists());
    assert_eq!(got.versions_of("alpha").versions.len(), 3);
    assert!(root.join("tarballs/alpha-1.1.0.tar").is_file());
}

// ---------------------------------------------------------------------------
// Stock rebar3 against the re-signed repositories. The upstream is dropped
// before rebar3 runs, so every byte comes from the mirror.
// ---------------------------------------------------------------------------

#[test]
fn rebar3_builds_from_the_mirror_under_its_own_name() {
    require_tool("rebar3");
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = synced_mirror(&upstream, &["name = \"mirror\""]);
    drop(upstream);
    let server = mirror.serve();

    let project = project_through(BETA, "mirror", &server.url());
    // rebar3's built-in hexpm repo points at a dead port: the packages can
    // only have come from /repos/mirror, verified with the mirror's key.
    let run = project.compile(DEAD_CDN);
    assert_compiled(&project, &run, &["beta", "alpha", "gamma"]);
    assert!(run.output.contains("alpha v1.1.0"), "{}", run.output);
}

#[test]
fn rebar3_builds_from_the_mirror_as_hexpm_and_only_from_the_resigned_tree() {
    require_tool("rebar3");
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = synced_mirror(&upstream, &["name = \"hexpm\""]);
    drop(upstream);
    let server = mirror.serve();
    let project = || Rebar3Project::new(&[BETA], &fixture_key("other.pub.pem"));

    let resigned = project();
    let run = resigned.compile(&format!("{}/repos/hexpm", server.url()));
    assert_compiled(&resigned, &run, &["beta", "alpha", "gamma"]);

    // The root serves the upstream's signatures byte for byte: the same
    // client with the mirror's key must refuse them.
    let root = project();
    let run = root.compile(&server.url());
    assert!(
        !run.success,
        "the upstream-signed root verified with the mirror's key:\n{}",
        run.output
    );
    assert!(
        run.output.contains("Package not found in any repo: beta"),
        "refused for another reason than the signature:\n{}",
        run.output
    );
}

#[test]
fn rebar3_cannot_resolve_a_package_the_curated_repository_leaves_out() {
    require_tool("rebar3");
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = synced_mirror(&upstream, &["name = \"curated\"\npackages = [\"delta\"]"]);
    drop(upstream);
    let server = mirror.serve();

    let project = project_through(BETA, "curated", &server.url());
    let run = project.compile(DEAD_CDN);
    assert!(
        !run.success,
        "beta resolved through a repository that leaves it out:\n{}",
        run.output
    );
    // rebar3 3.19: "Failed to update package beta from repo curated", then
    // "Package not found in any repo: beta 0.2.1".
    assert!(run.output.contains("from repo curated"), "{}", run.output);
    assert!(run.output.contains("not found"), "{}", run.output);
    assert!(!project.lib_dir("beta").exists());

    // The same setup does build what the repository holds, so the failure
    // above is the omission and not a broken repository.
    let project = project_through(("delta", "1.0.0"), "curated", &server.url());
    let run = project.compile(DEAD_CDN);
    assert_compiled(&project, &run, &["delta"]);
}

// ---------------------------------------------------------------------------
// Key rotation
// ---------------------------------------------------------------------------

/// Runs `hexmirror keygen --out DIR --bits 2048` and returns the RSA key's
/// private and public PEM paths.
fn keygen(dir: &Path) -> (PathBuf, PathBuf) {
    let out = hexmirror()
        .args(["keygen", "--bits", "2048", "--out"])
        .arg(dir)
        .output()
        .expect("run hexmirror keygen");
    assert!(
        out.status.success(),
        "keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (dir.join("hexmirror.pem"), dir.join("hexmirror.pub.pem"))
}

/// Whether `repos/mirror`'s names, versions and every record verify with
/// `key`, and `public_key` serves it.
fn signed_by(mirror: &Mirror, key: &Path) -> bool {
    let root = mirror.tree().join("repos/mirror");
    let key_value = public_key(key);
    let served = fs::read_to_string(root.join("public_key")).unwrap();
    let files_ok = verify_names(&read(&root.join("names")), &key_value, "mirror").is_ok()
        && verify_versions(&read(&root.join("versions")), &key_value, "mirror").is_ok()
        && PACKAGES.iter().all(|p| {
            let file = read(&root.join("packages").join(p));
            verify_package(&file, &key_value, "mirror", p).is_ok()
        });
    let key_served = PublicKey::from_pem(&served).unwrap().spki_pem() == key_value.spki_pem();
    assert_eq!(
        files_ok, key_served,
        "the served public_key disagrees with the signatures"
    );
    files_ok
}

/// Syncs again and asserts the upstream was only asked conditionally and
/// answered 304 each time: nothing changed there, only our key did.
fn resync_unchanged_upstream(mirror: &Mirror, upstream: &TestUpstream) {
    upstream.clear_log();
    let out = mirror.sync();
    assert!(out.ok(), "{out}");
    let requests = upstream.requests();
    assert!(
        requests.iter().all(|r| r.conditional && r.status == 304),
        "{requests:?}"
    );
}

#[test]
fn a_new_signing_key_resigns_everything_without_an_upstream_change() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let mirror = synced_mirror(&upstream, &["name = \"mirror\""]);
    let old = fixture_key("other.pub.pem");
    assert!(signed_by(&mirror, &old));

    let keys = tempfile::TempDir::new().unwrap();
    let (new_secret, new_public) = keygen(keys.path());
    let config = fs::read_to_string(mirror.config()).unwrap();
    let rotated = config.replacen(
        &signing_section(&fixture_key("other.pem")),
        &signing_section(&new_secret),
        1,
    );
    assert_ne!(config, rotated, "the [signing] section was not found");
    fs::write(mirror.config(), rotated).unwrap();

    resync_unchanged_upstream(&mirror, &upstream);
    assert!(
        signed_by(&mirror, &new_public),
        "not re-signed with the new key"
    );
    assert!(!signed_by(&mirror, &old), "still verifies with the old key");

    // Rotating in place (same path, new content) must be noticed as well.
    fs::write(&new_secret, read(&fixture_key("other.pem"))).unwrap();
    resync_unchanged_upstream(&mirror, &upstream);
    assert!(
        signed_by(&mirror, &old),
        "an in-place key change was missed"
    );
    assert!(!signed_by(&mirror, &new_public));
}

/// Regression: a sync with failures used to publish fresh re-signed
/// `/names` and `/versions` for our repositories anyway, listing packages
/// without the ones that failed (beta without the alpha it requires). Our
/// repositories must wait for a complete sync, like the upstream index.
#[test]
fn a_sync_with_failures_moves_our_repositories_on_without_the_quarantined_package() {
    let repos = repositories_config(&fixture_key("other.pem"), &["name = \"mirror\""]);
    let key =
        PublicKey::from_pem(&fs::read_to_string(fixture_key("other.pub.pem")).unwrap()).unwrap();
    let record = |mirror: &Mirror, name: &str| {
        let path = mirror.tree().join("repos/mirror/packages").join(name);
        path.exists().then(|| {
            verify_package(&read(&path), &key, "mirror", name)
                .expect("record verifies")
                .into_inner()
        })
    };
    let versions_of = |mirror: &Mirror, name: &str| -> Vec<String> {
        record(mirror, name)
            .map(|r| r.releases.into_iter().map(|r| r.version).collect())
            .unwrap_or_default()
    };
    // First sync fails on one tarball: our repository is published without
    // alpha, which never verified.
    let upstream = TestUpstream::build(SPEC_SMALL);
    let broken = upstream.dir().join("tarballs/alpha-1.0.0.tar");
    let good = read(&broken);
    fs::remove_file(&broken).unwrap();
    let mirror = Mirror::new(&upstream, &repos);
    let out = mirror.sync();
    assert_eq!(out.code, Some(1), "{out}");
    assert!(mirror.tree().join("repos/mirror/names").is_file(), "{out}");
    assert!(record(&mirror, "alpha").is_none(), "{out}");
    assert_eq!(versions_of(&mirror, "gamma"), ["3.0.0"]);

    // Once alpha verifies, it is published.
    fs::write(&broken, good).unwrap();
    mirror.sync_ok();
    let alpha_before = versions_of(&mirror, "alpha");
    assert_eq!(alpha_before, ["1.0.0", "1.1.0", "2.0.0-rc.1"]);

    // A later sync updates gamma but fails on a new alpha release: gamma
    // moves on, alpha keeps its last good record.
    let spec = format!(
        "{SPEC_SMALL}{{\"alpha\", \"1.2.0\", [], []}}.\n{{\"gamma\", \"3.1.0\", [], []}}.\n"
    );
    rebuild_upstream(&upstream, &spec);
    fs::remove_file(upstream.dir().join("tarballs/alpha-1.2.0.tar")).unwrap();
    let out = mirror.sync();
    assert_eq!(out.code, Some(1), "{out}");
    assert_eq!(versions_of(&mirror, "gamma"), ["3.0.0", "3.1.0"], "{out}");
    assert_eq!(versions_of(&mirror, "alpha"), alpha_before, "{out}");
    mirror.assert_verifies();
}
