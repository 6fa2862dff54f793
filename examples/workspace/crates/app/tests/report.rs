use std::process::Command;

#[test]
fn dev_dependency_features_are_unified() {
    // The dev-dependency enables extra (and so fancy) for tests.
    let line = &app::report()[4];
    assert!(line.contains("fancy,extra"), "{line}");
    assert!(line.contains("sum_to(100)=5050"), "{line}");
}

#[test]
fn main_binary_runs() {
    let out = Command::new(env!("CARGO_BIN_EXE_app"))
        .output()
        .expect("run app");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("app: the main binary\n"), "{stdout}");
    assert!(stdout.contains("DEP_NATIVE_VERSION=1.2.3"), "{stdout}");
}
