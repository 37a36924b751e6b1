//! The bpffs under the pin path.
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Whether `path` lies on a mounted bpffs.
pub fn on_bpffs(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, mnt, fstype) = (f.next(), f.next(), f.next());
        fstype == Some("bpf") && mnt.is_some_and(|m| path.starts_with(m))
    })
}

/// Mounts bpffs at /sys/fs/bpf when `pin_path` is below it and nothing is
/// mounted there yet; refuses a pin path on any other file system.
pub fn ensure_bpffs(pin_path: &Path) -> Result<()> {
    if on_bpffs(pin_path) {
        return Ok(());
    }
    let root = Path::new("/sys/fs/bpf");
    if !pin_path.starts_with(root) {
        bail!(
            "pin_path {} is not on a bpffs mount; mount one (mount -t bpf bpf DIR) or use a path below /sys/fs/bpf",
            pin_path.display()
        );
    }
    let c = std::ffi::CString::new("bpf").expect("literal");
    let target = std::ffi::CString::new("/sys/fs/bpf").expect("literal");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(c.as_ptr(), target.as_ptr(), c.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("mounting bpffs at /sys/fs/bpf");
    }
    Ok(())
}
