//! The allocator of the `edgewatch` binary, set up the same way wherever its figures matter
//! (the binary, and the benchmarks that time the pipeline's own code): mimalloc, with no
//! transparent huge pages. [`product_allocator!`](crate::product_allocator) declares both in the
//! crate that invokes it, because a global allocator and an `.init_array` entry belong to
//! the final binary.

#[doc(hidden)]
pub use libmimalloc_sys;
#[doc(hidden)]
pub use mimalloc;

/// mimalloc v3's `mi_option_allow_thp` (its index in `mi_option_e` of the mimalloc that
/// `libmimalloc-sys` builds), whose default is 1: transparent huge pages allowed.
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;
// The index above is read from that mimalloc's header, whose options end at 47: another
// mimalloc (an update of the crate) has to be read again.
const _: () = assert!(
    libmimalloc_sys::_mi_option_last == 47,
    "mimalloc's options changed: check MI_OPTION_ALLOW_THP's index"
);

/// No transparent huge pages for the heap. mimalloc reserves its arena (1 GiB of address
/// space, committed only where it is used) and by default asks for huge pages in it: every
/// 2 MiB stretch it touches then becomes resident as a whole (the idle sidecar's RSS: 49 MiB
/// with them, 26-28 MiB without). Until 2026-12-06 the binary had no arena instead (25 MiB
/// idle), which sent every new stretch of heap to the OS on its own: a flood's memory cost
/// four times the CPU (`cargo bench --bench floods`: 12-21 ms against 3-5 ms for 20,000
/// unmatched request ids, 115-143 ms against 25-49 ms for 20,000 new connections). Only
/// done when the option at that index has its default (1), so a value other than that one
/// (from `MIMALLOC_ALLOW_THP`) is left as it is; `MIMALLOC_ALLOW_THP=1` cannot turn huge
/// pages back on. Called by [`product_allocator!`](crate::product_allocator) before the first
/// allocation.
#[doc(hidden)]
pub extern "C" fn no_huge_pages() {
    // SAFETY: mimalloc's option calls have no preconditions and may run before any allocation.
    unsafe {
        if libmimalloc_sys::mi_option_get(MI_OPTION_ALLOW_THP) == 1 {
            libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0);
        }
    }
}

/// Gives freed heap back to the OS: with `now`, all of it; without, what has been free for
/// mimalloc's purge delay. mimalloc purges its arena only as it allocates, and an idle sidecar
/// hardly does: the live loop calls this once when it is ready and then once a second. Without
/// it, `cargo bench --bench sessions` measured 58.3 MiB at 10,000 sessions, 53.0-53.6 with it
/// (52.6 on the last VM, with no arena at all). A no-op for memory that another allocator
/// holds.
pub fn release_freed(now: bool) {
    // SAFETY: no preconditions; it only purges memory mimalloc holds and nothing points into.
    unsafe { libmimalloc_sys::mi_collect(now) }
}

/// Declares the product's allocator in the invoking binary: mimalloc as the global
/// allocator, and an `.init_array` entry that runs [`no_huge_pages`] before `main` (and
/// before the Rust runtime's first allocation).
///
/// mimalloc instead of glibc's malloc: the live path allocates a few short strings per HTTP
/// exchange and frees them a batch later, a pattern on which glibc leaves its per-thread
/// cache and takes its slow path (the largest share of the sidecar's own CPU in profiles).
#[macro_export]
macro_rules! product_allocator {
    () => {
        #[global_allocator]
        static ALLOC: $crate::allocator::mimalloc::MiMalloc = $crate::allocator::mimalloc::MiMalloc;

        #[used]
        #[unsafe(link_section = ".init_array")]
        static NO_HUGE_PAGES: extern "C" fn() = $crate::allocator::no_huge_pages;
    };
}
