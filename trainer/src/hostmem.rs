//! How the process gets host memory for tensors. Tensor buffers are large, short-lived and
//! written in full right after they are allocated, so the cost of fresh memory — page faults,
//! one per 4 KiB page — shows up in every training step, snapshot and restore: on this
//! project's VM the burn-flex trainer spent more time in the kernel than in its kernels
//! (docs/benchmarks.md). Both binaries of the trainer install these settings.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at least this large are advised onto transparent huge pages.
const HUGE_FROM: usize = 4 << 20;
const HUGE_PAGE: usize = 2 << 20;

/// The system allocator, with large blocks advised onto transparent huge pages
/// (`madvise(MADV_HUGEPAGE)`, what glibc's `glibc.malloc.hugetlb=1` tunable does, without an
/// environment variable that must be set before the process starts): one fault per 2 MiB
/// instead of per 4 KiB. Where THP is off the advice fails and nothing changes; where it is
/// `always` it changes nothing either.
pub struct HugePages;

fn advise(ptr: *mut u8, size: usize) {
    if ptr.is_null() || size < HUGE_FROM {
        return;
    }
    let start = (ptr as usize).next_multiple_of(HUGE_PAGE);
    let end = (ptr as usize + size) / HUGE_PAGE * HUGE_PAGE;
    if end > start {
        // SAFETY: advisory call on whole pages inside a block the allocator just handed out;
        // the advice changes how the pages are backed, never their contents, and its failure
        // is harmless.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

// SAFETY: every call is forwarded to `System` unchanged; `advise` only adds advice on memory
// inside the returned block.
unsafe impl GlobalAlloc for HugePages {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed through to `System`.
        let p = unsafe { System.alloc(layout) };
        advise(p, layout.size());
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.alloc_zeroed(layout) };
        advise(p, layout.size());
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        advise(p, new_size);
        p
    }
}

/// Keeps freed tensor buffers in the process for reuse; call first thing in `main`. Every
/// training step allocates and frees the same few-megabyte activations and gradients; with
/// glibc's defaults those go to `mmap`, or come back from a trimmed heap, so each step pays fresh
/// page faults on them (13% of a CPU step on libtorch here, docs/benchmarks.md).
/// Checkpoint-sized buffers (over 32 MiB) are still mapped and returned.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_from_the_allocator_are_usable_at_every_size() {
        for size in [
            1,
            4095,
            HUGE_FROM - 1,
            HUGE_FROM,
            HUGE_FROM + 12_345,
            40 << 20,
        ] {
            let layout = Layout::from_size_align(size, 64).unwrap();
            // SAFETY: non-zero size; freed with the same layout.
            unsafe {
                let p = HugePages.alloc_zeroed(layout);
                assert!(!p.is_null());
                assert_eq!(*p.add(size - 1), 0);
                *p.add(size - 1) = 7;
                let q = HugePages.realloc(p, layout, size * 2);
                assert_eq!(*q.add(size - 1), 7);
                HugePages.dealloc(q, Layout::from_size_align(size * 2, 64).unwrap());
            }
        }
    }
}
