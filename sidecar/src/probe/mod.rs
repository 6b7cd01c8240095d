//! The kernel probes: loading and attaching them (`loader`), the tracepoint layouts they
//! rely on (`tracefs`), their config section (`config`); decoding what they send is the
//! core's (`events`).
pub mod caps;
pub mod config;
pub use edgewatch_core::probe::events;
pub mod loader;
pub mod tracefs;

/// CLOCK_BOOTTIME now, in nanoseconds (the clock the probes stamp events with).
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}
