//! Transparent huge pages for the table's large arrays.
//!
//! At a million connections every lookup touches two random lines of a table hundreds of MiB
//! large; with 4 KiB pages each is also a TLB miss and a page walk (a nested one in a VM).
//! Backing the arrays with 2 MiB pages removes most of those: measured on the established-flow
//! benchmark at 1M flows, 7.7 against 11.0 Mpps (docs/BENCHMARKS.md). Kernels set to
//! `madvise` mode (Debian's default) give huge pages only to ranges advised so; the advice is
//! given before the memory is first touched, so the first touch already faults huge pages in.

/// Arrays from this size on are advised.
const LARGE: usize = 4 << 20;
/// The huge page size on x86_64 and aarch64 (4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;

/// Advises the kernel to back the whole huge pages inside `len` bytes at `ptr` with huge
/// pages. Only advice: where it is refused (THP off, another OS) the memory is the same.
pub(super) fn advise(ptr: *const u8, len: usize) {
    if len < LARGE {
        return;
    }
    let start = (ptr as usize).next_multiple_of(HUGE_PAGE);
    let end = (ptr as usize).saturating_add(len) / HUGE_PAGE * HUGE_PAGE;
    if end <= start {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: the range lies inside an allocation the caller owns and has not yet handed
    // out; MADV_HUGEPAGE changes how its pages are backed, never their contents, and a
    // failure (EINVAL where THP is compiled out) leaves 4 KiB pages, so it is ignored.
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
    }
}
