//! Shared mappings of `BPF_F_MMAPABLE` array maps: their values read and written in place,
//! without a system call per value.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

/// `len` bytes of an array map's values, from byte `offset`, mapped into this process until
/// dropped. A mapping of kernel pages counts in the process's RSS for as long as it exists.
pub struct MapMemory {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: plain shared memory; every user accesses it through volatile reads or atomics.
unsafe impl Send for MapMemory {}
unsafe impl Sync for MapMemory {}

impl MapMemory {
    /// Maps `len` bytes (rounded up to whole pages) of the map behind `fd` from `offset` (a
    /// multiple of the page size); `writable` for values this process changes.
    pub fn new(fd: BorrowedFd<'_>, offset: usize, len: usize, writable: bool) -> io::Result<Self> {
        let len = len.next_multiple_of(page_size());
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh shared mapping of the map's fd; checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }

    /// The first mapped byte.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }
}

impl Drop for MapMemory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as usize
}

/// The possible CPUs (`/sys/devices/system/cpu/possible`): how many copies a per-CPU map
/// value has, and how many parts netmon's per-CPU-partitioned arrays have.
pub fn possible_cpus() -> anyhow::Result<usize> {
    aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))
}
