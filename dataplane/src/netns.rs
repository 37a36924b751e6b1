//! Running a piece of work inside another network namespace: what the
//! kernel answers about interfaces and routes depends on the calling
//! thread's namespace, and the agent may run in one of its own (the lab's
//! `cwlab-host`). Only the network namespace changes: bpffs and the pins
//! are the same from there.
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Runs `f` on a thread inside network namespace `netns` (a name under
/// /run/netns, or a path), or on this thread without one.
pub fn in_netns<T: Send>(netns: Option<&str>, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let Some(name) = netns else {
        return f();
    };
    let path = if name.contains('/') {
        PathBuf::from(name)
    } else {
        Path::new("/run/netns").join(name)
    };
    let file = File::open(&path).with_context(|| {
        format!(
            "opening network namespace {} (`ip netns list` names them)",
            path.display()
        )
    })?;
    let joined = std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns on this thread only, with a descriptor we own.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("entering network namespace {}", path.display()));
            }
            f()
        })
        .join()
    });
    match joined {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
