//! `cargo farm build --target aarch64-unknown-linux-gnu` on this x86-64 machine: target units
//! compile for aarch64 (linked by the configured cross linker, inside the sandbox), while
//! proc-macros and build scripts are built and run for the host. The program, run under
//! qemu-user, behaves like cargo's cross build of the same tree. Needs what
//! scripts/aarch64-worker.sh installs (the rustup target, gcc-aarch64-linux-gnu,
//! qemu-user-static); the test fails, naming it, when they are missing.

mod common;

use std::process::Command;

use common::*;

const TARGET: &str = "aarch64-unknown-linux-gnu";

fn require_cross_tools() {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| text(&o.stdout))
        .unwrap_or_default();
    let have_gcc = Command::new("aarch64-linux-gnu-gcc")
        .arg("--version")
        .output()
        .is_ok();
    let have_qemu = Command::new("qemu-aarch64-static")
        .arg("--version")
        .output()
        .is_ok();
    assert!(
        installed.lines().any(|l| l.trim() == TARGET) && have_gcc && have_qemu,
        "the cross test needs the {TARGET} rustup target, aarch64-linux-gnu-gcc and \
         qemu-aarch64-static: run scripts/aarch64-worker.sh (scripts/test.sh does)"
    );
}

fn qemu(program: &std::path::Path) -> String {
    let out = Command::new("qemu-aarch64-static")
        .args(["-L", "/usr/aarch64-linux-gnu"])
        .arg(program)
        .output()
        .unwrap();
    ok(&out, &format!("qemu-aarch64-static {}", program.display()));
    text(&out.stdout)
}

#[test]
fn cross_compiled_programs_behave_like_cargos() {
    require_cross_tools();
    let p = Project::new("workspace");
    std::fs::create_dir_all(p.path(".cargo")).unwrap();
    std::fs::write(
        p.path(".cargo/config.toml"),
        format!("[target.{TARGET}]\nlinker = \"aarch64-linux-gnu-gcc\"\n"),
    )
    .unwrap();
    let home = FarmHome::new();
    let summary = farm_build(home.path(), &p.dir, &["--target", TARGET]);
    assert_eq!(n(&summary, "failed"), 0);

    let ours = p.path(&format!("target/{TARGET}/debug/app"));
    let elf = std::fs::read(&ours).unwrap();
    // ELF e_machine 183 (0xb7) is AArch64.
    assert_eq!(&elf[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([elf[18], elf[19]]), 183);

    ok(
        &cargo(&p.dir, &["build", "--locked", "--target", TARGET]),
        "cargo build --target",
    );
    let theirs = p.path(&format!("target-cargo/{TARGET}/debug/app"));
    let output = qemu(&ours);
    assert_eq!(output, qemu(&theirs));
    assert!(output.contains("shout:"), "{output}");

    // Rebuilding from the cache gives the same program.
    std::fs::remove_dir_all(p.path("target")).unwrap();
    let warm = farm_build(home.path(), &p.dir, &["--target", TARGET]);
    assert_eq!(n(&warm, "cache_hits"), n(&warm, "actions"), "{warm}");
    assert_eq!(qemu(&ours), output);
}
