//! Bounds for someone else's code that roux runs in its own process: a checkpoint's chat
//! template, which minijinja compiles and renders, and its tokenizer (normalizers and
//! pre-tokenizer patterns from tokenizer.json). They bound steps at best, not what a step costs:
//! `{% set ns.s = ns.s ~ ns.s %}` forty times asks for a terabyte in forty steps,
//! `{{ big|length }}` in a loop scans a hundred megabytes a step, and a `Replace` normalizer
//! matching the empty string puts its replacement between every two characters. Rust cannot
//! unwind out of a failed allocation, and neither can be interrupted; so inside `within` the
//! process's allocator counts what the thread allocates, a watchdog thread watches the clock,
//! and either bound, passed, ends the process with a message (exit 2) rather than exhausting the
//! machine or hanging. Outside `within` the allocator is the system's plus one thread-local read.
//! A value nested a million deep (`{% set ns.x = [ns.x] %}` in two loops) overflows the stack
//! when printed, compared or dropped; inside `within` that ends the process with a message too.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The most one call may hold at once, and allocate in all (a render of a long conversation
/// needs a few megabytes; two gigabytes of allocations take about a second).
const LIVE_CAP: isize = 256 << 20;
const TOTAL_CAP: usize = 2 << 30;

/// The time a series of calls may take (`Guard::for_bytes`): a floor, and 256 µs a byte of the
/// input, some eighty times what rendering and encoding take here.
const TIME_FLOOR: Duration = Duration::from_secs(10);
const TIME_PER_BYTE: Duration = Duration::from_micros(256);

/// Bounds for a series of calls into one piece of someone else's code (the renders of a data
/// set's conversations, the encodings of its texts): each call's memory, and their time together.
pub struct Guard {
    what: &'static str,
    used: Cell<Duration>,
    allowed: Cell<Duration>,
}

impl Guard {
    /// `what` names the code in the message ("a chat template").
    pub fn new(what: &'static str) -> Guard {
        Guard { what, used: Cell::new(Duration::ZERO), allowed: Cell::new(TIME_FLOOR) }
    }

    /// Allow the time due to `bytes` of input, from here on.
    pub fn allow_bytes(&self, bytes: usize) {
        self.allowed.set(TIME_FLOOR.saturating_add(TIME_PER_BYTE.saturating_mul(u32::try_from(bytes).unwrap_or(u32::MAX))));
    }

    /// `f`'s result and the bytes it allocated, `f` bounded.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> (T, usize) {
        let started = Instant::now();
        let out = within(self.what, started + self.allowed.get().saturating_sub(self.used.get()), f);
        self.used.set(self.used.get() + started.elapsed());
        out
    }
}

/// The system allocator, counting inside `within`.
pub struct Counting;

#[derive(Clone, Copy)]
struct Count {
    what: &'static str,
    live: isize,
    total: usize,
}

thread_local! {
    static COUNT: Cell<Option<Count>> = const { Cell::new(None) };
}

/// The calls in progress (one per thread inside `within`): what runs, and its deadline.
static DEADLINES: Mutex<Vec<(u64, &'static str, Instant)>> = Mutex::new(Vec::new());

/// `f`'s result and the bytes it allocated; `f` must end by `deadline` and stay within the
/// memory bounds above.
fn within<T>(what: &'static str, deadline: Instant, f: impl FnOnce() -> T) -> (T, usize) {
    static WATCHDOG: std::sync::Once = std::sync::Once::new();
    WATCHDOG.call_once(|| {
        std::thread::spawn(watch);
        overflow::install();
    });
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    DEADLINES.lock().unwrap_or_else(|e| e.into_inner()).push((id, what, deadline));
    // Restored however `f` ends (a panic included), so no stale count outlives the call.
    struct Restore(u64, Option<Count>);
    impl Drop for Restore {
        fn drop(&mut self) {
            COUNT.set(self.1);
            DEADLINES.lock().unwrap_or_else(|e| e.into_inner()).retain(|(i, _, _)| *i != self.0);
        }
    }
    let outer = Restore(id, COUNT.replace(Some(Count { what, live: 0, total: 0 })));
    let out = f();
    let total = COUNT.get().map_or(0, |c| c.total);
    drop(outer);
    (out, total)
}

fn watch() {
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = Instant::now();
        let late = DEADLINES.lock().unwrap_or_else(|e| e.into_inner()).iter().find(|(_, _, d)| *d < now).map(|(_, what, _)| *what);
        if let Some(what) = late {
            stop(what, " ran past the time roux allows it (10 s, and 256 µs more a byte of its input)");
        }
    }
}

/// The process's last words (written without allocating) and its end.
fn stop(what: &str, why: &str) -> ! {
    let mut err = std::io::stderr().lock();
    for part in ["error: ", what, why, "; roux stops here (it is someone else's code, and roux bounds what it may use)\n"] {
        let _ = std::io::Write::write_all(&mut err, part.as_bytes());
    }
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
            stop(n.what, " asked for more than 256 MiB of memory at once, or 2 GiB in all, in one call");
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

/// A stack overflow inside `within`: the fault on the stack's guard page reaches this handler
/// (on the signal stack Rust gives every thread it starts), which names the code and exits 2
/// instead of Rust's "fatal runtime error: stack overflow" abort. Any other fault is passed on
/// to the handler installed before (Rust's), by restoring it and returning to the faulting
/// instruction.
mod overflow {
    use std::sync::OnceLock;

    struct Previous([libc::sigaction; 2]);
    // SAFETY: written once, before the handler that reads it is installed; read-only after.
    unsafe impl Sync for Previous {}
    unsafe impl Send for Previous {}
    static PREVIOUS: OnceLock<Previous> = OnceLock::new();
    const SIGNALS: [libc::c_int; 2] = [libc::SIGSEGV, libc::SIGBUS];

    pub fn install() {
        // SAFETY: plain sigaction calls on zeroed structs; the handler only reads a
        // thread-local `Cell` of numbers, writes to fd 2 and exits or restores.
        unsafe {
            let mut old: [libc::sigaction; 2] = std::mem::zeroed();
            for (i, sig) in SIGNALS.iter().enumerate() {
                libc::sigaction(*sig, std::ptr::null(), &mut old[i]);
            }
            if PREVIOUS.set(Previous(old)).is_err() {
                return;
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            for sig in SIGNALS {
                libc::sigaction(sig, &action, std::ptr::null_mut());
            }
        }
    }

    extern "C" fn handler(sig: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
        let what = super::COUNT.try_with(|c| c.get().map(|n| n.what)).ok().flatten();
        // SAFETY: write(2) and _exit(2) are async-signal-safe; sigaction restores a saved action.
        unsafe {
            if let Some(what) = what {
                for part in ["error: ", what, " ran out of stack (a value or a call nested too deep)", "; roux stops here (it is someone else's code, and roux bounds what it may use)\n"] {
                    libc::write(2, part.as_ptr().cast(), part.len());
                }
                libc::_exit(2);
            }
            if let (Some(p), Some(i)) = (PREVIOUS.get(), SIGNALS.iter().position(|s| *s == sig)) {
                libc::sigaction(sig, &p.0[i], std::ptr::null_mut());
            }
        }
    }
}
