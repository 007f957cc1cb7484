//! Synthetic signed Hex upstream for the benchmarks (see BENCHMARKS.md).
//!
//! ```sh
//! cargo run --release --example gen_upstream -- --scale 0.1 --out /tmp/up \
//!     --key tests/fixtures/keys/upstream.pem --repo hexpm
//! cargo run --release --example gen_upstream -- --out /tmp/up \
//!     --key tests/fixtures/keys/upstream.pem --mutate 0.01
//! ```
//!
//! `--scale 1.0` is shaped like hex.pm today: about 21,000 packages, about
//! 12 releases each on average with a long tail up to a few hundred (log-normal),
//! dependency graphs with optional and cross-package requirements (popular
//! packages are depended on far more often), about 2.5% retired releases, and
//! tarballs whose compressed size is log-normal (median ~14 KB, mean ~40 KB,
//! a few MB at most), so about 10 GB of tarballs in all, like hex.pm.
//!
//! Everything is synthetic but valid: outer tarball with VERSION "3",
//! CHECKSUM (uppercase hex SHA-256 of VERSION, metadata.config and
//! contents.tar.gz), hex_core-style `metadata.config`, and a real deflate
//! `contents.tar.gz` holding a small source file plus text filler; registry
//! files are protobuf in the gzipped `Signed` envelope, signed with `--key`.
//! Output is deterministic for a given `--scale` and `--seed`; the work is
//! spread over all cores (per-release RNGs, so the bytes do not depend on
//! scheduling).
//!
//! `--mutate FRACTION` edits an existing upstream instead: FRACTION of the
//! packages get one new release each (a patch bump of their latest), and
//! their records, `/names` and `/versions` are re-signed and rewritten
//! atomically (temp file + rename); every other file is left untouched, so
//! conditional requests for them still answer 304.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use clap::Parser;
use flate2::Compression;
use flate2::write::GzEncoder;
use hexmirror::registry::proto::{names, package, signed::Signed, versions};
use hexmirror::registry::{SigningKey, gunzip, seal_signed};
use hexmirror::version::{Requirement, Version};
use prost::Message;
use sha2::{Digest, Sha256};

#[derive(Parser)]
#[command(about = "Generate a synthetic signed Hex upstream for benchmarks")]
struct Args {
    /// 1.0 is about hex.pm's size today (~21,000 packages, ~250,000 releases, ~10 GB).
    #[arg(long, default_value_t = 0.02)]
    scale: f64,
    /// Output directory (the upstream's document root).
    #[arg(long)]
    out: PathBuf,
    /// RSA private key (PEM) that signs the registry files.
    #[arg(long)]
    key: PathBuf,
    /// Repository name written into every payload.
    #[arg(long, default_value = "hexpm")]
    repo: String,
    /// RNG seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Instead of generating, give FRACTION of the packages of `--out` one new release each.
    #[arg(long)]
    mutate: Option<f64>,
    /// Worker threads (default: available parallelism).
    #[arg(long)]
    threads: Option<usize>,
}

/// Packages at scale 1.0.
const FULL_PACKAGES: f64 = 21_000.0;
const BASE_TIME: i64 = 1_400_000_000; // 2014-05
const SPAN: i64 = 380_000_000; // ~12 years

struct Dep {
    package: String,
    requirement: String,
    optional: bool,
}

struct Rel {
    version: String,
    deps: Vec<Dep>,
    retired: Option<(i32, String)>,
    size: usize,
    published: i64,
}

struct Pkg {
    name: String,
    mix: bool,
    releases: Vec<Rel>,
}

fn main() {
    let args = Args::parse();
    let pem = fs::read_to_string(&args.key)
        .unwrap_or_else(|e| die(&format!("{}: {e}", args.key.display())));
    let key =
        SigningKey::from_pem(&pem).unwrap_or_else(|e| die(&format!("{}: {e}", args.key.display())));
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let started = Instant::now();
    match args.mutate {
        Some(fraction) => mutate(&args, &key, fraction, threads),
        None => generate(&args, &key, threads),
    }
    eprintln!(
        "gen_upstream: done in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

fn die(msg: &str) -> ! {
    eprintln!("gen_upstream: {msg}");
    std::process::exit(2);
}

// ---------------------------------------------------------------------------
// Random shapes
// ---------------------------------------------------------------------------

fn normal(rng: &mut fastrand::Rng) -> f64 {
    // Box-Muller.
    let u1 = rng.f64().max(1e-12);
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn lognormal(rng: &mut fastrand::Rng, median: f64, sigma: f64) -> f64 {
    median * (sigma * normal(rng)).exp()
}

fn mix_seed(seed: u64, a: u64, b: u64) -> u64 {
    // splitmix64 over the three values.
    let mut z =
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const SYLLABLES: &[&str] = &[
    "ex",
    "plug",
    "phx",
    "ecto",
    "jas",
    "on",
    "cow",
    "boy",
    "tele",
    "metry",
    "gen",
    "stage",
    "absin",
    "the",
    "nim",
    "ble",
    "pool",
    "boy",
    "mint",
    "finch",
    "tesla",
    "hackney",
    "cert",
    "ifi",
    "ssl",
    "verify",
    "fun",
    "castore",
    "decimal",
    "telemetry",
    "poison",
    "credo",
    "dialyx",
    "ir",
    "bunt",
    "file",
    "system",
    "earmark",
    "parser",
    "makeup",
    "elixir",
    "erlang",
    "mime",
    "cache",
    "redix",
    "oban",
    "swoosh",
    "bamboo",
    "ranch",
    "gun",
    "hpax",
    "nimble",
    "options",
    "csv",
    "yaml",
    "toml",
    "uuid",
    "ulid",
    "hash",
    "crypto",
    "jose",
    "joken",
    "guardian",
    "bcrypt",
    "argon",
    "comeonin",
    "live",
    "view",
    "html",
    "heex",
    "floki",
    "mox",
    "bypass",
    "ex_unit",
    "stream",
    "data",
    "faker",
    "timex",
    "tz",
    "calendar",
    "geo",
    "postgis",
    "postgrex",
    "myxql",
    "tds",
    "sqlite",
    "db",
    "connection",
    "broadway",
    "kafka",
    "rabbit",
    "amqp",
    "grpc",
    "protobuf",
    "thrift",
    "nats",
];

fn package_names(n: usize, rng: &mut fastrand::Rng) -> Vec<String> {
    let mut seen = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let parts = 1 + rng.usize(0..3);
        let mut name = String::new();
        for i in 0..parts {
            if i > 0 && rng.bool() {
                name.push('_');
            }
            name.push_str(SYLLABLES[rng.usize(0..SYLLABLES.len())]);
        }
        if seen.contains(&name) {
            let _ = write!(name, "_{}", rng.usize(1..100));
            if seen.contains(&name) {
                let _ = write!(name, "{}", out.len());
            }
        }
        if seen.insert(name.clone()) {
            out.push(name);
        }
    }
    out
}

/// An ascending version history of `count` releases (pre-releases sort before
/// their release, so emitting `X.Y.0-rc.N` just before `X.Y.0` keeps order).
fn version_history(count: usize, rng: &mut fastrand::Rng) -> Vec<String> {
    let (mut major, mut minor, mut patch) = if rng.u8(..) < 90 {
        (0u64, 1u64, 0u64)
    } else {
        (1, 0, 0)
    };
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        if !out.is_empty() {
            let r = rng.u32(0..100);
            if r < 3 {
                major += 1;
                minor = 0;
                patch = 0;
            } else if r < 25 {
                minor += 1;
                patch = 0;
            } else {
                patch += 1;
            }
            // A few releases get release candidates first.
            if patch == 0 && rng.u32(0..100) < 15 && out.len() + 2 <= count {
                for rc in 0..1 + rng.usize(0..2) {
                    if out.len() + 1 < count {
                        out.push(format!("{major}.{minor}.{patch}-rc.{rc}"));
                    }
                }
            }
        }
        out.push(format!("{major}.{minor}.{patch}"));
    }
    out.truncate(count);
    out
}

fn plan(scale: f64, seed: u64) -> Vec<Pkg> {
    let n = ((FULL_PACKAGES * scale).round() as usize).max(2);
    let mut rng = fastrand::Rng::with_seed(seed);
    let names = package_names(n, &mut rng);
    // Versions first: dependencies need their targets' histories.
    let histories: Vec<Vec<String>> = (0..n)
        .map(|i| {
            let mut r = fastrand::Rng::with_seed(mix_seed(seed, 1, i as u64));
            // Median 5.5, sigma 1.3: mean ~12, a tail into the hundreds.
            let count = lognormal(&mut r, 5.5, 1.3).round().clamp(1.0, 400.0) as usize;
            version_history(count, &mut r)
        })
        .collect();
    let mut pkgs = Vec::with_capacity(n);
    for (i, name) in names.iter().enumerate() {
        let mut r = fastrand::Rng::with_seed(mix_seed(seed, 2, i as u64));
        let history = &histories[i];
        // Package-level dependency set: ~2.5 on average, popular packages
        // (low indexes) far more likely to be chosen (u^3 skew).
        let ndeps = match r.u32(0..100) {
            0..=24 => 0,
            25..=44 => 1,
            45..=64 => 2,
            65..=79 => 3,
            80..=89 => 5,
            _ => 5 + r.usize(0..6),
        };
        let mut targets: Vec<(usize, bool, f64)> = Vec::new();
        for _ in 0..ndeps {
            let u = r.f64();
            let t = ((u * u * u) * n as f64) as usize;
            if t != i && !targets.iter().any(|x| x.0 == t) {
                // (target, optional, the fraction of the history from which it is used)
                targets.push((t, r.u32(0..100) < 12, r.f64() * 0.6));
            }
        }
        let mut published = BASE_TIME + r.i64(0..SPAN / 2);
        let releases = history
            .iter()
            .enumerate()
            .map(|(j, version)| {
                published += r.i64(3_600..(SPAN / 2 / history.len() as i64).max(7_200));
                let progress = j as f64 / history.len() as f64;
                let deps = targets
                    .iter()
                    .filter(|(_, _, from)| progress >= *from)
                    .map(|&(t, optional, _)| Dep {
                        package: names[t].clone(),
                        requirement: requirement_for(&histories[t], progress, &mut r),
                        optional,
                    })
                    .collect();
                let retired = (r.u32(0..1000) < 25).then(|| {
                    let reason = r.i32(0..5);
                    (
                        reason,
                        [
                            "security fix in a later release",
                            "use the next release",
                            "renamed",
                            "broken build",
                            "deprecated",
                        ][reason as usize]
                            .to_string(),
                    )
                });
                // Compressed size: median 14 KB, mean ~40 KB, capped at 8 MB.
                let size = lognormal(&mut r, 14_000.0, 1.45).clamp(1_500.0, 8_000_000.0) as usize;
                Rel {
                    version: version.clone(),
                    deps,
                    retired,
                    size,
                    published,
                }
            })
            .collect();
        pkgs.push(Pkg {
            name: name.clone(),
            mix: r.u32(0..100) < 70,
            releases,
        });
    }
    pkgs
}

/// A requirement on a target package, pinned near the target release that
/// was current at `progress` through the depender's history.
fn requirement_for(history: &[String], progress: f64, rng: &mut fastrand::Rng) -> String {
    let stable: Vec<&String> = history.iter().filter(|v| !v.contains('-')).collect();
    if stable.is_empty() || rng.u32(0..100) < 8 {
        return ">= 0.0.0".into();
    }
    let at = ((progress * stable.len() as f64) as usize).min(stable.len() - 1);
    let v = Version::parse(stable[at]).expect("generated version parses");
    let req = match rng.u32(0..100) {
        0..=59 => format!("~> {}.{}", v.major(), v.minor()),
        60..=79 => format!("~> {}.{}.{}", v.major(), v.minor(), v.patch()),
        80..=89 => format!(">= {}.{}.{}", v.major(), v.minor(), v.patch()),
        _ => format!("~> {}.{} or ~> {}.0", v.major(), v.minor(), v.major() + 1),
    };
    debug_assert!(Requirement::parse(&req).is_ok(), "{req}");
    req
}

// ---------------------------------------------------------------------------
// Tarballs
// ---------------------------------------------------------------------------

const WORDS: &[&str] = &[
    "def",
    "end",
    "do",
    "fn",
    "case",
    "when",
    "with",
    "else",
    "module",
    "export",
    "import",
    "alias",
    "require",
    "use",
    "spec",
    "type",
    "state",
    "conn",
    "socket",
    "assigns",
    "params",
    "opts",
    "acc",
    "list",
    "map",
    "reduce",
    "filter",
    "binary",
    "atom",
    "integer",
    "ok",
    "error",
    "nil",
    "true",
    "false",
    "receive",
    "after",
    "send",
    "spawn",
    "GenServer",
    "call",
    "cast",
    "handle_info",
    "init",
    "start_link",
    "Enum",
    "Map",
    "Keyword",
    "String",
    "Logger",
    "->",
    "=>",
    "|>",
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    ",",
    ".",
    ":",
    "=",
];

/// Source-like filler text of about `len` bytes (compresses ~2x with gzip -1, like the mix of source and assets in real packages).
fn filler(len: usize, rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        out.extend(std::iter::repeat_n(b' ', rng.usize(0..4)));
        for _ in 0..3 + rng.usize(0..8) {
            out.extend_from_slice(WORDS[rng.usize(0..WORDS.len())].as_bytes());
            if rng.u8(..) < 60 {
                let _ = write!(&mut out, "_{}", rng.u16(..));
            }
            out.push(b' ');
        }
        out.push(b'\n');
    }
    out.truncate(len);
    out
}

fn header(len: usize) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(len as u64);
    h.set_mode(0o644);
    h.set_mtime(946_684_800);
    h.set_cksum();
    h
}

fn erl_bin(s: &str) -> String {
    format!("<<\"{s}\">>")
}

fn metadata(pkg: &Pkg, rel: &Rel, files: &[String]) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "{{<<\"app\">>,{}}}.", erl_bin(&pkg.name));
    let tool = if pkg.mix { "mix" } else { "rebar3" };
    let _ = writeln!(m, "{{<<\"build_tools\">>,[{}]}}.", erl_bin(tool));
    let _ = writeln!(
        m,
        "{{<<\"description\">>,<<\"Synthetic benchmark package {}\">>}}.",
        pkg.name
    );
    let files: Vec<String> = files.iter().map(|f| erl_bin(f)).collect();
    let _ = writeln!(m, "{{<<\"files\">>,[{}]}}.", files.join(","));
    let _ = writeln!(m, "{{<<\"licenses\">>,[<<\"Apache-2.0\">>]}}.");
    let _ = writeln!(
        m,
        "{{<<\"links\">>,[{{<<\"GitHub\">>,<<\"https://example.invalid/{}\">>}}]}}.",
        pkg.name
    );
    let _ = writeln!(m, "{{<<\"name\">>,{}}}.", erl_bin(&pkg.name));
    let reqs: Vec<String> = rel
        .deps
        .iter()
        .map(|d| {
            format!(
                "[{{<<\"app\">>,{p}}},{{<<\"name\">>,{p}}},{{<<\"optional\">>,{o}}},{{<<\"repository\">>,<<\"hexpm\">>}},{{<<\"requirement\">>,{r}}}]",
                p = erl_bin(&d.package),
                o = d.optional,
                r = erl_bin(&d.requirement)
            )
        })
        .collect();
    let _ = writeln!(m, "{{<<\"requirements\">>,[{}]}}.", reqs.join(","));
    let _ = writeln!(m, "{{<<\"version\">>,{}}}.", erl_bin(&rel.version));
    m
}

/// Builds one Hex tarball; returns (tarball, inner checksum).
fn tarball(pkg: &Pkg, rel: &Rel, rng: &mut fastrand::Rng) -> (Vec<u8>, [u8; 32]) {
    let name = &pkg.name;
    let mut files: Vec<(String, Vec<u8>)> = if pkg.mix {
        vec![
            (
                format!("lib/{name}.ex"),
                format!("defmodule Synthetic.M{} do\n  def version, do: \"{}\"\nend\n", fxhash(name), rel.version).into_bytes(),
            ),
            (
                "mix.exs".into(),
                format!(
                    "defmodule Synthetic.M{}.MixProject do\n  use Mix.Project\n  def project, do: [app: :{name}, version: \"{}\"]\nend\n",
                    fxhash(name),
                    rel.version
                )
                .into_bytes(),
            ),
        ]
    } else {
        vec![
            (format!("src/{name}.erl"), format!("-module({name}).\n-export([version/0]).\nversion() -> <<\"{}\">>.\n", rel.version).into_bytes()),
            (
                format!("src/{name}.app.src"),
                format!("{{application,{name},[{{description,\"synthetic\"}},{{vsn,\"{}\"}},{{applications,[kernel,stdlib]}}]}}.\n", rel.version)
                    .into_bytes(),
            ),
            ("rebar.config".into(), b"{erl_opts, [debug_info]}.\n".to_vec()),
        ]
    };
    // Filler sized so the compressed tarball lands near the planned size.
    let budget = rel.size.saturating_sub(1_500);
    if budget > 0 {
        files.push(("priv/data.txt".into(), filler(budget * 2, rng)));
    }
    let paths: Vec<String> = files.iter().map(|f| f.0.clone()).collect();
    let meta = metadata(pkg, rel, &paths);
    let mut contents = tar::Builder::new(GzEncoder::new(
        Vec::with_capacity(rel.size + 4096),
        Compression::fast(),
    ));
    for (path, data) in &files {
        contents
            .append_data(&mut header(data.len()), path, data.as_slice())
            .expect("tar to memory");
    }
    let contents = contents.into_inner().expect("tar").finish().expect("gzip");
    let inner: [u8; 32] = Sha256::new()
        .chain_update(b"3")
        .chain_update(meta.as_bytes())
        .chain_update(&contents)
        .finalize()
        .into();
    let checksum = hex::encode_upper(inner);
    let mut outer = tar::Builder::new(Vec::with_capacity(contents.len() + meta.len() + 8192));
    for (member, data) in [
        ("VERSION", b"3".as_slice()),
        ("CHECKSUM", checksum.as_bytes()),
        ("metadata.config", meta.as_bytes()),
        ("contents.tar.gz", contents.as_slice()),
    ] {
        outer
            .append_data(&mut header(data.len()), member, data)
            .expect("tar to memory");
    }
    (outer.into_inner().expect("tar"), inner)
}

fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    }) % 1_000_000_007
}

fn ts(seconds: i64) -> package::Timestamp {
    package::Timestamp { seconds, nanos: 0 }
}

fn release_proto(rel: &Rel, inner: [u8; 32], outer: [u8; 32]) -> package::Release {
    package::Release {
        version: rel.version.clone(),
        inner_checksum: inner.to_vec(),
        dependencies: rel
            .deps
            .iter()
            .map(|d| package::Dependency {
                package: d.package.clone(),
                requirement: d.requirement.clone(),
                optional: d.optional.then_some(true),
                app: Some(d.package.clone()),
                repository: None,
            })
            .collect(),
        retired: rel
            .retired
            .as_ref()
            .map(|(reason, message)| package::RetirementStatus {
                reason: *reason,
                message: Some(message.clone()),
            }),
        outer_checksum: Some(outer.to_vec()),
        advisory_indexes: vec![],
        published_at: Some(ts(rel.published)),
    }
}

/// Writes `bytes` to `path` via a temp file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("gen-tmp");
    let mut f = fs::File::create(&tmp).unwrap_or_else(|e| die(&format!("{}: {e}", tmp.display())));
    f.write_all(bytes)
        .unwrap_or_else(|e| die(&format!("{}: {e}", tmp.display())));
    drop(f);
    fs::rename(&tmp, path).unwrap_or_else(|e| die(&format!("{}: {e}", path.display())));
}

/// Builds and writes every tarball of `pkg` and its signed record.
fn emit_package(pkg: &Pkg, idx: usize, seed: u64, out: &Path, repo: &str, key: &SigningKey) -> u64 {
    let mut bytes = 0u64;
    let mut releases = Vec::with_capacity(pkg.releases.len());
    for (j, rel) in pkg.releases.iter().enumerate() {
        let mut rng = fastrand::Rng::with_seed(mix_seed(seed, 3 + idx as u64, j as u64));
        let (tar, inner) = tarball(pkg, rel, &mut rng);
        let outer: [u8; 32] = Sha256::digest(&tar).into();
        bytes += tar.len() as u64;
        fs::write(
            out.join(format!("tarballs/{}-{}.tar", pkg.name, rel.version)),
            &tar,
        )
        .unwrap_or_else(|e| die(&format!("write tarball: {e}")));
        releases.push(release_proto(rel, inner, outer));
    }
    let record = package::Package {
        releases,
        name: pkg.name.clone(),
        repository: repo.to_string(),
        advisories: vec![],
    };
    let sealed = seal_signed(record.encode_to_vec(), key);
    bytes += sealed.len() as u64;
    fs::write(out.join("packages").join(&pkg.name), sealed)
        .unwrap_or_else(|e| die(&format!("write record: {e}")));
    bytes
}

fn generate(args: &Args, key: &SigningKey, threads: usize) {
    let out = &args.out;
    for d in ["packages", "tarballs"] {
        fs::create_dir_all(out.join(d)).unwrap_or_else(|e| die(&format!("{}: {e}", out.display())));
    }
    let mut pkgs = plan(args.scale, args.seed);
    pkgs.sort_by(|a, b| a.name.cmp(&b.name));
    let releases: usize = pkgs.iter().map(|p| p.releases.len()).sum();
    let max = pkgs.iter().map(|p| p.releases.len()).max().unwrap_or(0);
    let retired: usize = pkgs
        .iter()
        .flat_map(|p| &p.releases)
        .filter(|r| r.retired.is_some())
        .count();
    let deps: usize = pkgs
        .iter()
        .flat_map(|p| &p.releases)
        .map(|r| r.deps.len())
        .sum();
    let optional: usize = pkgs
        .iter()
        .flat_map(|p| &p.releases)
        .flat_map(|r| &r.deps)
        .filter(|d| d.optional)
        .count();
    eprintln!(
        "gen_upstream: scale {}: {} packages, {releases} releases (max {max} in one package), {retired} retired, \
         {deps} dependency edges ({optional} optional); {threads} threads",
        args.scale,
        pkgs.len()
    );

    // Largest packages first so the threads finish together.
    let mut order: Vec<usize> = (0..pkgs.len()).collect();
    order.sort_by_key(|&i| {
        std::cmp::Reverse(pkgs[i].releases.iter().map(|r| r.size).sum::<usize>())
    });
    let next = AtomicUsize::new(0);
    let total: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut bytes = 0;
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&i) = order.get(k) else { break };
                        bytes += emit_package(&pkgs[i], i, args.seed, out, &args.repo, key);
                    }
                    bytes
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("worker")).sum()
    });

    let names = names::Names {
        packages: pkgs
            .iter()
            .map(|p| names::Package {
                name: p.name.clone(),
                updated_at: p.releases.last().map(|r| names::Timestamp {
                    seconds: r.published,
                    nanos: 0,
                }),
            })
            .collect(),
        repository: args.repo.clone(),
    };
    let versions = versions::Versions {
        packages: pkgs
            .iter()
            .map(|p| versions::Package {
                name: p.name.clone(),
                versions: p.releases.iter().map(|r| r.version.clone()).collect(),
                retired: p
                    .releases
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.retired.is_some())
                    .map(|(k, _)| k as i32)
                    .collect(),
                with_advisories: vec![],
            })
            .collect(),
        repository: args.repo.clone(),
    };
    write_atomic(&out.join("names"), &seal_signed(names.encode_to_vec(), key));
    write_atomic(
        &out.join("versions"),
        &seal_signed(versions.encode_to_vec(), key),
    );
    write_atomic(
        &out.join("public_key"),
        key.public_key().spki_pem().as_bytes(),
    );
    eprintln!(
        "gen_upstream: wrote {} ({:.1} MB of tarballs and records)",
        out.display(),
        total as f64 / 1e6
    );
}

// ---------------------------------------------------------------------------
// Mutation
// ---------------------------------------------------------------------------

fn read_payload(path: &Path) -> Vec<u8> {
    let raw = fs::read(path).unwrap_or_else(|e| die(&format!("{}: {e}", path.display())));
    let raw = gunzip(&raw).unwrap_or_else(|e| die(&format!("{}: {e}", path.display())));
    Signed::decode(raw.as_slice())
        .unwrap_or_else(|e| die(&format!("{}: {e}", path.display())))
        .payload
}

fn mutate(args: &Args, key: &SigningKey, fraction: f64, threads: usize) {
    let out = &args.out;
    let versions_raw =
        fs::read(out.join("versions")).unwrap_or_else(|e| die(&format!("versions: {e}")));
    let mut names =
        names::Names::decode(read_payload(&out.join("names")).as_slice()).expect("names payload");
    let mut versions = versions::Versions::decode(read_payload(&out.join("versions")).as_slice())
        .expect("versions payload");
    // Seeded by the current /versions, so repeated mutations pick new packages.
    let state: [u8; 32] = Sha256::digest(&versions_raw).into();
    let mut rng =
        fastrand::Rng::with_seed(args.seed ^ u64::from_le_bytes(state[..8].try_into().unwrap()));
    let n = versions.packages.len();
    let count = ((n as f64 * fraction).round() as usize).clamp(1, n);
    let mut chosen: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut chosen);
    chosen.truncate(count);
    chosen.sort_unstable();
    let now = BASE_TIME + SPAN + 1 + rng.i64(0..1_000_000);

    let next = AtomicUsize::new(0);
    let results: Vec<(usize, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&i) = chosen.get(k) else { break };
                        let name = versions.packages[i].name.clone();
                        let path = out.join("packages").join(&name);
                        let mut record = package::Package::decode(read_payload(&path).as_slice())
                            .expect("package payload");
                        let last = record.releases.last().expect("package has releases");
                        let v = Version::parse(&last.version).expect("version parses");
                        let patch = if v.is_pre_release() {
                            v.patch()
                        } else {
                            v.patch() + 1
                        };
                        let version = format!("{}.{}.{}", v.major(), v.minor(), patch);
                        let rel = Rel {
                            version: version.clone(),
                            deps: last
                                .dependencies
                                .iter()
                                .map(|d| Dep {
                                    package: d.package.clone(),
                                    requirement: d.requirement.clone(),
                                    optional: d.optional.unwrap_or(false),
                                })
                                .collect(),
                            retired: None,
                            size: lognormal(
                                &mut fastrand::Rng::with_seed(mix_seed(args.seed, 7, i as u64)),
                                14_000.0,
                                1.45,
                            )
                            .clamp(1_500.0, 8_000_000.0) as usize,
                            published: now,
                        };
                        let pkg = Pkg {
                            name: name.clone(),
                            mix: true,
                            releases: vec![],
                        };
                        let mut r = fastrand::Rng::with_seed(mix_seed(args.seed, 8, i as u64));
                        let (tar, inner) = tarball(&pkg, &rel, &mut r);
                        let outer: [u8; 32] = Sha256::digest(&tar).into();
                        write_atomic(&out.join(format!("tarballs/{name}-{version}.tar")), &tar);
                        record.releases.push(release_proto(&rel, inner, outer));
                        write_atomic(&path, &seal_signed(record.encode_to_vec(), key));
                        done.push((i, version));
                    }
                    done
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker"))
            .collect()
    });
    for (i, version) in results {
        let name = versions.packages[i].name.clone();
        versions.packages[i].versions.push(version);
        if let Some(p) = names.packages.iter_mut().find(|p| p.name == name) {
            p.updated_at = Some(names::Timestamp {
                seconds: now,
                nanos: 0,
            });
        }
    }
    write_atomic(&out.join("names"), &seal_signed(names.encode_to_vec(), key));
    write_atomic(
        &out.join("versions"),
        &seal_signed(versions.encode_to_vec(), key),
    );
    eprintln!("gen_upstream: mutated {count} of {n} packages (one new release each)");
}
