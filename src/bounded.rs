//! Bounds for someone else's code that roux runs in its own process: a checkpoint's chat
//! template, which minijinja compiles and renders. minijinja bounds a render's steps (fuel), not
//! what a step costs: `{% set ns.s = ns.s ~ ns.s %}` forty times asks for a terabyte in forty
//! steps, and `{{ big|length }}` in a loop scans a hundred megabytes a step. Rust cannot unwind
//! out of a failed allocation, and a render cannot be interrupted; so inside `within` the
//! process's allocator counts what the thread allocates, a watchdog thread watches the clock,
//! and either bound, passed, ends the process with a message (exit 2) rather than exhausting the
//! machine or hanging. Outside `within` the allocator is the system's plus one thread-local read.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The most one call may hold at once, and allocate in all (a render of a long conversation
/// needs a few megabytes; two gigabytes of allocations take about a second).
const LIVE_CAP: isize = 256 << 20;
const TOTAL_CAP: usize = 2 << 30;

const OVER_MEMORY: &str = "error: a chat template asked for more than 256 MiB of memory at once, or 2 GiB in all, for one conversation; roux stops here (a template is someone else's code, and roux bounds what it may use)\n";
const OVER_TIME: &str = "error: a chat template ran past the time roux allows it (10 s, and 256 µs more per byte of a data set); roux stops here (a template is someone else's code, and roux bounds what it may use)\n";

/// The system allocator, counting inside `within`.
pub struct Counting;

#[derive(Clone, Copy)]
struct Count {
    live: isize,
    total: usize,
}

thread_local! {
    static COUNT: Cell<Option<Count>> = const { Cell::new(None) };
}

/// The deadlines of the calls in progress (one per thread inside `within`).
static DEADLINES: Mutex<Vec<(u64, Instant)>> = Mutex::new(Vec::new());

/// `f`'s result and the bytes it allocated; `f` must end by `deadline` and stay within the
/// memory bounds above.
pub fn within<T>(deadline: Instant, f: impl FnOnce() -> T) -> (T, usize) {
    static WATCHDOG: std::sync::Once = std::sync::Once::new();
    WATCHDOG.call_once(|| {
        std::thread::spawn(watch);
    });
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    DEADLINES.lock().unwrap_or_else(|e| e.into_inner()).push((id, deadline));
    // Restored however `f` ends (a panic included), so no stale count outlives the call.
    struct Restore(u64, Option<Count>);
    impl Drop for Restore {
        fn drop(&mut self) {
            COUNT.set(self.1);
            DEADLINES.lock().unwrap_or_else(|e| e.into_inner()).retain(|(i, _)| *i != self.0);
        }
    }
    let outer = Restore(id, COUNT.replace(Some(Count { live: 0, total: 0 })));
    let out = f();
    let total = COUNT.get().map_or(0, |c| c.total);
    drop(outer);
    (out, total)
}

fn watch() {
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = Instant::now();
        if DEADLINES.lock().unwrap_or_else(|e| e.into_inner()).iter().any(|(_, d)| *d < now) {
            stop(OVER_TIME);
        }
    }
}

fn stop(why: &str) -> ! {
    let _ = std::io::Write::write_all(&mut std::io::stderr(), why.as_bytes());
    std::process::exit(2);
}

fn charge(live: isize, total: usize) {
    let _ = COUNT.try_with(|c| {
        let Some(mut n) = c.get() else { return };
        n.live = n.live.saturating_add(live);
        n.total = n.total.saturating_add(total);
        if n.live > LIVE_CAP || n.total > TOTAL_CAP {
            // Counting stops first: what follows may allocate.
            c.set(None);
            stop(OVER_MEMORY);
        }
        c.set(Some(n));
    });
}

// SAFETY: every call is passed on to `System` unchanged; counting touches only a thread-local
// `Cell` of plain numbers (no allocation, no destructor).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        charge(layout.size() as isize, layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        charge(layout.size() as isize, layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        charge(-(layout.size() as isize), 0);
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        charge(new_size as isize - layout.size() as isize, new_size.saturating_sub(layout.size()));
        System.realloc(ptr, layout, new_size)
    }
}
