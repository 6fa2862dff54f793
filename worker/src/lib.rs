//! Input staging, sandboxed execution and output upload for one farm worker.
//!
//! Empty until issue 3 lands; see ARCHITECTURE.md for the planned invariants.
