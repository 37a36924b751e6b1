//! The service manager's side of the agent (systemd's notify protocol):
//! `READY=1` once the programs are attached and the first policy set is in
//! force, `STATUS=` with the generation after every apply, `RELOADING=1` /
//! `READY=1` around a reload, `WATCHDOG=1` from the main loop, `STOPPING=1`.
//! Without `NOTIFY_SOCKET` (not started by a service manager) all of it is
//! silent.
use std::time::Duration;

use sd_notify::NotifyState;
use tracing::warn;

/// The exit code of an agent whose service manager waits for readiness and
/// whose first policy set was refused: `EX_CONFIG`, which the unit lists in
/// `RestartPreventExitStatus=` (restarting cannot fix a policy file).
pub const EXIT_POLICY_REFUSED: u8 = 78;

/// The agent's line to its service manager, if it has one.
pub struct Notifier {
    /// How often the main loop pets the watchdog (half of `WatchdogSec=`).
    watchdog: Option<Duration>,
}

impl Notifier {
    /// The service manager that started this process (`NOTIFY_SOCKET`).
    pub fn from_env() -> Option<Notifier> {
        std::env::var_os("NOTIFY_SOCKET")?;
        Some(Notifier {
            watchdog: sd_notify::watchdog_enabled().map(|d| d / 2),
        })
    }

    /// How often to pet the watchdog, when the service manager keeps one.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog
    }

    pub fn ready(&self, status: &str) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        send(&[NotifyState::Status(status)]);
    }

    /// Before a reload: `RELOADING=1` with the monotonic time systemd needs
    /// to match the `READY=1` that ends it.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => send(&[NotifyState::Reloading, now]),
            Err(e) => warn!(error = %e, "reading CLOCK_MONOTONIC for RELOADING=1"),
        }
    }

    pub fn watchdog(&self) {
        send(&[NotifyState::Watchdog]);
    }

    pub fn stopping(&self, status: &str) {
        send(&[NotifyState::Stopping, NotifyState::Status(status)]);
    }
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "telling the service manager");
    }
}
