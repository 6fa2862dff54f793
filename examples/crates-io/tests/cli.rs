use std::process::Command;

fn run(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_crates-io-demo"))
        .args(args)
        .output()
        .expect("run the binary")
}

#[test]
fn defaults() {
    let out = run(&[]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            r#"json: {"name":"farm","numbers":[12,3,2],"squares":[144,9,4],"total":157}"#
        ),
        "{stdout}"
    );
}

#[test]
fn arguments_and_errors() {
    let out = run(&["--name", "x", "--text", "7 and 8", "--limit", "1"]);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(r#"{"name":"x","numbers":[7],"squares":[49],"total":49}"#)
    );
    let bad = run(&["--limit", "nope"]);
    assert_eq!(bad.status.code(), Some(2), "clap reports a usage error");
}
