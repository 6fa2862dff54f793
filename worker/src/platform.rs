//! What this worker advertises: its real ISA and OS family (REAPI platform lexicon spelling) plus
//! operator-given properties, and a worker id stable across reconnects of one process.

use std::time::{SystemTime, UNIX_EPOCH};

/// The REAPI `ISA` value of the machine this binary runs on (`x86-64`, `aarch64`, ...).
pub fn isa() -> &'static str {
    isa_of(std::env::consts::ARCH)
}

/// Maps a Rust target architecture to the platform lexicon's ISA name.
pub fn isa_of(arch: &str) -> &str {
    match arch {
        "x86_64" => "x86-64",
        "x86" => "x86-32",
        "aarch64" => "aarch64",
        "arm" => "arm",
        other => other,
    }
}

/// The REAPI `OSFamily` of this machine (`linux`).
pub fn os_family() -> &'static str {
    std::env::consts::OS
}

/// `OSFamily` and `ISA` of this machine, then `extra`; an extra property with one of those two
/// names replaces the detected value (to advertise an emulated ISA, say).
pub fn properties(extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, detected) in [("OSFamily", os_family()), ("ISA", isa())] {
        if !extra.iter().any(|(n, _)| n == name) {
            out.push((name.to_string(), detected.to_string()));
        }
    }
    out.extend(extra.iter().cloned());
    out
}

/// Parses a `KEY=VALUE` platform flag.
pub fn parse_property(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

/// `hostname-pid-starttime`: unique per worker process, unchanged across its reconnects.
pub fn worker_id() -> String {
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    format!("{}-{}-{started}", hostname(), std::process::id())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "worker".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isa_names_follow_the_platform_lexicon() {
        assert_eq!(isa_of("x86_64"), "x86-64");
        assert_eq!(isa_of("aarch64"), "aarch64");
        assert_eq!(os_family(), "linux");
    }

    #[test]
    fn extra_properties_add_to_or_replace_detected_ones() {
        let p = properties(&[("pool".into(), "big".into())]);
        assert_eq!(p[0], ("OSFamily".into(), "linux".into()));
        assert_eq!(p[1].0, "ISA");
        assert_eq!(p[2], ("pool".into(), "big".into()));
        let p = properties(&[("ISA".into(), "aarch64".into())]);
        assert_eq!(p.iter().filter(|(n, _)| n == "ISA").count(), 1);
        assert!(parse_property("a=b=c").unwrap().1 == "b=c");
        assert!(parse_property("=x").is_err());
    }
}
