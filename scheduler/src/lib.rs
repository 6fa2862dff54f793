//! REAPI Execution and Operations services, queues, platform matching and the worker protocol.
//!
//! Empty until issue 3 lands; see ARCHITECTURE.md for the planned invariants.
