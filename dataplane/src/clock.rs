//! carwash's clock from userspace: the kernel's tick counter as `times(2)`
//! reads it, and the tick length the programs' `bpf_jiffies64` counts in.
//! The loader measures the tick, the tracking table ages flows by it.

/// Now on carwash's clock, in nanoseconds: the kernel's tick counter times
/// the tick length, which the programs read as `bpf_jiffies64` and
/// userspace as `times(2)` (the same counter in steps of 10 ms; see
/// `HostConfig::ns_per_tick`).
pub fn now_ns() -> u64 {
    clock_ticks() * (1_000_000_000 / user_hz())
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of the programs'
/// `bpf_ktime_get_ns` (event and probe-answer timestamps).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime with a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wall-clock milliseconds since the epoch: the time base of `HEALTH`
/// (since when a machine is in its state, the last core switch), which
/// outlives the agent and is shown to operators.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Wall-clock seconds since the epoch: the status's and the fleet's
/// timestamps.
pub fn wall_secs() -> u64 {
    wall_ms() / 1000
}

/// `times(2)`: the kernel's tick counter in `USER_HZ` units.
pub fn clock_ticks() -> u64 {
    let mut t = libc::tms {
        tms_utime: 0,
        tms_stime: 0,
        tms_cutime: 0,
        tms_cstime: 0,
    };
    // SAFETY: valid pointer to a tms.
    unsafe { libc::times(&mut t) as u64 }
}

/// `USER_HZ`: 100 on every Linux architecture carwash runs on.
fn user_hz() -> u64 {
    // SAFETY: plain libc call.
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as u64,
        _ => 100,
    }
}

/// The kernel's tick length in nanoseconds, from its tick counter as the
/// programs read it (`ticks`, read between the `times(2)` readings
/// `before` and `after`): `times(2)` is that counter scaled to `USER_HZ`.
/// Snapped to the tick of a `CONFIG_HZ` the kernel offers.
pub fn tick_ns(ticks: u64, before: u64, after: u64) -> anyhow::Result<u32> {
    anyhow::ensure!(
        ticks > 0 && before > 0 && after >= before,
        "no clock readings ({ticks}, {before}, {after})"
    );
    let per_user_tick = 1_000_000_000 / user_hz();
    let mid = (before + after) as f64 / 2.0 * per_user_tick as f64;
    let measured = mid / ticks as f64;
    // TICK_NSEC of HZ = 100, 250, 300, 1000.
    for tick in [10_000_000u32, 4_000_000, 3_333_333, 1_000_000] {
        if (measured / tick as f64 - 1.0).abs() < 0.01 {
            return Ok(tick);
        }
    }
    anyhow::bail!("the kernel's tick is {measured:.0} ns long, which is no CONFIG_HZ carwash knows")
}
