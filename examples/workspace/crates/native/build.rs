fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    // Set by cargo from native-sys's `cargo::metadata=version=...` (its `links = "native"`).
    let version = std::env::var("DEP_NATIVE_VERSION").expect("DEP_NATIVE_VERSION");
    println!("cargo::rustc-env=NATIVE_DEP_VERSION={version}");
}
