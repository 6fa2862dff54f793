//! Gathers a value from every crate of the workspace into printable lines.

use shout::{Shout, shout};

/// Fields and name are read by `#[derive(Shout)]`.
#[derive(Shout)]
pub struct Greeting {
    pub name: String,
    pub times: u32,
}

/// One line per feature the workspace exercises; deterministic.
pub fn report() -> Vec<String> {
    let greeting = Greeting {
        name: "farm".into(),
        times: 2,
    };
    vec![
        format!(
            "generated: squares[3..6]={:?} teal={} cfg(generated_table)={} flavor={}",
            &generated::SQUARES[3..6],
            generated::color("teal").map_or("none".to_string(), |c| format!("{c:#08x}")),
            generated::cfg_set(),
            generated::flavor(),
        ),
        format!("generated: env GENERATED_BY={:?}", generated::GENERATED_BY),
        format!(
            "generated: build-script toggles=[{}]",
            generated::BUILD_SCRIPT_TOGGLES
        ),
        format!(
            "native: checksum(\"cargo-farm\")={} c_version={} DEP_NATIVE_VERSION={} label={}",
            native::checksum(b"cargo-farm"),
            native::c_version(),
            native::DEP_VERSION,
            native::label(),
        ),
        format!(
            "toggles: features=[{}] sum_to(100)={} decorate={}",
            toggles::enabled().join(","),
            toggles::sum_to(100),
            toggles::decorate("app"),
        ),
        format!(
            "shout: {}.shout()={} FIELDS={:?} shout!={}",
            greeting.name,
            greeting.shout(),
            Greeting::FIELDS,
            shout!("times two"),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macro_output() {
        let g = Greeting {
            name: String::new(),
            times: 0,
        };
        assert_eq!(g.shout(), "GREETING!");
        assert_eq!(Greeting::FIELDS, ["name", "times"]);
        assert_eq!(shout!("abc"), "ABC!");
    }

    #[test]
    fn report_has_every_crate() {
        let lines = report();
        for prefix in ["generated:", "native:", "toggles:", "shout:"] {
            assert!(lines.iter().any(|l| l.starts_with(prefix)), "{prefix}");
        }
    }
}
