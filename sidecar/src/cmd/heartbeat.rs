//! The watch loop's heartbeat: a periodic `timerfd` (CLOCK_MONOTONIC) read through tokio's
//! `AsyncFd`. The loop drains the ring buffer on it and does its periodic work when due.
//!
//! Not a tokio timer: tokio's timer wheel keeps a deadline more than 64 ms away in a coarser
//! level and wakes the runtime at the start of that level's slot to move it down, then again at
//! the deadline. A 100 ms tokio sleep therefore costs two wake-ups (and a self-notification of
//! the runtime), where a `timerfd` costs one: on this 2-core VM a bare 100 ms loop took ~1.5 ms
//! of CPU a second on tokio's timer and ~0.9 ms on a `timerfd`.
use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use tokio::io::unix::AsyncFd;

pub struct Heartbeat {
    fd: AsyncFd<OwnedFd>,
    period: Duration,
}

impl Heartbeat {
    /// A heartbeat every `period` (its first beat one period from now).
    pub fn new(period: Duration) -> std::io::Result<Self> {
        // SAFETY: plain system call; the result is checked before use.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a file descriptor just created and owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and unchanged
        // until the AsyncFd (and with it the registration) is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
        let mut beat = Self {
            fd,
            period: Duration::ZERO,
        };
        beat.set_period(period)?;
        Ok(beat)
    }

    /// Beats every `period` from now on (nothing changes if it already does).
    pub fn set_period(&mut self, period: Duration) -> std::io::Result<()> {
        if period == self.period {
            return Ok(());
        }
        // A zero it_value would disarm the timer: at least a microsecond.
        let period = period.max(Duration::from_micros(1));
        let ts = libc::timespec {
            tv_sec: libc::time_t::try_from(period.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(period.subsec_nanos().cast_signed()),
        };
        let spec = libc::itimerspec {
            it_interval: ts,
            it_value: ts,
        };
        // SAFETY: the fd is a timerfd this struct owns; `spec` is a valid itimerspec and the
        // old value is not asked for (null).
        let rc = unsafe {
            libc::timerfd_settime(
                self.fd.get_ref().as_raw_fd(),
                0,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.period = period;
        Ok(())
    }

    /// Waits for the next beat; the number of beats since the last call (more than one when
    /// the loop ran late).
    pub async fn tick(&self) -> std::io::Result<u64> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            // SAFETY: reads 8 bytes into an 8-byte buffer from the timerfd this struct owns.
            let n = unsafe {
                libc::read(
                    self.fd.get_ref().as_raw_fd(),
                    expirations.as_mut_ptr().cast(),
                    expirations.len(),
                )
            };
            if n == 8 {
                // Read, the timerfd is not readable until the next expiration: saying so now
                // saves the next tick a `read` that would only fail with EAGAIN. (An
                // expiration that arrived since `readable` keeps the readiness: tokio clears
                // only what this guard saw.)
                guard.clear_ready();
                return Ok(u64::from_ne_bytes(expirations));
            }
            let e = std::io::Error::last_os_error();
            if n < 0 && e.kind() == std::io::ErrorKind::WouldBlock {
                guard.clear_ready();
                continue;
            }
            if n < 0 && e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(if n < 0 {
                e
            } else {
                std::io::Error::other(format!("a timerfd read returned {n} bytes, not 8"))
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_beat_leaves_no_readiness_behind() {
        // After a beat the timerfd is unreadable until the next one (200 ms away): were the
        // readiness kept, the next tick would first spend a `read` on EAGAIN.
        let beat = Heartbeat::new(Duration::from_millis(200)).expect("a timerfd");
        beat.tick().await.expect("a beat");
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(beat.fd.poll_read_ready(&mut cx).is_pending());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn beats_at_its_period_and_after_a_change() {
        let mut beat = Heartbeat::new(Duration::from_millis(5)).expect("a timerfd");
        let start = std::time::Instant::now();
        let mut beats = 0;
        while beats < 3 {
            beats += beat.tick().await.expect("a beat");
        }
        // Three beats of 5 ms cannot come sooner than 15 ms after the start.
        assert!(
            start.elapsed() >= Duration::from_millis(15),
            "{:?}",
            start.elapsed()
        );
        beat.set_period(Duration::from_millis(20))
            .expect("the timerfd re-armed");
        let at = std::time::Instant::now();
        assert!(beat.tick().await.expect("a beat") >= 1);
        assert!(
            at.elapsed() >= Duration::from_millis(19),
            "{:?}",
            at.elapsed()
        );
    }
}
