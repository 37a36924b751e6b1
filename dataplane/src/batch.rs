//! `BPF_MAP_UPDATE_BATCH` for the allowlist arrays of maps. Every single
//! update of a map-in-map makes the kernel wait for an RCU grace period
//! (so that userspace knows the old inner map is unused): milliseconds per
//! tenant. A batch waits once for all of its elements.
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Sets `keys[i]` of the array of maps `map` to the map whose fd is
/// `fds[i]`, in one syscall.
pub fn set_inner_maps(map: BorrowedFd<'_>, keys: &[u32], fds: &[u32]) -> io::Result<()> {
    assert_eq!(keys.len(), fds.len());
    if keys.is_empty() {
        return Ok(());
    }
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: fds.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: map.as_raw_fd() as u32,
        ..Default::default()
    };
    // SAFETY: attr is a valid bpf_attr prefix; the key and value arrays
    // outlive the call and hold `count` elements each.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &mut attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if attr.count as usize != keys.len() {
        return Err(io::Error::other(format!(
            "batch update stopped after {} of {} elements",
            attr.count,
            keys.len()
        )));
    }
    Ok(())
}
