//! Host configuration (`/etc/carwash/carwash.toml`): every key has a default
//! or a clear error; command-line flags override the file.
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use carwash_policy::MacAddr;
use serde::{Deserialize, Serialize};

pub const DEFAULT_CONFIG: &str = "/etc/carwash/carwash.toml";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnatConfig {
    /// Source ports for SNAT, `LOW-HIGH` inclusive.
    pub port_range: String,
}

impl Default for SnatConfig {
    fn default() -> Self {
        SnatConfig {
            port_range: "20000-59999".into(),
        }
    }
}

impl SnatConfig {
    pub fn ports(&self) -> Result<(u16, u16)> {
        let (lo, hi) = self
            .port_range
            .split_once('-')
            .with_context(|| format!("snat.port_range {:?}: expected LOW-HIGH", self.port_range))?;
        let lo: u16 = lo
            .trim()
            .parse()
            .with_context(|| format!("snat.port_range: bad low port {lo:?}"))?;
        let hi: u16 = hi
            .trim()
            .parse()
            .with_context(|| format!("snat.port_range: bad high port {hi:?}"))?;
        if lo == 0 || lo > hi {
            bail!("snat.port_range {:?}: need 1 <= LOW <= HIGH", self.port_range);
        }
        Ok((lo, hi))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConntrackConfig {
    pub max_entries: u32,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig {
            max_entries: crate::loader::DEFAULT_CONNTRACK_ENTRIES,
        }
    }
}

/// The API socket's access and limits (`[api]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// A group whose members may use the API socket besides root: the
    /// socket is then that group's, mode 0660. Without it: root only, 0600.
    pub group: Option<String>,
    /// The longest request (one line) accepted; a longer one is answered
    /// with an error and the connection closed.
    pub max_request_bytes: usize,
    /// How long a connection may take to send a whole request (idle time
    /// before it included), and to take an answer.
    pub timeout_secs: u64,
    /// Connections served at once; more are told so and closed.
    pub max_connections: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            group: None,
            // A set of 10,000 tenants as JSON is about 10 MB.
            max_request_bytes: 64 << 20,
            timeout_secs: 30,
            max_connections: 16,
        }
    }
}

/// The host configuration (`/etc/carwash/carwash.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    pub uplink: String,
    /// Defaults to `uplink`.
    #[serde(default)]
    pub fabric: Option<String>,
    pub vtep: Ipv4Addr,
    /// Defaults to fabric's MAC.
    #[serde(default)]
    pub router_mac: Option<MacAddr>,
    #[serde(default = "default_policy_dir")]
    pub policy_dir: PathBuf,
    #[serde(default = "default_pin_path")]
    pub pin_path: PathBuf,
    #[serde(default = "default_api_socket")]
    pub api_socket: PathBuf,
    #[serde(default = "default_metrics")]
    pub metrics: String,
    /// The programs' own debug log (aya-log, into the agent's log):
    /// `off` (default), `error`, `warn`, `info`, `debug`, `trace`.
    #[serde(default)]
    pub ebpf_log: crate::loader::EbpfLog,
    #[serde(default)]
    pub snat: SnatConfig,
    #[serde(default)]
    pub conntrack: ConntrackConfig,
    #[serde(default)]
    pub api: ApiConfig,
    /// The flow log: every event, as JSON lines.
    #[serde(default = "default_event_log")]
    pub event_log: PathBuf,
    /// Days of flow log kept (rotated files older than that are deleted).
    #[serde(default = "default_event_retention_days")]
    pub event_retention_days: u32,
    #[serde(default)]
    pub events: EventsConfig,
    /// The policy set from etcd instead of `policy_dir` alone.
    #[serde(default)]
    pub etcd: Option<crate::etcd::EtcdConfig>,
    /// Several hosts behind ECMP (`[cluster]`): absent on a single host.
    #[serde(default)]
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Where the health probes leave from (`[probes]`).
    #[serde(default)]
    pub probes: ProbesConfig,
}

/// The health probes' own corner of the host (`[probes]`): the address
/// their sockets bind to (replies to it are taken off the fabric and
/// handed to the stack, so it must be an address nothing else uses), and
/// the routing table and rule priority that send marked sockets to the
/// probe program.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProbesConfig {
    /// Off: no probes (and no probe device); machines stay as drains and
    /// activations by hand leave them.
    pub enabled: bool,
    pub source: std::net::Ipv4Addr,
    pub table: u32,
    pub rule_priority: u32,
    /// Who answers a machine's SYN-ACK to a half-open probe with a reset.
    pub resets: ProbeResets,
}

/// Who sends the reset that answers a machine's SYN-ACK to a half-open
/// probe (`[probes] resets`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeResets {
    /// The fabric's programs: the fabric program rewrites the SYN-ACK into
    /// the reset and `carwash_probe_reset` (TC ingress on the fabric) sends
    /// it back out; no packet of the agent's. Where the fabric's driver
    /// keeps no XDP metadata, or the program cannot be attached, the agent
    /// sends them (and says so in its log).
    #[default]
    Fabric,
    /// The agent: one datagram per SYN-ACK, sent with the next probes.
    Agent,
}

impl Default for ProbesConfig {
    fn default() -> Self {
        ProbesConfig {
            enabled: true,
            // RFC 7600's "IPv4 dummy address": never a real peer's, never
            // a tenant's VIP or private address.
            source: std::net::Ipv4Addr::new(192, 0, 0, 8),
            table: 3232,
            // The mark rule here, the source rule one after, the `local`
            // table's rule (moved from 0) two after: low, so that no rule
            // of someone else's comes between 0 and the `local` rule.
            rule_priority: 100,
            resets: ProbeResets::Fabric,
        }
    }
}

fn default_event_log() -> PathBuf {
    "/var/log/carwash/events.jsonl".into()
}
fn default_event_retention_days() -> u32 {
    30
}

/// The data path's event budget and the flow log's size limit (`[events]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Events per second per tenant and CPU; 0: no data-path events.
    pub rate_per_sec: u32,
    /// Events a tenant may report at once on a CPU before the rate applies.
    pub burst: u32,
    /// Report one allowed packet in this many (0, the default: none).
    pub flow_sample: u32,
    /// The flow log is rotated at this size as well as daily.
    pub max_file_bytes: u64,
    /// Events queued for one `carwash monitor`; a monitor that falls
    /// further behind loses events (counted) rather than slowing the agent.
    pub monitor_queue: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            rate_per_sec: dataplane_common::events::DEFAULT_EVENT_RATE,
            burst: dataplane_common::events::DEFAULT_EVENT_BURST,
            flow_sample: 0,
            max_file_bytes: 256 << 20,
            monitor_queue: 4096,
        }
    }
}

impl EventsConfig {
    pub fn limits(&self) -> crate::maps::events::EventLimits {
        crate::maps::events::EventLimits {
            rate: self.rate_per_sec,
            burst: self.burst,
            flow_sample: self.flow_sample,
        }
    }
}

fn default_policy_dir() -> PathBuf {
    "/etc/carwash/policies".into()
}
pub fn default_pin_path() -> PathBuf {
    "/sys/fs/bpf/carwash".into()
}
fn default_api_socket() -> PathBuf {
    "/run/carwash/api.sock".into()
}
fn default_metrics() -> String {
    "127.0.0.1:9464".into()
}

impl HostConfig {
    pub fn parse(text: &str) -> Result<HostConfig> {
        let cfg: HostConfig = toml::from_str(text)?;
        let range = cfg.snat.ports()?;
        if let Some(c) = &cfg.cluster {
            c.blocks(range)?;
        }
        cfg.metrics_addr()?;
        if let Some(e) = &cfg.etcd {
            e.check()?;
        }
        if cfg.api.max_request_bytes == 0 || cfg.api.timeout_secs == 0 || cfg.api.max_connections == 0 {
            bail!("api: max_request_bytes, timeout_secs and max_connections must be at least 1");
        }
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<HostConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading host configuration {}", path.display()))?;
        HostConfig::parse(&text).with_context(|| format!("host configuration {}", path.display()))
    }

    /// Where the agent serves its metrics: `None` when `metrics` is `""` or
    /// `"off"`, else an IP address and port (`127.0.0.1:9464`,
    /// `[::1]:9464`).
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>> {
        let m = self.metrics.trim();
        if m.is_empty() || m.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        m.parse().map(Some).with_context(|| {
            format!(
                "metrics {:?}: expected IP:PORT (e.g. \"127.0.0.1:9464\", \"[::1]:9464\"), or \"off\"",
                self.metrics
            )
        })
    }

    /// The ports source NAT allocates from on this host: its cluster block,
    /// or the whole `snat.port_range` on a host of its own.
    pub fn snat_ports(&self) -> Result<(u16, u16)> {
        let range = self.snat.ports()?;
        match &self.cluster {
            Some(c) => Ok(c.blocks(range)?.own()),
            None => Ok(range),
        }
    }

    /// The interface facing the VPC tunnel endpoints.
    pub fn fabric(&self) -> &str {
        self.fabric.as_deref().unwrap_or(&self.uplink)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_the_optional_keys() {
        let c = HostConfig::parse("uplink = \"eth0\"\nvtep = \"10.200.0.1\"\n").unwrap();
        assert_eq!(c.fabric(), "eth0");
        assert_eq!(c.pin_path, PathBuf::from("/sys/fs/bpf/carwash"));
        assert_eq!(c.snat.ports().unwrap(), (20000, 59999));
        assert_eq!(c.conntrack.max_entries, 262_145);
        assert_eq!(c.metrics_addr().unwrap(), Some("127.0.0.1:9464".parse().unwrap()));
    }

    #[test]
    fn metrics_can_be_turned_off_or_moved() {
        let base = "uplink = \"eth0\"\nvtep = \"10.200.0.1\"\n";
        for off in ["", "off", "OFF"] {
            let c = HostConfig::parse(&format!("{base}metrics = \"{off}\"\n")).unwrap();
            assert_eq!(c.metrics_addr().unwrap(), None, "{off:?}");
        }
        let c = HostConfig::parse(&format!("{base}metrics = \"[::1]:9100\"\n")).unwrap();
        assert_eq!(c.metrics_addr().unwrap(), Some("[::1]:9100".parse().unwrap()));
        let e = HostConfig::parse(&format!("{base}metrics = \"localhost\"\n")).unwrap_err();
        assert!(
            format!("{e:#}").contains("metrics \"localhost\": expected IP:PORT"),
            "{e:#}"
        );
    }

    #[test]
    fn probe_resets_are_the_fabric_s_unless_asked_otherwise() {
        let base = "uplink = \"eth0\"\nvtep = \"10.200.0.1\"\n";
        assert_eq!(HostConfig::parse(base).unwrap().probes.resets, ProbeResets::Fabric);
        let c = HostConfig::parse(&format!("{base}[probes]\nresets = \"agent\"\n")).unwrap();
        assert_eq!(c.probes.resets, ProbeResets::Agent);
        let e = HostConfig::parse(&format!("{base}[probes]\nresets = \"kernel\"\n")).unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("kernel") && e.contains("fabric") && e.contains("agent"),
            "{e}"
        );
    }

    #[test]
    fn missing_and_unknown_keys_are_errors() {
        let e = HostConfig::parse("vtep = \"10.200.0.1\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("uplink"), "{e:#}");
        let e = HostConfig::parse("uplink = \"eth0\"\nvtep = \"10.200.0.1\"\nbogus = 1\n").unwrap_err();
        assert!(format!("{e:#}").contains("bogus"), "{e:#}");
        let e =
            HostConfig::parse("uplink = \"eth0\"\nvtep = \"10.200.0.1\"\n[snat]\nport_range = \"9-3\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("port_range"), "{e:#}");
    }

    #[test]
    fn the_programs_log_is_off_unless_asked() {
        let base = "uplink = \"eth0\"\nvtep = \"10.200.0.1\"\n";
        assert_eq!(HostConfig::parse(base).unwrap().ebpf_log, crate::loader::EbpfLog::Off);
        let c = HostConfig::parse(&format!("{base}ebpf_log = \"debug\"\n")).unwrap();
        assert_eq!(c.ebpf_log, crate::loader::EbpfLog::Debug);
        assert!(HostConfig::parse(&format!("{base}ebpf_log = \"loud\"\n")).is_err());
    }

    #[test]
    fn etcd_is_optional_and_checked() {
        let base = "uplink = \"eth0\"\nvtep = \"10.0.0.1\"\n";
        assert_eq!(HostConfig::parse(base).unwrap().etcd, None);
        let c = HostConfig::parse(&format!(
            "{base}[etcd]\nendpoints = [\"http://10.0.0.9:2379\"]\nprefix = \"/fleet\"\nlease_ttl_secs = 5\n"
        ))
        .unwrap();
        let e = c.etcd.unwrap();
        assert_eq!(e.prefix, "/fleet");
        assert_eq!(e.host_key(), format!("/fleet/hosts/{}", e.host_name()));
        assert!(HostConfig::parse(&format!("{base}[etcd]\nendpoints = []\n")).is_err());
        assert!(HostConfig::parse(&format!("{base}[etcd]\nendpoints = [\"x\"]\nprefix = \"nope\"\n")).is_err());
    }
}
