//! Compiles the Hex registry v2 schema in `proto/` with protox, so no system
//! `protoc` is needed.

fn main() {
    let files = [
        "proto/signed.proto",
        "proto/names.proto",
        "proto/versions.proto",
        "proto/package.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])
        .expect("proto/ must compile: it is the Hex registry v2 schema");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("prost code generation for proto/");
}
