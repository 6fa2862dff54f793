//! Safe wrappers over native-sys.

use std::ffi::CStr;

/// The C checksum of `bytes`.
pub fn checksum(bytes: &[u8]) -> u32 {
    // SAFETY: the pointer and length describe a live slice, which the C code only reads.
    unsafe { native_sys::native_checksum(bytes.as_ptr(), bytes.len()) }
}

/// The version string compiled into the C library.
pub fn c_version() -> &'static str {
    // SAFETY: native_version returns a static NUL-terminated ASCII string.
    unsafe { CStr::from_ptr(native_sys::native_version()) }
        .to_str()
        .unwrap_or("?")
}

/// DEP_NATIVE_VERSION as this crate's build script saw it.
pub const DEP_VERSION: &str = env!("NATIVE_DEP_VERSION");

/// A label decorated by toggles (this crate always enables its `fancy`).
pub fn label() -> String {
    toggles::decorate("native")
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_agree() {
        assert_eq!(super::c_version(), super::DEP_VERSION);
        assert_eq!(super::checksum(b""), 7);
    }
}
