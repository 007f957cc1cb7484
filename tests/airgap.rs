//! Across the air gap: a near side exports signed, chained bundles, a far
//! side imports them into its own data directory. The far tree is the near
//! tree byte for byte (but the snapshot manifest, which the far side signs),
//! every broken or out-of-order bundle is refused with the far side
//! unchanged, an interrupted import resumes, and stock rebar3 builds from
//! the far side alone.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// The far side's own repository, for packages published there.
const LOCAL: &str = "local";

/// A near side (mirror of `upstream` with repository `acme`, beta's
/// closure re-signed) with a bundle key, and a far side trusting that key
/// with repository `local` of its own.
struct Gap {
    near: Mirror,
    far: Mirror,
    bundles: TempDir,
}

impl Gap {
    fn new(upstream: &TestUpstream) -> Self {
        let near = Mirror::hosting(upstream, "name = \"acme\"\npackages = [\"beta\"]", "");
        let out = near.run(&["keygen", "--bundle"]);
        assert!(out.ok(), "keygen --bundle: {out}");
        // The far side holds its own copy of the exporter's public key.
        let bundles = TempDir::new().unwrap();
        let trusted = bundles.path().join("exporter.pub.pem");
        fs::copy(near.data_dir().join("keys/bundle.pub.pem"), &trusted).unwrap();
        let far = Mirror::new(upstream, &far_sections(&trusted));
        Self { near, far, bundles }
    }

    /// Where bundle `name` is written.
    fn dir(&self, name: &str) -> PathBuf {
        self.bundles.path().join(name)
    }

    /// `bundle export --out DIR ARGS...` on the near side; must succeed.
    fn export(&self, name: &str, args: &[&str]) -> PathBuf {
        let dir = self.dir(name);
        let mut all = vec!["bundle", "export", "--out", dir.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = self.near.run(&all);
        assert!(out.ok(), "export {name}: {out}");
        dir
    }

    /// `bundle import DIR ARGS...` on the far side.
    fn import(&self, dir: &Path, args: &[&str]) -> Run {
        let mut all = vec!["bundle", "import", dir.to_str().unwrap()];
        all.extend_from_slice(args);
        self.far.run(&all)
    }

    fn import_ok(&self, dir: &Path) -> Run {
        let out = self.import(dir, &[]);
        assert!(out.ok(), "import {}: {out}", dir.display());
        out
    }

    /// The far tree equals the near tree, file for file, byte for byte
    /// (but the snapshot manifest and the far side's own repository), and
    /// `hexmirror verify` passes there.
    fn assert_reproduced(&self) {
        let near = contents(&self.near.tree(), "");
        let far = contents(&self.far.tree(), &format!("repos/{LOCAL}/"));
        assert!(!near.is_empty());
        let only_near: Vec<_> = near.keys().filter(|p| !far.contains_key(*p)).collect();
        let only_far: Vec<_> = far.keys().filter(|p| !near.contains_key(*p)).collect();
        assert!(
            only_near.is_empty() && only_far.is_empty(),
            "trees differ: only near {only_near:?}, only far {only_far:?}"
        );
        for (path, sha) in &near {
            assert_eq!(&far[path], sha, "{path} differs");
        }
        self.far.assert_verifies();
    }
}

fn far_sections(bundle_pub: &Path) -> String {
    format!(
        "{}\n[import]\nbundle_keys = [{:?}]\n",
        repositories_config(
            &fixture_key("other.pem"),
            &[&format!(
                "name = \"{LOCAL}\"\npackages = []\nreserved = [\"inhouse\"]"
            )]
        ),
        bundle_pub.display().to_string()
    )
}

/// Path → SHA-256 of every file of `root` but the manifest files and
/// those under `skip` (if not empty).
fn contents(root: &Path, skip: &str) -> BTreeMap<String, String> {
    let root = fs::canonicalize(root).unwrap();
    hexmirror::store::list_files(&root)
        .unwrap()
        .into_iter()
        .filter(|p| skip.is_empty() || !p.starts_with(skip))
        .map(|p| {
            let sha = hex::encode(Sha256::digest(fs::read(root.join(&p)).unwrap()));
            (p, sha)
        })
        .collect()
}

/// What the far side serves and where its chain stands: the manifest
/// files' bytes, and the database's chain position as `hexmirror verify`
/// and the next import see it.
fn far_state(gap: &Gap) -> (Vec<u8>, PathBuf) {
    let (bytes, _) = hexmirror::store::read_manifest(&gap.far.tree()).unwrap();
    (bytes, fs::read_link(gap.far.tree()).unwrap())
}

/// The upstream after change `n` (1: [`SPEC_SMALL`]): 2 adds a release,
/// 3 a package, 4 retires a release and removes a package, 5 adds another
/// package and 6 and 7 releases of it.
fn spec(n: usize) -> String {
    let mut spec = SPEC_SMALL.to_owned();
    if n >= 2 {
        spec.push_str("{\"alpha\", \"1.2.0\", [], []}.\n");
    }
    if n >= 3 {
        spec.push_str("{\"epsilon\", \"0.1.0\", [{\"alpha\", \"~> 1.2\", false}], []}.\n");
    }
    if n >= 4 {
        spec = spec
            .replace("{\"delta\", \"1.0.0\", [], []}.\n", "")
            .replace(
                "{\"alpha\", \"1.1.0\", [], []}.",
                "{\"alpha\", \"1.1.0\", [], [{retired, 'RETIRED_OTHER', \"use 1.2\"}]}.",
            );
        assert!(
            !spec.contains("delta") && spec.contains("RETIRED_OTHER"),
            "{spec}"
        );
    }
    if n >= 5 {
        spec.push_str("{\"zeta\", \"1.0.0\", [], []}.\n");
    }
    if n >= 6 {
        spec.push_str("{\"zeta\", \"1.1.0\", [], []}.\n");
    }
    if n >= 7 {
        spec.push_str("{\"zeta\", \"1.2.0\", [], []}.\n");
    }
    spec
}

/// The number in `what N` of an import's or export's summary line.
fn count(out: &Run, what: &str) -> usize {
    let text = &out.stdout;
    let at = text
        .find(what)
        .unwrap_or_else(|| panic!("no {what:?} in {out}"));
    text[..at]
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number before {what:?} in {out}"))
}

#[test]
fn a_full_bundle_then_three_increments_reproduce_the_near_tree_and_rebar3_builds_from_it() {
    require_tool("rebar3");
    let upstream = TestUpstream::build(SPEC_SMALL);
    let gap = Gap::new(&upstream);
    let b1 = gap.export("b1", &[]);
    let first = gap.import_ok(&b1);
    assert!(first.stdout.contains("bundle 1 (Full) imported"), "{first}");
    gap.assert_reproduced();

    // The far side hosts a package of its own; imports keep it.
    let token = gap
        .far
        .token(&["--admin", "--name", "ci", "--user", "builder"]);
    {
        let served = gap.far.serve();
        let tarball = gap.bundles.path().join("inhouse-1.0.0.tar");
        Oracle::tarball("inhouse", "1.0.0", &tarball, &[]);
        let api = format!("{}/api/repos/{LOCAL}", served.url());
        let (status, body) = Oracle::api(&api, &token, &["publish", tarball.to_str().unwrap()]);
        assert_eq!(status, 201, "publish on the far side: {body}");
    }
    let local_tarball = format!("repos/{LOCAL}/tarballs/inhouse-1.0.0.tar");

    for n in 2..=4 {
        rebuild_upstream(&upstream, &spec(n));
        gap.near.sync_ok();
        let before = contents(&gap.far.tree(), "");
        let near = contents(&gap.near.tree(), "");
        let dir = gap.export(&format!("b{n}"), &[]);
        let out = gap.import_ok(&dir);
        assert!(
            out.stdout
                .contains(&format!("bundle {n} (Incremental) imported")),
            "{out}"
        );
        gap.assert_reproduced();
        assert!(
            gap.far.tree().join(&local_tarball).is_file(),
            "bundle {n} dropped the far side's own package"
        );
        // An increment carries the new content only, each blob once.
        let new_content: std::collections::BTreeSet<&String> = near
            .values()
            .filter(|sha| !before.values().any(|b| b == *sha))
            .collect();
        assert_eq!(
            count(&out, "blobs read"),
            new_content.len(),
            "bundle {n}: {out}"
        );
    }

    // Stock rebar3 builds from the far side alone: no upstream, no near side.
    let (far, gap_dirs) = (gap.far, gap.bundles);
    drop(gap.near);
    drop(upstream);
    let served = far.serve();
    let project = Rebar3Project::new(&[("beta", "0.2.1")], &fixture_key("upstream.pub.pem"));
    let run = project.compile(&served.url());
    assert!(run.success, "rebar3 through the far side:\n{}", run.output);
    // The far side's catalog followed the imports: its read API knows the
    // newest alpha and no longer the removed delta (under the upstream's
    // name: /api answers for the far side's own repository).
    let api = format!("{}/api/repos/hexpm", served.url());
    let alpha: serde_json::Value =
        serde_json::from_slice(&http("GET", &format!("{api}/packages/alpha"), &[]).body).unwrap();
    assert_eq!(alpha["latest_stable_version"], "1.2.0", "{alpha}");
    assert_eq!(
        alpha["meta"]["description"], "hexmirror test package alpha",
        "{alpha}"
    );
    assert_eq!(
        http("GET", &format!("{api}/packages/delta"), &[]).status,
        404
    );
    assert!(
        run.output.contains("alpha v1.2.0"),
        "the newest alpha arrived: {}",
        run.output
    );
    drop(gap_dirs);
}

#[test]
fn broken_forged_foreign_and_out_of_order_bundles_are_refused_and_change_nothing() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let gap = Gap::new(&upstream);
    let b1 = gap.export("b1", &["--max-volume", "16K"]);
    rebuild_upstream(&upstream, &spec(2));
    gap.near.sync_ok();
    let b2 = gap.export("b2", &[]);
    rebuild_upstream(&upstream, &spec(3));
    gap.near.sync_ok();
    let b3 = gap.export("b3", &[]);

    // Checked before carrying: in order after bundle 1, whole.
    let after = b1.join("hexmirror-bundle.json");
    let check = |dir: &Path| {
        let key = gap.near.data_dir().join("keys/bundle.pub.pem");
        gap.near.run(&[
            "bundle",
            "verify",
            dir.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--after",
            after.to_str().unwrap(),
        ])
    };
    let out = check(&b2);
    assert!(
        out.ok() && out.stdout.contains("ok       volume-0001.tar"),
        "{out}"
    );
    let out = check(&b3);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr.contains("cannot be imported before bundle 2"),
        "{out}"
    );

    // Nothing imported yet: only bundle 1 starts a chain.
    let out = gap.import(&b2, &[]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("is not a full one"), "{out}");
    assert!(!gap.far.tree().exists(), "nothing published");

    // Damaged copies of bundle 1, each refused with the culprit named.
    let copy = |name: &str| {
        let dir = gap.dir(name);
        copy_dir(&b1, &dir);
        dir
    };
    let volumes: Vec<String> = {
        let mut v: Vec<String> = fs::read_dir(&b1)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tar"))
            .collect();
        v.sort();
        v
    };
    assert!(volumes.len() >= 3, "16K volumes: {volumes:?}");
    let flipped = copy("flipped");
    let victim = flipped.join(&volumes[1]);
    let mut bytes = fs::read(&victim).unwrap();
    let at = 512 + 100; // inside the first blob of the volume
    bytes[at] ^= 0xff;
    fs::write(&victim, bytes).unwrap();
    let out = gap.import(&flipped, &[]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr.contains(&volumes[1]) && out.stderr.contains("carry this volume again"),
        "{out}"
    );
    let check = gap
        .far
        .run(&["bundle", "verify", flipped.to_str().unwrap()]);
    assert_eq!(check.code, Some(1), "{check}");
    assert!(
        check.stdout.contains(&format!("DAMAGED  {}", volumes[1])),
        "{check}"
    );
    assert!(
        check.stdout.contains(&format!("ok       {}", volumes[0])),
        "{check}"
    );

    let missing = copy("missing");
    fs::remove_file(missing.join(&volumes[2])).unwrap();
    let out = gap.import(&missing, &[]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr
            .contains(&format!("volume {} is missing", volumes[2])),
        "{out}"
    );

    let forged = copy("forged");
    let manifest = forged.join("hexmirror-bundle.json");
    let text =
        fs::read_to_string(&manifest)
            .unwrap()
            .replacen("\"sequence\":1", "\"sequence\":2", 1);
    fs::write(&manifest, text).unwrap();
    let out = gap.import(&forged, &[]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("signature"), "{out}");

    // A bundle from a key the far side does not trust.
    let stranger = gap.dir("stranger-key");
    fs::create_dir_all(&stranger).unwrap();
    let out = gap
        .near
        .run(&["keygen", "--bundle", "--out", stranger.to_str().unwrap()]);
    assert!(out.ok(), "{out}");
    let foreign = copy("foreign");
    resign(&foreign, &stranger.join("bundle.pem"), |_| {});
    let out = gap.import(&foreign, &[]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("not signed by"), "{out}");
    assert!(
        !gap.far.tree().exists(),
        "no refused bundle published anything"
    );

    // The real bundle 1, then the chain's rules.
    gap.import_ok(&b1);
    let state = far_state(&gap);
    let out = gap.import(&b3, &[]);
    assert!(
        out.stderr.contains("cannot be imported before bundle 2"),
        "gap: {out}"
    );
    let out = gap.import(&b1, &[]);
    assert!(out.stderr.contains("already imported"), "replay: {out}");
    // A fork: bundle 2 signed by the exporter's own key on another parent.
    let fork = gap.dir("fork");
    copy_dir(&b2, &fork);
    resign(&fork, &gap.near.data_dir().join("keys/bundle.pem"), |b| {
        b.previous = Some("0".repeat(64));
    });
    let out = gap.import(&fork, &[]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("a fork"), "{out}");
    assert_eq!(
        far_state(&gap),
        state,
        "refused bundles changed the far side"
    );

    // The right order still works after all of that.
    gap.import_ok(&b2);
    gap.import_ok(&b3);
    gap.assert_reproduced();
}

/// Re-signs the bundle manifest in `dir` with `key` after `edit`.
fn resign(dir: &Path, key: &Path, edit: impl FnOnce(&mut hexmirror::bundle::BundleManifest)) {
    let path = dir.join("hexmirror-bundle.json");
    let file = fs::read(&path).unwrap();
    #[derive(serde::Deserialize)]
    struct Envelope {
        signed: hexmirror::bundle::BundleManifest,
    }
    let mut bundle = serde_json::from_slice::<Envelope>(&file).unwrap().signed;
    edit(&mut bundle);
    let key =
        hexmirror::manifest::ManifestKey::from_pem(&fs::read_to_string(key).unwrap()).unwrap();
    fs::write(&path, hexmirror::bundle::sign_bundle(&bundle, &key)).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn a_split_bundle_imports_like_one_volume_and_a_damaged_volume_resumes_where_it_stopped() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let gap = Gap::new(&upstream);
    let whole = gap.export("whole", &[]);
    // The same bundle again, split: an export with nothing new writes the
    // last bundle again, byte for byte.
    let again = gap.export("again", &[]);
    assert_eq!(
        fs::read(whole.join("hexmirror-bundle.json")).unwrap(),
        fs::read(again.join("hexmirror-bundle.json")).unwrap()
    );
    assert_eq!(
        fs::read(whole.join("volume-0001.tar")).unwrap(),
        fs::read(again.join("volume-0001.tar")).unwrap()
    );

    // A second near side with the same key, exporting its first bundle split.
    let split_near = Mirror::hosting(&upstream, "name = \"acme\"\npackages = [\"beta\"]", "");
    fs::create_dir_all(split_near.data_dir().join("keys")).unwrap();
    for f in ["bundle.pem", "bundle.pub.pem"] {
        fs::copy(
            gap.near.data_dir().join("keys").join(f),
            split_near.data_dir().join("keys").join(f),
        )
        .unwrap();
    }
    let split = gap.dir("split");
    let out = split_near.run(&[
        "bundle",
        "export",
        "--out",
        split.to_str().unwrap(),
        "--max-volume",
        "8K",
    ]);
    assert!(out.ok(), "{out}");
    let volumes = count(&out, "volumes");
    assert!(volumes >= 4, "{out}");
    for v in 1..=volumes {
        let size = fs::metadata(split.join(format!("volume-{v:04}.tar")))
            .unwrap()
            .len();
        assert!(size <= 8192, "volume {v} is {size} bytes");
    }

    // Volume 3 arrives damaged: the import stops there, naming it.
    let damaged = gap.dir("damaged");
    copy_dir(&split, &damaged);
    let victim = damaged.join("volume-0003.tar");
    let good = fs::read(&victim).unwrap();
    let mut bad = good.clone();
    bad[600] ^= 0xff;
    fs::write(&victim, &bad).unwrap();
    let out = gap.import(&damaged, &[]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(out.stderr.contains("volume-0003.tar"), "{out}");
    assert!(!gap.far.tree().exists());

    // Only volume 3 is carried again; the rerun reads only from there on.
    fs::write(&victim, &good).unwrap();
    let out = gap.import_ok(&damaged);
    let (read, already) = (count(&out, "blobs read"), count(&out, "already here"));
    assert!(already > 0, "nothing was kept from the first run: {out}");
    assert_eq!(read + already, carried(&split), "{out}");
    gap.assert_reproduced();

    // A third side takes the unsplit bundle: the same tree.
    let third = Mirror::new(
        &upstream,
        &far_sections(&gap.near.data_dir().join("keys/bundle.pub.pem")),
    );
    let out = third.run(&["bundle", "import", whole.to_str().unwrap()]);
    assert!(out.ok(), "{out}");
    assert_eq!(contents(&third.tree(), ""), contents(&gap.far.tree(), ""));
}

#[test]
fn the_far_side_checks_upstream_signatures_again_with_its_own_key() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let gap = Gap::new(&upstream);
    let b1 = gap.export("b1", &[]);
    // The far side trusts another upstream key than the one that signed
    // the registry files inside: the bundle's own signature is not enough.
    let config = fs::read_to_string(gap.far.config()).unwrap();
    fs::write(
        gap.far.config(),
        config.replace("upstream.pub.pem", "other.pub.pem"),
    )
    .unwrap();
    let out = gap.import(&b1, &[]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr
            .contains("checked with the [upstream] public key"),
        "{out}"
    );
    assert!(!gap.far.tree().exists(), "nothing published");
    let staged = gap.far.data_dir().join("bundles/staging");
    assert!(
        !gap.far.data_dir().join("blobs/sha256").exists()
            || fs::read_dir(gap.far.data_dir().join("blobs/sha256"))
                .unwrap()
                .next()
                .is_none(),
        "unverified content entered the blob store"
    );
    assert!(staged.is_dir(), "what was read stays staged for a retry");
}

/// How many blobs the bundle in `dir` carries, as its manifest lists them.
fn carried(dir: &Path) -> usize {
    let file = fs::read(dir.join("hexmirror-bundle.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(&file).unwrap();
    manifest["signed"]["blobs"].as_object().unwrap().len()
}

/// Unix seconds now.
fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn a_heartbeat_renews_the_far_side_s_expiry_and_health_reports_the_upstream_age() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let gap = Gap::new(&upstream);
    // The near side's manifest vouches for one hour only.
    let hour = now() + 3600;
    gap.near
        .replace_current_manifest(&gap.near.manifest_key(), |m| m.expires_at = hour);
    gap.import_ok(&gap.export("b1", &[]));
    let first = gap.far.current_manifest();
    assert!(
        first.expires_at <= hour,
        "the far side signed past its exporter's expiry"
    );

    // Nothing changed: without --heartbeat the last bundle is written again.
    let out = gap.near.run(&[
        "bundle",
        "export",
        "--out",
        gap.dir("same").to_str().unwrap(),
    ]);
    assert!(
        out.stdout.contains("bundle 1 (Full) written again"),
        "{out}"
    );
    let dir = gap.export("beat", &["--heartbeat"]);
    let out = gap.import_ok(&dir);
    assert!(
        out.stdout
            .contains("bundle 2 (Heartbeat) imported: 0 files changed, 0 blobs read"),
        "{out}"
    );
    let renewed = gap.far.current_manifest();
    assert!(
        renewed.expires_at > hour + 86_400,
        "{} vs {hour}",
        renewed.expires_at
    );
    assert!(renewed.version > first.version);
    assert_eq!(renewed.files, first.files, "a heartbeat changes no file");
    gap.assert_reproduced();

    let served = gap.far.serve();
    let health = http("GET", &format!("{}/health", served.url()), &[]);
    let body: serde_json::Value = serde_json::from_slice(&health.body).unwrap();
    assert_eq!(body["air_gap"]["last_bundle"], 2, "{body}");
    let synced = gap.near.current_manifest().upstream.synced_at;
    let age = body["air_gap"]["upstream_age_secs"].as_u64().unwrap();
    assert!(age <= now() - synced + 1, "{body}");
    assert_eq!(body["status"], "ok", "{body}");
    let metrics = http("GET", &format!("{}/metrics", served.url()), &[]);
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("hexmirror_bundle_sequence 2"), "{text}");
    assert!(
        text.contains(&format!(
            "hexmirror_bundle_upstream_synced_timestamp_seconds {synced}"
        )),
        "{text}"
    );
}

#[test]
fn a_lost_exporter_state_is_rebased_only_on_purpose() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let gap = Gap::new(&upstream);
    gap.import_ok(&gap.export("b1", &[]));
    // A deliberate full bundle continues the chain: no re-base needed.
    rebuild_upstream(&upstream, &spec(2));
    gap.near.sync_ok();
    let full = gap.export("full", &["--full"]);
    let out = gap.import_ok(&full);
    assert!(out.stdout.contains("bundle 2 (Full) imported"), "{out}");
    gap.assert_reproduced();
    // A new far side joins from that full bundle, no --rebase needed
    // (regression: only bundle 1 could start a side).
    let joiner = Mirror::new(
        &upstream,
        &far_sections(&gap.bundles.path().join("exporter.pub.pem")),
    );
    let out = joiner.run(&["bundle", "import", full.to_str().unwrap()]);
    assert!(out.ok(), "{out}");
    assert_eq!(contents(&joiner.tree(), ""), contents(&gap.far.tree(), ""));

    // The exporter loses its state: its next bundle starts a new chain.
    fs::remove_dir_all(gap.near.data_dir().join("bundles/export")).unwrap();
    rebuild_upstream(&upstream, &spec(3));
    gap.near.sync_ok();
    let restart = gap.export("restart", &[]);
    let out = gap.import(&restart, &[]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr.contains("bundle 1 was already imported"),
        "{out}"
    );
    let out = gap.import(&restart, &["--rebase"]);
    assert!(out.ok(), "{out}");
    gap.assert_reproduced();
    // And the new chain goes on from there.
    rebuild_upstream(&upstream, &spec(4));
    gap.near.sync_ok();
    gap.import_ok(&gap.export("next", &[]));
    gap.assert_reproduced();
}

#[test]
fn a_caching_proxy_feeds_an_air_gap() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let near = Mirror::new(&upstream, "\n[proxy]\nenabled = true\n");
    assert!(near.run(&["keygen", "--bundle"]).ok());
    {
        let served = near.serve();
        for path in ["packages/beta", "tarballs/beta-0.2.1.tar", "packages/alpha"] {
            let got = http("GET", &format!("{}/{path}", served.url()), &[]);
            assert_eq!(got.status, 200, "{path}");
        }
    }
    let bundles = TempDir::new().unwrap();
    let dir = bundles.path().join("b1");
    let out = near.run(&["bundle", "export", "--out", dir.to_str().unwrap()]);
    assert!(out.ok(), "{out}");
    let far = Mirror::new(
        &upstream,
        &far_sections(&near.data_dir().join("keys/bundle.pub.pem")),
    );
    let out = far.run(&["bundle", "import", dir.to_str().unwrap()]);
    assert!(out.ok(), "{out}");
    let tree = contents(&far.tree(), "");
    assert_eq!(
        tree.keys().map(String::as_str).collect::<Vec<_>>(),
        ["packages/alpha", "packages/beta", "tarballs/beta-0.2.1.tar"]
    );
    assert_eq!(tree, contents(&near.data_dir().join("proxy"), ""));
}

#[test]
fn kill_9_mid_import_then_import_again_reads_only_what_was_not_stored() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let gap = Gap::new(&upstream);
    let b1 = gap.export("b1", &[]);
    let staging = gap.far.data_dir().join("bundles/staging");
    let mut cmd = hexmirror();
    cmd.args(["bundle", "import", b1.to_str().unwrap(), "--config"])
        .arg(gap.far.config())
        .env("HEXMIRROR_FAULT_STAGE_DELAY_MS", "200")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let staged = || {
        fs::read_dir(&staging)
            .map(|d| {
                d.filter(|e| {
                    let name = e.as_ref().unwrap().file_name();
                    !name.to_string_lossy().starts_with('.')
                })
                .count()
            })
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while staged() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the import staged nothing"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the import ended before the kill"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let kept = staged();
    assert!(
        !gap.far.tree().exists(),
        "a killed import published nothing"
    );

    let out = gap.import_ok(&b1);
    assert_eq!(count(&out, "already here"), kept, "{out}");
    assert_eq!(count(&out, "blobs read"), carried(&b1) - kept, "{out}");
    gap.assert_reproduced();
    assert!(!staging.exists(), "staging is cleared once published");
}

#[test]
fn a_bundle_that_would_overwrite_a_repository_hosted_here_is_refused() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let gap = Gap::new(&upstream);
    // The far side names its own repository like the exporter's.
    let config = fs::read_to_string(gap.far.config()).unwrap();
    fs::write(
        gap.far.config(),
        config.replace(&format!("name = \"{LOCAL}\""), "name = \"acme\""),
    )
    .unwrap();
    let out = gap.import(&gap.export("b1", &[]), &[]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr
            .contains("repository acme is hosted on this side"),
        "{out}"
    );
    assert!(!gap.far.tree().exists());
}

#[test]
fn a_far_side_that_lost_content_the_chain_assumes_is_told_to_rebase() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let gap = Gap::new(&upstream);
    gap.import_ok(&gap.export("b1", &[]));
    rebuild_upstream(&upstream, &spec(2));
    gap.near.sync_ok();
    let b2 = gap.export("b2", &[]);
    // The far side's copy of gamma's tarball is gone (a partial restore).
    let gamma = fs::read(gap.far.tree().join("tarballs/gamma-3.0.0.tar")).unwrap();
    let sha = hex::encode(Sha256::digest(&gamma));
    fs::remove_file(
        gap.far
            .data_dir()
            .join(format!("blobs/sha256/{}/{sha}", &sha[..2])),
    )
    .unwrap();
    let out = gap.import(&b2, &[]);
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr.contains("tarballs/gamma-3.0.0.tar") && out.stderr.contains("--rebase"),
        "{out}"
    );
    assert!(
        !gap.far.data_dir().join("bundles/staging").exists()
            || fs::read_dir(gap.far.data_dir().join("bundles/staging"))
                .unwrap()
                .next()
                .is_none(),
        "refused before reading anything"
    );
}

#[test]
fn a_proxied_tarball_no_served_record_lists_is_left_out_and_the_bundle_imports() {
    let with_epsilon =
        |version: &str| format!("{SPEC_SMALL}{{\"epsilon\", \"{version}\", [], []}}.\n");
    let upstream = TestUpstream::build(SPEC_SMALL);
    let near = Mirror::new(&upstream, "\n[proxy]\nenabled = true\n");
    assert!(near.run(&["keygen", "--bundle"]).ok());
    near.sync_ok();
    // A package newer than the last sync: the proxy fetches its record and
    // a tarball the record lists.
    rebuild_upstream(&upstream, &with_epsilon("0.1.0"));
    {
        let served = near.serve();
        for path in ["packages/epsilon", "tarballs/epsilon-0.1.0.tar"] {
            let got = http("GET", &format!("{}/{path}", served.url()), &[]);
            assert_eq!(got.status, 200, "{path}");
        }
    }
    // Then that release is reverted upstream; the next sync serves the
    // package's record, which no longer lists the tarball the proxy keeps.
    rebuild_upstream(&upstream, &with_epsilon("0.2.0"));
    near.sync_ok();
    let stray = "tarballs/epsilon-0.1.0.tar";
    assert!(near.data_dir().join("proxy").join(stray).is_file());

    let bundles = TempDir::new().unwrap();
    let far = Mirror::new(
        &upstream,
        &far_sections(&near.data_dir().join("keys/bundle.pub.pem")),
    );
    let export = |name: &str| {
        let dir = bundles.path().join(name);
        let out = near.run(&["bundle", "export", "--out", dir.to_str().unwrap()]);
        assert!(out.ok(), "{out}");
        (dir, out)
    };
    let (b1, out) = export("b1");
    assert!(
        out.stderr.contains(stray) && out.stderr.contains("left out of the bundle"),
        "the export says what it left out and why: {out}"
    );
    let out = far.run(&["bundle", "import", b1.to_str().unwrap()]);
    assert!(out.ok(), "{out}");
    let tree = contents(&far.tree(), "");
    assert!(!tree.contains_key(stray), "{tree:?}");
    assert_eq!(tree, contents(&near.tree(), ""));

    // The chain goes on past it.
    rebuild_upstream(
        &upstream,
        &format!(
            "{}{{\"zeta\", \"1.0.0\", [], []}}.\n",
            with_epsilon("0.2.0")
        ),
    );
    near.sync_ok();
    let (b2, _) = export("b2");
    let out = far.run(&["bundle", "import", b2.to_str().unwrap()]);
    assert!(out.ok(), "{out}");
    assert_eq!(contents(&far.tree(), ""), contents(&near.tree(), ""));
}

/// `bundle export --out DIR` on the near side, killed (SIGKILL) at fault
/// point `point` of the export; the directory.
fn export_killed_at(gap: &Gap, name: &str, point: &str) -> PathBuf {
    use std::os::unix::process::ExitStatusExt;
    let dir = gap.dir(name);
    let mut cmd = hexmirror();
    cmd.args([
        "bundle",
        "export",
        "--out",
        dir.to_str().unwrap(),
        "--config",
    ])
    .arg(gap.near.config())
    .env("HEXMIRROR_FAULT_EXPORT_KILL", point);
    let out = run_with_input(cmd, std::time::Duration::from_secs(60), None);
    assert_eq!(
        out.status.signal(),
        Some(9),
        "the export was not killed at {point}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

#[test]
fn an_export_killed_at_any_point_then_run_again_gives_bundles_the_far_side_chains() {
    let upstream = TestUpstream::build(SPEC_SMALL);
    let gap = Gap::new(&upstream);
    gap.import_ok(&gap.export("b1", &[]));
    let manifest = |dir: &Path| dir.join("hexmirror-bundle.json");
    let advance = |n: usize| {
        rebuild_upstream(&upstream, &spec(n));
        gap.near.sync_ok();
    };
    // Imports `dir`, which must be increment `n` of the chain.
    let imports_as = |dir: &Path, n: usize| {
        let out = gap.import_ok(dir);
        let said = format!("bundle {n} (Incremental) imported");
        assert!(out.stdout.contains(&said), "{out}");
    };

    // Killed with the volumes and the kept copy written, before the state
    // names bundle 2: the output is no bundle, the kept copy is no bundle
    // of the chain, and the rerun into the output makes bundle 2 of what
    // is served then.
    advance(2);
    let b2 = export_killed_at(&gap, "b2", "kept");
    assert!(!manifest(&b2).exists());
    let elsewhere = gap.dir("b2-kept");
    let out = gap.near.run(&[
        "bundle",
        "export",
        "--out",
        elsewhere.to_str().unwrap(),
        "--sequence",
        "2",
    ]);
    assert!(out.stderr.contains("there is no bundle 2"), "{out}");
    advance(3);
    gap.export("b2", &[]);
    imports_as(&b2, 2);
    gap.assert_reproduced();

    // Killed once bundle 3 is recorded, before its manifest is in the
    // output: the rerun writes bundle 3 though more changed since, since
    // the far side takes nothing later before it; the next export carries
    // the rest.
    advance(4);
    let b3 = export_killed_at(&gap, "b3", "record");
    assert!(!manifest(&b3).exists());
    advance(5);
    let rerun = gap.dir("b3-again");
    let out = gap
        .near
        .run(&["bundle", "export", "--out", rerun.to_str().unwrap()]);
    assert!(
        out.stdout.contains("bundle 3 (Incremental) written again"),
        "{out}"
    );
    imports_as(&rerun, 3);
    imports_as(&gap.export("b4", &[]), 4);
    gap.assert_reproduced();

    // Killed once bundle 5's manifest is in the output: that copy is
    // whole and imports; the rerun into the same directory finishes the
    // export with the same bytes, and the chain goes on from it.
    advance(6);
    let b5 = export_killed_at(&gap, "b5", "output");
    let carried = fs::read(manifest(&b5)).unwrap();
    imports_as(&b5, 5);
    gap.export("b5", &[]);
    assert_eq!(fs::read(manifest(&b5)).unwrap(), carried);
    advance(7);
    imports_as(&gap.export("b6", &[]), 6);
    gap.assert_reproduced();
}
