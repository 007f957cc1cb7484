//! The architecture invariant "pure format code does no I/O", checked: each
//! pure module's sources are scanned for the crates and std modules that do
//! file, network or database I/O. Test-only.

/// Names whose presence in a pure module means it does I/O. Built from
/// pieces so this file does not trip its own check.
fn banned() -> [String; 5] {
    [
        ["std::", "fs"].concat(),
        ["std::", "net"].concat(),
        ["tok", "io::"].concat(),
        ["req", "west"].concat(),
        ["rusq", "lite"].concat(),
    ]
}

/// Panics naming the module and the offending name if any source uses one.
pub(crate) fn assert_no_io(module: &str, sources: &[&str]) {
    for source in sources {
        for needle in &banned() {
            assert!(
                !source.contains(needle.as_str()),
                "{module} must stay free of I/O but mentions `{needle}`"
            );
        }
    }
}

#[test]
fn every_pure_module_is_free_of_io() {
    assert_no_io(
        "registry",
        &[
            include_str!("registry/mod.rs"),
            include_str!("registry/keys.rs"),
            include_str!("registry/names.rs"),
        ],
    );
    assert_no_io(
        "tarball",
        &[
            include_str!("tarball/mod.rs"),
            include_str!("tarball/terms.rs"),
            include_str!("tarball/metadata.rs"),
        ],
    );
    assert_no_io(
        "version",
        &[
            include_str!("version/mod.rs"),
            include_str!("version/requirement.rs"),
        ],
    );
    assert_no_io("index", &[include_str!("index/mod.rs")]);
    assert_no_io("hosted::record", &[include_str!("hosted/record.rs")]);
    assert_no_io("manifest", &[include_str!("manifest.rs")]);
    assert_no_io("sync::plan", &[include_str!("sync/plan.rs")]);
    assert_no_io(
        "server request parsing",
        &[
            include_str!("server/paths.rs"),
            include_str!("server/http.rs"),
        ],
    );
}

#[test]
fn the_check_catches_io() {
    let sneaky = ["use std::", "fs::File;"].concat();
    let caught = std::panic::catch_unwind(|| assert_no_io("x", &[&sneaky]));
    assert!(caught.is_err());
}
