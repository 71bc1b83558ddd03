//! The clocks and system sizes telemetry reads: CLOCK_MONOTONIC (the clock of
//! `bpf_ktime_get_ns` and of every deadline), the calling thread's CPU time, the page size and
//! /proc's clock tick.

use nix::sys::time::TimeSpec;
use nix::time::{clock_gettime, ClockId};
use nix::unistd::{sysconf, SysconfVar};

/// CLOCK_MONOTONIC in ns, the clock of `bpf_ktime_get_ns`.
#[inline]
pub fn monotonic_ns() -> u64 {
    clock_ns(ClockId::CLOCK_MONOTONIC)
}

/// CPU time of the calling thread in ns.
#[inline]
pub fn thread_cpu_ns() -> u64 {
    clock_ns(ClockId::CLOCK_THREAD_CPUTIME_ID)
}

#[inline]
fn clock_ns(clock: ClockId) -> u64 {
    // Both clocks always exist on Linux and nix passes its own out-pointer: this cannot fail.
    let ts = clock_gettime(clock).unwrap_or_else(|_| TimeSpec::new(0, 0));
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// The page size in bytes (at least 4096).
pub fn page_size() -> usize {
    sysconf_or(SysconfVar::PAGE_SIZE, 4096).max(4096) as usize
}

/// Clock ticks per second of /proc's CPU times (`_SC_CLK_TCK`; 100, the kernel's `USER_HZ`,
/// if it could not be asked).
pub fn clock_ticks_per_second() -> u64 {
    sysconf_or(SysconfVar::CLK_TCK, 100).max(1) as u64
}

fn sysconf_or(var: SysconfVar, default: std::ffi::c_long) -> std::ffi::c_long {
    match sysconf(var) {
        Ok(Some(v)) => v,
        _ => default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_and_sizes() {
        let a = monotonic_ns();
        assert!(monotonic_ns() >= a);
        let c = thread_cpu_ns();
        let mut x = 0u64;
        for i in 0..100_000u64 {
            x = x.wrapping_add(std::hint::black_box(i));
        }
        assert!(thread_cpu_ns() > c, "{x}");
        assert!(page_size().is_power_of_two() && page_size() >= 4096);
        assert!(clock_ticks_per_second() >= 1);
    }
}
