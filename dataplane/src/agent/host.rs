//! The host side of the agent: the interfaces (through rtnetlink) and the
//! forwarding settings `bpf_fib_lookup` needs.
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage, LinkXdp};
use serde::Serialize;
use tracing::{info, warn};

/// An interface as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interface {
    pub name: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// Id of the XDP program attached to it, if any.
    pub xdp_prog_id: Option<u32>,
}

impl Interface {
    pub fn mac_string(&self) -> String {
        carwash_policy::MacAddr(self.mac).to_string()
    }
}

fn from_message(name: &str, msg: &LinkMessage) -> Result<Interface> {
    let mut iface = Interface {
        name: name.to_string(),
        ifindex: msg.header.index,
        mac: [0; 6],
        mtu: 0,
        xdp_prog_id: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::Address(a) if a.len() == 6 => iface.mac.copy_from_slice(a),
            LinkAttribute::Mtu(m) => iface.mtu = *m,
            LinkAttribute::Xdp(x) => {
                for a in x {
                    if let LinkXdp::ProgId(id) = a
                        && *id != 0
                    {
                        iface.xdp_prog_id = Some(*id);
                    }
                }
            }
            _ => {}
        }
    }
    if iface.mtu == 0 {
        bail!("interface {name}: the kernel reported no MTU");
    }
    Ok(iface)
}

/// Looks interfaces up by name in the calling thread's network namespace.
pub async fn interfaces(names: &[&str]) -> Result<Vec<Interface>> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening an rtnetlink socket")?;
    let task = tokio::spawn(conn);
    let mut out = Vec::new();
    for name in names {
        let mut stream = handle.link().get().match_name(name.to_string()).execute();
        let msg = match stream.try_next().await {
            Ok(Some(msg)) => msg,
            Ok(None) => bail!("no interface {name}"),
            Err(e) => return Err(anyhow!("interface {name}: {e}")),
        };
        out.push(from_message(name, &msg)?);
    }
    task.abort();
    Ok(out)
}

fn read_sysctl(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn write_sysctl(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {} = {value}", path.display()))
}

/// Turns on IPv4 and IPv6 forwarding on `dev` if it is off: the programs'
/// `bpf_fib_lookup` answers "forwarding disabled" for packets that arrived
/// on an interface that does not forward. Only this interface is changed,
/// and where it accepted router advertisements (`accept_ra` = 1, which
/// forwarding would turn off) it keeps doing so (`accept_ra` = 2). Returns
/// what was changed.
pub fn enable_forwarding(dev: &str) -> Result<Vec<String>> {
    let mut changed = Vec::new();
    let v4 = Path::new("/proc/sys/net/ipv4/conf").join(dev).join("forwarding");
    if read_sysctl(&v4).as_deref() != Some("1") {
        write_sysctl(&v4, "1")?;
        changed.push(format!("net.ipv4.conf.{dev}.forwarding=1"));
    }
    let v6dir = Path::new("/proc/sys/net/ipv6/conf").join(dev);
    if v6dir.exists() {
        let fwd = v6dir.join("forwarding");
        if read_sysctl(&fwd).as_deref() != Some("1") {
            let ra = v6dir.join("accept_ra");
            if read_sysctl(&ra).as_deref() == Some("1") {
                write_sysctl(&ra, "2")?;
                changed.push(format!("net.ipv6.conf.{dev}.accept_ra=2"));
            }
            write_sysctl(&fwd, "1")?;
            changed.push(format!("net.ipv6.conf.{dev}.forwarding=1"));
        }
    } else {
        warn!(
            dev,
            "IPv6 is disabled on this interface: IPv6 traffic cannot be forwarded"
        );
    }
    if !changed.is_empty() {
        info!(dev, changed = %changed.join(" "), "enabled forwarding");
    }
    Ok(changed)
}
