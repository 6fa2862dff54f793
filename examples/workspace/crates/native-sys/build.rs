use std::fs;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=csrc/native.c");
    println!("cargo::rerun-if-changed=include/native.h");

    // The version lives in the header; dependents get it as DEP_NATIVE_VERSION.
    let header = fs::read_to_string("include/native.h").expect("include/native.h");
    let version = header
        .lines()
        .find_map(|l| l.strip_prefix("#define NATIVE_VERSION "))
        .expect("NATIVE_VERSION in native.h")
        .trim_matches('"');
    println!("cargo::metadata=version={version}");

    cc::Build::new()
        .file("csrc/native.c")
        .include("include")
        .define("NATIVE_SEED", "7")
        .compile("native");
}
