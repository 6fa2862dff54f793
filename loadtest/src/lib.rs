//! `farm-loadtest`: load scenarios against any REAPI endpoint.
//!
//! Empty until issue 5 lands; see ARCHITECTURE.md for the planned invariants.
