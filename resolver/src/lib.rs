//! Turns Cargo's metadata and unit graph into hermetic REAPI actions.
//!
//! Empty until issue 4 lands; see ARCHITECTURE.md for the planned invariants.
