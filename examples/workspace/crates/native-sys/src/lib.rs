//! Raw bindings to csrc/native.c, built into libnative.a by build.rs.

use std::ffi::c_char;

unsafe extern "C" {
    /// A seeded multiplicative hash of `len` bytes at `data`.
    pub fn native_checksum(data: *const u8, len: usize) -> u32;
    /// A static NUL-terminated version string.
    pub fn native_version() -> *const c_char;
}
