//! Direct I/O for large blobs: uploads written and reads served without going through pages the
//! kernel must allocate for them.
//!
//! A buffered write of a new file needs a fresh page-cache page for every 4 KiB it writes. On a
//! virtual machine whose free memory has been handed back to the hypervisor (balloon free-page
//! reporting, as on the Firecracker VM BENCHMARKS.md was measured on), each such page faults in
//! through the hypervisor first: buffered writes of new files ran at 0.06–0.9 GB/s there, while
//! `O_DIRECT` writes from a reused buffer ran at 1.3–1.9 GB/s. Large uploads are therefore
//! written with `O_DIRECT` from [`Block`]s of a pool of buffers that stay resident, into a file
//! preallocated to the blob's size. Large reads copy from the page cache what it holds already
//! (asked with `cachestat(2)`, which does no I/O; a probing `RWF_NOWAIT` read would start
//! readahead into fresh pages) and read the rest with `O_DIRECT` into the same kind of buffers,
//! so a blob written this way is not read into fresh page-cache pages either. Small blobs keep
//! using the page cache, which serves them best.
//!
//! The price on a machine where page-cache pages are cheap: large blobs are not cached by the
//! kernel, so rereading one goes to the disk each time. Both the spool
//! ([`StorageOptions::direct_io`](crate::service::StorageOptions)) and the filesystem store
//! ([`FilesystemOptions::direct_io`](crate::store::filesystem::FilesystemOptions)) can be told
//! not to. Where `O_DIRECT` is not supported (some filesystems refuse it at open with `EINVAL`),
//! the callers fall back to buffered I/O.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use bytes::Bytes;
use parking_lot::Mutex;

/// Alignment of direct-I/O buffers, file offsets and lengths (the page size, which covers
/// every logical block size in use).
pub const ALIGN: usize = 4096;

/// Bytes of one direct-I/O block: the unit of spool writes and of large reads.
pub const BLOCK: usize = 2 << 20;

/// Blobs at least this large are written and read with direct I/O (when enabled).
pub const MIN_DIRECT_BYTES: u64 = 4 << 20;

/// Idle blocks kept for reuse (each [`BLOCK`] bytes, resident once first used).
const POOL_IDLE_BLOCKS: usize = 16;

/// Blocks not in use, kept so that their memory is already resident when reused.
static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A [`BLOCK`]-byte buffer aligned to [`ALIGN`], taken from (and given back to) a process-wide
/// pool.
pub struct Block {
    buf: Vec<u8>,
    /// Offset of the aligned window in `buf`.
    start: usize,
    /// Bytes of the window in use (for [`AsRef`]).
    len: usize,
}

impl Block {
    /// A block from the pool, or a new one.
    pub fn take() -> Block {
        let buf = POOL
            .lock()
            .pop()
            .unwrap_or_else(|| vec![0u8; BLOCK + ALIGN]);
        let start = buf.as_ptr().align_offset(ALIGN);
        Block {
            buf,
            start,
            len: BLOCK,
        }
    }

    /// The whole aligned window.
    pub fn window(&self) -> &[u8] {
        &self.buf[self.start..self.start + BLOCK]
    }

    /// The whole aligned window, writable.
    pub fn window_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + BLOCK]
    }

    /// `data[range]` of this block as `Bytes`, without copying; the block returns to the pool
    /// when the last `Bytes` of it is dropped.
    pub fn into_bytes(mut self, range: std::ops::Range<usize>) -> Bytes {
        self.len = range.end;
        Bytes::from_owner(self).slice(range)
    }
}

impl AsRef<[u8]> for Block {
    fn as_ref(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let mut pool = POOL.lock();
        if pool.len() < POOL_IDLE_BLOCKS {
            pool.push(buf);
        }
    }
}

/// Whether an open error means "this filesystem does not do O_DIRECT".
fn unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL) || e.kind() == io::ErrorKind::Unsupported
}

/// Creates `path` (which must not exist) for direct writes; `None` if the filesystem refuses
/// `O_DIRECT`.
pub fn create_direct(path: &Path) -> io::Result<Option<File>> {
    let opened = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(path);
    match opened {
        Ok(file) => Ok(Some(file)),
        Err(e) if unsupported(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens `path` a second time for direct reads; `None` if the filesystem refuses `O_DIRECT`.
pub fn open_direct(path: &Path) -> io::Result<Option<File>> {
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(file) => Ok(Some(file)),
        Err(e) if unsupported(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Allocates `len` bytes of disk for a file about to be written with direct I/O, so that its
/// writes land inside the file (ext4 then runs two at once; writes that extend a file go one at
/// a time) and a full disk shows before the upload rather than during it. A filesystem that
/// cannot preallocate is left as it is.
pub fn preallocate(file: &File, len: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file too large"))?;
    // SAFETY: plain syscall on a descriptor borrowed from `file`; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => Ok(()),
        _ => Err(e),
    }
}

/// Writes the first `len` bytes of `block` at `offset` (both multiples of [`ALIGN`]) of a file
/// opened with [`create_direct`].
pub fn write_block(file: &File, block: &Block, len: usize, offset: u64) -> io::Result<()> {
    file.write_all_at(&block.window()[..len], offset)
}

/// Reads `[offset, offset + len)` of a file into a pooled block, `len` at most
/// `BLOCK - ALIGN`: through the page cache if it holds the whole range (or without `direct`, or
/// where the kernel cannot tell), else with `O_DIRECT` through `direct`, which neither needs
/// nor populates page-cache pages. Fails with `UnexpectedEof` if the file is shorter.
pub fn read_range(
    cached: &File,
    direct: Option<&File>,
    offset: u64,
    len: usize,
) -> io::Result<Bytes> {
    debug_assert!(len <= BLOCK - ALIGN);
    let mut block = Block::take();
    let direct = direct.filter(|_| is_cached(cached, offset, len) == Some(false));
    let Some(direct) = direct else {
        cached.read_exact_at(&mut block.window_mut()[..len], offset)?;
        return Ok(block.into_bytes(0..len));
    };
    // From the aligned offset at or before `offset`, whole aligned blocks.
    let aligned = offset - offset % ALIGN as u64;
    let skip = (offset - aligned) as usize;
    let want = (skip + len).next_multiple_of(ALIGN);
    let mut got = 0;
    while got < want {
        match direct.read_at(&mut block.window_mut()[got..want], aligned + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        // A direct read stops short of whole blocks only at the end of the file.
        if got % ALIGN != 0 {
            break;
        }
    }
    if got < skip + len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the blob file is shorter than its index entry",
        ));
    }
    Ok(block.into_bytes(skip..skip + len))
}

/// `cachestat(2)` (Linux 6.5+), numbered alike on these architectures.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
const SYS_CACHESTAT: libc::c_long = 451;

/// Whether the page cache holds every page of `[offset, offset + len)`; `None` if the kernel
/// cannot say. Unlike a probing read (`RWF_NOWAIT` starts reading ahead), this does no I/O.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
fn is_cached(file: &File, offset: u64, len: usize) -> Option<bool> {
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    if len == 0 {
        return Some(true);
    }
    let range = Range {
        off: offset,
        len: len as u64,
    };
    let mut stat = Stat::default();
    // SAFETY: both pointers refer to live, properly laid out (repr(C)) structs for the call's
    // duration; the descriptor is borrowed from `file`.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const Range,
            &mut stat as *mut Stat,
            0u32,
        )
    };
    if rc != 0 {
        return None;
    }
    let page = ALIGN as u64;
    let pages = (offset + len as u64 - 1) / page - offset / page + 1;
    Some(stat.nr_cache >= pages)
}

#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
fn is_cached(_file: &File, _offset: u64, _len: usize) -> Option<bool> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_aligned_and_reused() {
        let a = Block::take();
        assert_eq!(a.window().as_ptr() as usize % ALIGN, 0);
        assert_eq!(a.window().len(), BLOCK);
        let bytes = a.into_bytes(10..20);
        assert_eq!(bytes.len(), 10);
        drop(bytes);
        let b = Block::take();
        assert_eq!(b.window().as_ptr() as usize % ALIGN, 0);
    }

    #[test]
    fn reads_mix_cached_and_direct_ranges_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..3 * BLOCK + 123)
            .map(|i| (i * 7 + i / 4093) as u8)
            .collect();
        // Written directly (not cached) where the filesystem allows it.
        match create_direct(&path).unwrap() {
            Some(file) => {
                let mut block = Block::take();
                for (i, part) in data.chunks(BLOCK).enumerate() {
                    block.window_mut()[..part.len()].copy_from_slice(part);
                    let len = part.len().next_multiple_of(ALIGN);
                    write_block(&file, &block, len, (i * BLOCK) as u64).unwrap();
                }
                file.set_len(data.len() as u64).unwrap();
            }
            None => std::fs::write(&path, &data).unwrap(),
        }
        let cached = File::open(&path).unwrap();
        let direct = open_direct(&path).unwrap();
        // Warm one stretch so some reads are part cached, part not.
        let mut warm = vec![0; 10_000];
        cached.read_exact_at(&mut warm, 5_000).unwrap();
        for (offset, len) in [
            (0usize, 1usize),
            (1, 4095),
            (4_000, 20_000),
            (BLOCK - 7, BLOCK - ALIGN),
            (data.len() - 200, 200),
            (3 * BLOCK - 1, 124),
        ] {
            let got = read_range(&cached, direct.as_ref(), offset as u64, len).unwrap();
            assert_eq!(&got[..], &data[offset..offset + len], "{offset}+{len}");
            let got = read_range(&cached, None, offset as u64, len).unwrap();
            assert_eq!(&got[..], &data[offset..offset + len], "{offset}+{len}");
        }
        // A direct read leaves the page cache as it was.
        if let (Some(_), Some(false)) = (&direct, is_cached(&cached, 2 * BLOCK as u64, 4096)) {
            read_range(&cached, direct.as_ref(), 2 * BLOCK as u64, 4096).unwrap();
            assert_eq!(is_cached(&cached, 2 * BLOCK as u64, 4096), Some(false));
        }
        let err = read_range(&cached, direct.as_ref(), (data.len() - 10) as u64, 20).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
