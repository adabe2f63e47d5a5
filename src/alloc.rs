//! The global allocator: mimalloc, with an optional cap on the bytes a process holds.
//!
//! The cap is for the chat-template worker ([`crate::input::chat::sandbox`]), a process of its
//! own that renders templates given in requests: once capped, an allocation that would take the
//! process past its cap fails, and Rust aborts the worker ("memory allocation of N bytes
//! failed"), which the server reports as a template that needs too much memory. A process that
//! never sets a cap (the server, tests, benches) pays one relaxed atomic load per allocation.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};

/// No cap: allocations are not counted.
const UNCAPPED: usize = usize::MAX;

static CAP: AtomicUsize = AtomicUsize::new(UNCAPPED);
/// Bytes allocated and not yet freed since the cap was set (allocations made before it and
/// freed after it make this low, never high).
static LIVE: AtomicIsize = AtomicIsize::new(0);

/// mimalloc with an optional cap; see the module doc.
pub(crate) struct Capped;

/// Caps the bytes this process may hold from now on. For a process of its own only: once the
/// cap is reached, the next allocation aborts the process.
pub(crate) fn set_cap(bytes: usize) {
    CAP.store(bytes.min(UNCAPPED - 1), Ordering::SeqCst);
}

/// Counts `size` more bytes; false when that would pass the cap (nothing is counted then).
fn take(size: usize) -> bool {
    let cap = CAP.load(Ordering::Relaxed);
    if cap == UNCAPPED {
        return true;
    }
    let size = size as isize;
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    if live.max(0) as usize > cap {
        LIVE.fetch_sub(size, Ordering::Relaxed);
        return false;
    }
    true
}

fn give(size: usize) {
    if CAP.load(Ordering::Relaxed) != UNCAPPED {
        LIVE.fetch_sub(size as isize, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to mimalloc with the caller's arguments; the cap only turns an
// allocation into a null pointer, which `GlobalAlloc` allows.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !take(layout.size()) {
            return std::ptr::null_mut();
        }
        mimalloc::MiMalloc.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !take(layout.size()) {
            return std::ptr::null_mut();
        }
        mimalloc::MiMalloc.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        mimalloc::MiMalloc.dealloc(ptr, layout);
        give(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old && !take(new_size - old) {
            return std::ptr::null_mut();
        }
        let out = mimalloc::MiMalloc.realloc(ptr, layout, new_size);
        if new_size < old {
            give(old - new_size);
        }
        out
    }
}
