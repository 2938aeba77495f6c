//! Host memory owned by the caller (tensors of the Python package's buffer pool), lent to this
//! crate by address for one save or one read.
//!
//! Owns the only `unsafe` of the crate: turning an address and a length into a slice. The
//! caller's promise, made once at construction, is what makes the rest safe: the memory stays
//! allocated, and nobody else writes it (or, for [`HostRegionMut`], reads it) until the region
//! is dropped. The Python layer keeps that promise by holding a reference to the owning tensor
//! and allowing one save in flight, into buffers only it can reach.

use std::ptr::NonNull;

/// A read-only stretch of someone else's memory, safe to send to the persister thread.
#[derive(Debug)]
pub struct HostRegion {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is only read, and the constructor's contract says nobody writes it while
// the region exists, so reading it from another thread is sound.
unsafe impl Send for HostRegion {}

impl HostRegion {
    /// Lends `len` bytes at `ptr`; `None` for a null address with a non-zero length.
    ///
    /// # Safety
    ///
    /// Unless `len` is 0, `ptr` must be valid for reads of `len` bytes for as long as the
    /// returned region (or anything it is moved into) exists, and nothing may write those
    /// bytes meanwhile.
    pub unsafe fn new(ptr: *const u8, len: usize) -> Option<HostRegion> {
        let ptr = if len == 0 {
            NonNull::dangling()
        } else {
            NonNull::new(ptr.cast_mut())?
        };
        Some(HostRegion { ptr, len })
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: guaranteed by the constructor's contract; a dangling pointer only ever comes
        // with length 0 (a null address with a non-zero length is refused by `new`).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

/// A writable stretch of someone else's memory, for reading a file into it.
#[derive(Debug)]
pub struct HostRegionMut {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: as for `HostRegion`, with exclusive access promised by the constructor's caller.
unsafe impl Send for HostRegionMut {}

impl HostRegionMut {
    /// Lends `len` writable bytes at `ptr`; `None` for a null address with a non-zero length.
    ///
    /// # Safety
    ///
    /// Unless `len` is 0, `ptr` must be valid for reads and writes of `len` bytes for as long
    /// as the returned region exists, and nothing else may read or write them meanwhile.
    pub unsafe fn new(ptr: *mut u8, len: usize) -> Option<HostRegionMut> {
        let ptr = if len == 0 {
            NonNull::dangling()
        } else {
            NonNull::new(ptr)?
        };
        Some(HostRegionMut { ptr, len })
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: guaranteed by the constructor's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}
