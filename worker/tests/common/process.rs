//! Real child processes of the end-to-end tests (farm-scheduler, farm-worker), killed on drop
//! with their log printed when the test is failing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Stdio};

/// A child process, SIGKILLed when dropped; its log is printed if the test is failing.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, program: &Path, args: &[String], log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).unwrap();
        let child = Process::new(program)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", program.display()));
        Proc {
            name: name.to_string(),
            child,
            log,
        }
    }

    /// The process's combined stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILLs the process (under qemu-user that is the emulated program itself, and its
    /// sandboxes die with it) and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- {} log (last lines):", self.name);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}
