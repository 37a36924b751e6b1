//! Whether an interface can take the frames an XDP program redirects into
//! it. A driver without `ndo_xdp_xmit`, or a veth whose peer runs no NAPI
//! (neither GRO nor an XDP program on the peer), accepts the program's
//! XDP_REDIRECT and then drops the frame: a silent black hole unless
//! someone checks. The kernel says what a device can do in its
//! `xdp-features` (the `netdev` generic netlink family, Linux 6.3+), which
//! for a veth follows its peer's state; that is what is read here.
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `NETDEV_XDP_ACT_NDO_XMIT`: the device takes redirected XDP frames.
pub const XDP_ACT_NDO_XMIT: u64 = 1 << 2;

const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const NETDEV_CMD_DEV_GET: u8 = 1;
const NETDEV_A_DEV_IFINDEX: u16 = 1;
const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// What an attach-time check found wrong with a redirect target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetProblem {
    pub ifname: String,
    pub ifindex: u32,
    /// What happens and what to change, in a sentence an operator acts on.
    pub warning: String,
}

/// Checks the interfaces the programs redirect into (native XDP only:
/// generic XDP hands redirected frames to the driver's ordinary transmit
/// path, which every device has). An interface whose features cannot be
/// read (a kernel without the `netdev` family) is not reported.
pub fn check_targets(targets: &[(&str, u32)], generic: bool) -> Vec<TargetProblem> {
    if generic {
        return Vec::new();
    }
    let mut out: Vec<TargetProblem> = Vec::new();
    for &(name, ifindex) in targets {
        if out.iter().any(|p| p.ifindex == ifindex) {
            continue;
        }
        let Ok(Some(features)) = xdp_features(ifindex) else {
            continue;
        };
        if features & XDP_ACT_NDO_XMIT != 0 {
            continue;
        }
        out.push(TargetProblem {
            ifname: name.to_string(),
            ifindex,
            warning: warning(name, driver(name).as_deref()),
        });
    }
    out
}

/// The warning for interface `name` (driver `driver`) that cannot take
/// redirected frames.
pub fn warning(name: &str, driver: Option<&str>) -> String {
    match driver {
        Some("veth") => format!(
            "{name} is a veth whose peer runs no NAPI (neither GRO nor an XDP program on the peer): the kernel drops \
             every frame carwash redirects into {name}, after carwash counted it steered. Turn GRO on on the peer \
             (`ethtool -K PEER gro on`, in the peer's namespace), or attach an XDP program to the peer, or run the \
             agent with --skb-mode (generic XDP)"
        ),
        d => format!(
            "{name} (driver {}) cannot transmit XDP frames (no ndo_xdp_xmit): the kernel drops every frame carwash \
             redirects into {name}, after carwash counted it steered. Run the agent with --skb-mode (generic XDP), or \
             use a NIC whose driver supports XDP redirect",
            d.unwrap_or("unknown")
        ),
    }
}

/// The name of the driver behind `name` (`ETHTOOL_GDRVINFO`), in the
/// calling thread's network namespace.
pub fn driver(name: &str) -> Option<String> {
    const ETHTOOL_GDRVINFO: u32 = 3;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut DrvInfo,
        _pad: [u8; 16],
    }
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: all-zero is a valid DrvInfo.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut info,
        _pad: [0; 16],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: plain socket call; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd is a fresh descriptor of ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: req points at a live DrvInfo for the duration of the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), SIOCETHTOOL, &mut req) } != 0 {
        return None;
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(info.driver.len());
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// The `xdp-features` of interface `ifindex` (`NETDEV_XDP_ACT_*` bits);
/// `None` when the kernel has no `netdev` family to ask.
pub fn xdp_features(ifindex: u32) -> io::Result<Option<u64>> {
    let sock = GenlSocket::open()?;
    let Some(family) = sock.family_id("netdev")? else {
        return Ok(None);
    };
    let reply = sock.request(
        family,
        NETDEV_CMD_DEV_GET,
        &[(NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes())],
    )?;
    Ok(attr(&reply, NETDEV_A_DEV_XDP_FEATURES).and_then(|v| Some(u64::from_ne_bytes(v.try_into().ok()?))))
}

struct GenlSocket(OwnedFd);

impl GenlSocket {
    fn open() -> io::Result<GenlSocket> {
        // SAFETY: plain socket call; the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_GENERIC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor of ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let tv = libc::timeval { tv_sec: 2, tv_usec: 0 };
        // SAFETY: tv is a valid timeval of the size given.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        Ok(GenlSocket(fd))
    }

    fn family_id(&self, name: &str) -> io::Result<Option<u16>> {
        let mut cname = name.as_bytes().to_vec();
        cname.push(0);
        match self.request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, &[(CTRL_ATTR_FAMILY_NAME, &cname)]) {
            Ok(reply) => {
                Ok(attr(&reply, CTRL_ATTR_FAMILY_ID).and_then(|v| Some(u16::from_ne_bytes(v.try_into().ok()?))))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends one request and returns the attributes of its answer.
    fn request(&self, family: u16, cmd: u8, attrs: &[(u16, &[u8])]) -> io::Result<Vec<u8>> {
        let mut msg = vec![0u8; 16];
        msg.extend_from_slice(&[cmd, 1, 0, 0]);
        for (kind, value) in attrs {
            msg.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
            msg.extend_from_slice(&kind.to_ne_bytes());
            msg.extend_from_slice(value);
            while !msg.len().is_multiple_of(4) {
                msg.push(0);
            }
        }
        let len = msg.len() as u32;
        msg[0..4].copy_from_slice(&len.to_ne_bytes());
        msg[4..6].copy_from_slice(&family.to_ne_bytes());
        msg[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        msg[8..12].copy_from_slice(&1u32.to_ne_bytes());
        // SAFETY: msg is a valid buffer of the length given; the kernel is
        // the default destination of a netlink socket.
        if unsafe { libc::send(self.0.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 16384];
        // SAFETY: buf is a valid buffer of the length given.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let buf = &buf[..n as usize];
        if buf.len() < 20 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "short netlink answer"));
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if kind == NLMSG_ERROR {
            let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
            return Err(io::Error::from_raw_os_error(-code));
        }
        let total = (u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize).min(buf.len());
        Ok(buf.get(20..total).unwrap_or_default().to_vec())
    }
}

/// The value of attribute `kind` in a run of netlink attributes.
fn attr(mut attrs: &[u8], kind: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let k = u16::from_ne_bytes([attrs[2], attrs[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if k == kind {
            return Some(&attrs[4..len]);
        }
        attrs = &attrs[len.next_multiple_of(4).min(attrs.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_found_past_padding() {
        // A 5-byte attribute padded to 8, then a u64.
        let mut a = vec![5, 0, 9, 0, b'x', 0, 0, 0];
        a.extend_from_slice(&[12, 0, 3, 0]);
        a.extend_from_slice(&7u64.to_ne_bytes());
        assert_eq!(attr(&a, 3), Some(&7u64.to_ne_bytes()[..]));
        assert_eq!(attr(&a, 9), Some(&b"x"[..]));
        assert_eq!(attr(&a, 4), None);
        assert_eq!(attr(&[200, 0, 1, 0], 1), None, "a length past the end");
    }

    #[test]
    fn the_warnings_say_what_to_change() {
        let v = warning("fabric", Some("veth"));
        assert!(
            v.contains("peer") && v.contains("gro on") && v.contains("XDP program"),
            "{v}"
        );
        let d = warning("eth1", Some("foo"));
        assert!(
            d.contains("ndo_xdp_xmit") && d.contains("--skb-mode") && d.contains("driver foo"),
            "{d}"
        );
    }
}
