//! Platform properties and the rule that matches an action's requirements to a worker's offer.
//!
//! # Matching rules
//!
//! - An action's requirements are the properties of `Action.platform`; when that is absent or
//!   empty, those of the deprecated `Command.platform` (REAPI v2.2 and older clients).
//! - A property is a `(name, value)` pair. Names and values are compared exactly (byte for
//!   byte, case-sensitive); there are no wildcards, ranges or defaults. `OSFamily`, `ISA` and
//!   custom keys (`container-image`, `gpu`, ...) all follow this one rule.
//! - A worker offers a set of pairs (its `Hello.platform`). It may offer several values of one
//!   name (`ISA=x86-64` and `ISA=x86-64-v3`) and names no action mentions.
//! - **A worker can run an action when every pair the action requires is among the pairs the
//!   worker offers.** An action that requires nothing runs on any worker. Duplicate pairs count
//!   once; the order of properties never matters.
//! - Instance names do not partition workers: every worker serves every instance.
//! - An action whose requirements no connected worker offers stays queued for the scheduler's
//!   `unsatisfiable_wait`, so a matching worker can still connect; after it the action fails
//!   with `FAILED_PRECONDITION` naming the requirements and what connected workers offer.

use std::fmt;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;

use crate::protocol;

/// A normalised set of platform properties: `(name, value)` pairs sorted by name then value
/// (UTF-8 byte order, as REAPI sorts them) with duplicates removed. Two requirement sets that
/// list the same pairs in any order are equal and hash alike, so they share one queue.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    props: Vec<(String, String)>,
}

impl Platform {
    /// The empty set: no requirements (matches every worker), or a worker offering nothing.
    pub fn empty() -> Self {
        Platform::default()
    }

    /// Normalises any list of pairs.
    pub fn from_pairs<I, N, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (N, V)>,
        N: Into<String>,
        V: Into<String>,
    {
        let mut props: Vec<(String, String)> = pairs
            .into_iter()
            .map(|(n, v)| (n.into(), v.into()))
            .collect();
        props.sort_unstable();
        props.dedup();
        Platform { props }
    }

    /// The properties of a REAPI `Platform` message (`None` is the empty set).
    pub fn from_reapi(platform: Option<&reapi::Platform>) -> Self {
        match platform {
            Some(p) => Self::from_pairs(
                p.properties
                    .iter()
                    .map(|p| (p.name.as_str(), p.value.as_str())),
            ),
            None => Self::empty(),
        }
    }

    /// An action's requirements: `Action.platform`, or `Command.platform` when the Action has
    /// none (see the module docs).
    pub fn of_action(action: &reapi::Action, command: &reapi::Command) -> Self {
        let own = Self::from_reapi(action.platform.as_ref());
        if own.is_empty() {
            #[allow(deprecated)]
            Self::from_reapi(command.platform.as_ref())
        } else {
            own
        }
    }

    /// A worker's offer, from its `Hello`.
    pub fn from_protocol(props: &[protocol::Property]) -> Self {
        Self::from_pairs(props.iter().map(|p| (p.name.as_str(), p.value.as_str())))
    }

    /// The pairs, sorted.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.props
    }

    /// Whether the set has no properties.
    pub fn is_empty(&self) -> bool {
        self.props.is_empty()
    }

    /// The values of property `name`, in order.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.props
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether a worker offering `offer` can run an action requiring `self`: every required
    /// pair is offered. Linear in both sizes (both lists are sorted).
    pub fn is_satisfied_by(&self, offer: &Platform) -> bool {
        let mut offered = offer.props.iter();
        'required: for want in &self.props {
            for have in offered.by_ref() {
                match have.cmp(want) {
                    std::cmp::Ordering::Less => continue,
                    std::cmp::Ordering::Equal => continue 'required,
                    std::cmp::Ordering::Greater => return false,
                }
            }
            return false;
        }
        true
    }

    /// A short label for logs and metrics: `ISA=x86-64,OSFamily=linux`, or `none`.
    pub fn label(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.props.is_empty() {
            return f.write_str("none");
        }
        for (i, (n, v)) in self.props.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{n}={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Platform {
        Platform::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn empty_requirements_match_every_worker() {
        assert!(Platform::empty().is_satisfied_by(&Platform::empty()));
        assert!(Platform::empty().is_satisfied_by(&p(&[("OSFamily", "linux")])));
    }

    #[test]
    fn every_required_pair_must_be_offered_exactly() {
        let worker = p(&[
            ("ISA", "x86-64"),
            ("ISA", "x86-64-v3"),
            ("OSFamily", "linux"),
            ("pool", "big"),
        ]);
        assert!(p(&[("OSFamily", "linux")]).is_satisfied_by(&worker));
        assert!(p(&[("OSFamily", "linux"), ("ISA", "x86-64-v3")]).is_satisfied_by(&worker));
        assert!(p(&[("pool", "big"), ("ISA", "x86-64")]).is_satisfied_by(&worker));
        assert!(
            !p(&[("OSFamily", "Linux")]).is_satisfied_by(&worker),
            "case matters"
        );
        assert!(!p(&[("OSFamily", "macos")]).is_satisfied_by(&worker));
        assert!(!p(&[("gpu", "1")]).is_satisfied_by(&worker), "unknown key");
        assert!(!p(&[("ISA", "aarch64"), ("OSFamily", "linux")]).is_satisfied_by(&worker));
        assert!(!p(&[("OSFamily", "linux")]).is_satisfied_by(&Platform::empty()));
    }

    #[test]
    fn order_and_duplicates_do_not_matter() {
        let a = p(&[("b", "1"), ("a", "2"), ("b", "1")]);
        let b = p(&[("a", "2"), ("b", "1")]);
        assert_eq!(a, b);
        assert_eq!(a.label(), "a=2,b=1");
        assert_eq!(Platform::empty().label(), "none");
    }

    #[test]
    fn command_platform_is_the_fallback() {
        let prop = |n: &str, v: &str| reapi::platform::Property {
            name: n.into(),
            value: v.into(),
        };
        #[allow(deprecated)]
        let command = reapi::Command {
            platform: Some(reapi::Platform {
                properties: vec![prop("OSFamily", "linux")],
            }),
            ..Default::default()
        };
        let bare = reapi::Action::default();
        assert_eq!(
            Platform::of_action(&bare, &command),
            p(&[("OSFamily", "linux")])
        );
        let own = reapi::Action {
            platform: Some(reapi::Platform {
                properties: vec![prop("ISA", "aarch64")],
            }),
            ..Default::default()
        };
        assert_eq!(
            Platform::of_action(&own, &command),
            p(&[("ISA", "aarch64")])
        );
    }
}
