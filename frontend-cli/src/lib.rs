//! The `cargo farm` front end and the embedded in-process farm.
//!
//! Empty until issue 4 lands; see ARCHITECTURE.md for the planned invariants.
