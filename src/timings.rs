//! Phase timers for whole-process profiling (`MPC_TIMINGS=1 mpc lower ...`).
//!
//! A whole `mpc lower` run is read, parse, verify, the passes, emit and
//! write; its cost as a user sees it (kernel time for page faults, peak
//! memory) is not what an in-memory benchmark measures. With `MPC_TIMINGS`
//! set, each [`mark`] prints one line to stderr for the phase that just
//! ended: wall, user and system time since the previous mark, the resident
//! memory now and the peak so far. Unset, a mark is one relaxed load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Wall clock and CPU times (µs) at the previous mark.
struct Last {
    wall: Instant,
    user_us: i64,
    sys_us: i64,
}

static ON: AtomicBool = AtomicBool::new(false);
static LAST: OnceLock<Mutex<Last>> = OnceLock::new();

/// Reads `MPC_TIMINGS` and starts the clock; call first thing in `main`.
pub fn start() {
    if std::env::var_os("MPC_TIMINGS").is_some_and(|v| !v.is_empty() && v != "0") {
        let (user_us, sys_us, _) = usage();
        let _ = LAST.set(Mutex::new(Last { wall: Instant::now(), user_us, sys_us }));
        ON.store(true, Ordering::Relaxed);
        eprintln!(
            "mpc-timings: {:<16} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "phase", "wall ms", "user ms", "sys ms", "rss MB", "peak MB"
        );
    }
}

/// Ends the phase `name` (it began at the previous mark, or at [`start`]).
#[inline]
pub fn mark(name: &str) {
    if ON.load(Ordering::Relaxed) {
        report(name);
    }
}

#[cold]
fn report(name: &str) {
    let Some(last) = LAST.get() else { return };
    let Ok(mut last) = last.lock() else { return };
    let (user_us, sys_us, peak_kb) = usage();
    let now = Instant::now();
    eprintln!(
        "mpc-timings: {name:<16} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
        (now - last.wall).as_secs_f64() * 1e3,
        (user_us - last.user_us) as f64 / 1e3,
        (sys_us - last.sys_us) as f64 / 1e3,
        resident_mb(),
        peak_kb as f64 / 1024.0,
    );
    // The report's own cost goes to the next phase's wall time only.
    *last = Last { wall: Instant::now(), user_us, sys_us };
}

/// User and system time (µs) and peak resident memory (KiB) of the process.
#[cfg(unix)]
fn usage() -> (i64, i64, i64) {
    // SAFETY: getrusage fills the struct it is given; zeroed is a valid rusage.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer cannot fail.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) };
    let us = |t: libc::timeval| t.tv_sec * 1_000_000 + t.tv_usec;
    (us(r.ru_utime), us(r.ru_stime), r.ru_maxrss)
}

#[cfg(not(unix))]
fn usage() -> (i64, i64, i64) {
    (0, 0, 0)
}

/// Resident memory now (MB), from /proc (0 where there is none).
fn resident_mb() -> f64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<f64>().ok()))
        .unwrap_or(0.0);
    #[cfg(unix)]
    // SAFETY: sysconf only reads a system setting.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;
    #[cfg(not(unix))]
    let page = 4096.0;
    pages * page / (1024.0 * 1024.0)
}
