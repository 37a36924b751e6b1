//! The agent's API on `api_socket`: a Unix stream socket (owner root, mode
//! 0600, or 0660 with `[api] group`; who may connect and what a connection
//! may cost: `crate::agent::server`) speaking line-delimited JSON. Each request is one JSON object on
//! one line; the agent answers each with one JSON object on one line, in
//! order, and a client may send several requests on one connection.
//!
//! Requests (`op` selects the operation):
//!
//! - `{"op":"status"}` — what the agent runs and what is in force
//!   ([`AgentStatus`]).
//! - `{"op":"apply","documents":[{"name":"acme.toml","content":"..."}]}` —
//!   a whole policy set: one document per tenant, TOML or JSON as `name`
//!   ends in `.toml` or `.json`; `name` is what errors name (a path is
//!   fine), and its last component the file the agent stores the document
//!   under in `policy_dir`.
//! - `{"op":"apply","tenants":[{...}, ...]}` — the same set as the control
//!   plane pushes it: tenant documents as JSON objects (the product contract,'s policy
//!   format), each named `<name>.json`; error positions are lines of the
//!   object pretty-printed. `documents` and `tenants` may be combined.
//!   Add `"dry_run":true` to only validate.
//! - `{"op":"reload"}` — re-read `policy_dir` (as `SIGHUP` does).
//! - `{"op":"drain","tenant":"acme","machine":"connector/1"}`, `"undrain"`,
//!   `{"op":"activate","tenant":"acme","machine":"core/1","force":false}` —
//!   maintenance by hand (`crate::agent::health`); kept in the pinned
//!   `HEALTH` map across restarts.
//!
//! An apply is all or nothing: the set is validated as a whole (every
//! error, each with file, line, column and field) and refused if anything
//! is wrong, leaving the set in force in force. An accepted set replaces the
//! set in force and the contents of `policy_dir` (so that a restart or a
//! reload keeps it), and only the tenants that changed are rewritten.
//!
//! Responses: `{"ok":true, ...}` with `applied` ([`ApplyReport`]) or
//! `status`, or `{"ok":false,"error":"...","errors":[{"file":...,"line":...,
//! "column":...,"field":...,"message":...}]}`.
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use carwash_policy::PolicyError;
use serde::{Deserialize, Serialize};

use crate::loader::PinnedAttachment;

/// One policy document of an apply request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    pub name: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    Apply {
        #[serde(default)]
        documents: Vec<Document>,
        #[serde(default)]
        tenants: Vec<serde_json::Value>,
        #[serde(default)]
        dry_run: bool,
    },
    Reload,
    /// `machine` of `tenant` (`connector/0`, `core/1`, ...) takes no new
    /// flows; a drained active core hands over to the standby.
    Drain {
        tenant: String,
        machine: String,
    },
    Undrain {
        tenant: String,
        machine: String,
    },
    /// Makes core `machine` of `tenant` the active one; `force` even when it
    /// is down or drained.
    Activate {
        tenant: String,
        machine: String,
        #[serde(default)]
        force: bool,
    },
}

/// A policy error as the API reports it (the fields of
/// [`carwash_policy::PolicyError`]; `line` and `column` are 0 when the
/// error is about a whole document).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub field: String,
    pub message: String,
}

impl From<&PolicyError> for ApiError {
    fn from(e: &PolicyError) -> Self {
        ApiError {
            file: e.file.display().to_string(),
            line: e.line,
            column: e.column,
            field: e.field.clone(),
            message: e.message.clone(),
        }
    }
}

/// `file:line:column: field: message`, as `carwash policy check` prints.
impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = PolicyError {
            file: PathBuf::from(&self.file),
            line: self.line,
            column: self.column,
            field: self.field.clone(),
            message: self.message.clone(),
        };
        write!(f, "{e}")
    }
}

/// The last apply that was refused or failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    /// Unix time.
    pub at: u64,
    /// `startup`, `policy_dir`, `SIGHUP`, `api`.
    pub source: String,
    pub error: String,
    #[serde(default)]
    pub errors: Vec<ApiError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantId {
    pub name: String,
    pub id: u32,
}

/// What a running agent reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    pub pid: u32,
    pub version: String,
    /// Unix time the agent started.
    pub started_at: u64,
    /// Whether it adopted pinned maps (and links) of an earlier agent.
    pub adopted: bool,
    pub pin_path: PathBuf,
    pub policy_dir: PathBuf,
    pub api_socket: PathBuf,
    pub generation: u64,
    pub digest: String,
    pub applied_at: u64,
    pub tenants: Vec<TenantId>,
    pub interfaces: Vec<InterfaceStatus>,
    pub attachments: Vec<AttachmentStatus>,
    pub last_apply: Option<ApplyReport>,
    pub last_error: Option<LastError>,
    /// Policy sets read or received so far (applied, unchanged or refused).
    pub attempts: u64,
    /// The policy generation whose VIPs and egress IPs the uplink answers
    /// for (0: none yet); behind `generation` while the kernel is still
    /// adding addresses.
    #[serde(default)]
    pub uplink_addresses_generation: u64,
    /// The tracking table as the agent's last pass over it found it
    /// (every 10 s; `None` before the first).
    #[serde(default)]
    pub conntrack: Option<ConntrackStatus>,
    /// The event stream: monitors, the flow log.
    #[serde(default)]
    pub events: Option<EventStreamStatus>,
    /// The link to etcd, with `[etcd]` in the host configuration.
    #[serde(default)]
    pub etcd: Option<EtcdStatus>,
    /// This host's place in a fleet (`[cluster]`), if it is in one.
    #[serde(default)]
    pub cluster: Option<crate::cluster::ClusterStatus>,
    /// The health checker's own counters, with `[probes]` on.
    #[serde(default)]
    pub probes: Option<ProbeStatus>,
}

/// What the health checker did since the agent started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeStatus {
    /// Half-open probes (TCP checks) sent.
    pub half_open_sent: u64,
    /// Answers to no half-open probe in flight (late, or not its sequence).
    pub stale_answers: u64,
    /// Resets the agent sent to machines' SYN-ACKs.
    pub resets_sent: u64,
    /// Resets the fabric's programs sent in place of machines' SYN-ACKs
    /// (`[probes] resets = "fabric"`).
    #[serde(default)]
    pub resets_in_path: u64,
    /// The fabric's resets stopped reaching the program that sends them
    /// back; the agent sends them since.
    #[serde(default)]
    pub fabric_resets_failed: bool,
    /// Probe packets the kernel would not send.
    pub send_errors: u64,
    /// Probes through a socket of their own (TLS checks).
    pub socket_probes: u64,
    /// Results the agent's loop had no room for (its queue was full): as
    /// if the probe had not been made.
    pub results_skipped: u64,
    /// Half-open probes waiting for an answer.
    pub in_flight: u64,
}

/// The event stream as the agent's hub counts it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventStreamStatus {
    /// Events through the stream, by type.
    pub by_type: std::collections::BTreeMap<String, u64>,
    pub monitors: u64,
    /// Events slow monitors did not get.
    pub monitor_lost: u64,
    pub event_log: PathBuf,
    pub log_written: u64,
    /// Events the flow log could not take.
    pub log_failed: u64,
    /// Why the flow log cannot be written, while it cannot.
    pub log_error: Option<String>,
}

/// The agent's link to etcd.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdStatus {
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// The name this host publishes its state under.
    pub host: String,
    pub connected: bool,
    /// Unix time `connected` last changed.
    pub since: u64,
    /// The etcd revision of the set in force (0: none from etcd yet).
    pub revision: i64,
    /// The revision of the last set received (refused ones included).
    pub received_revision: i64,
    /// Why etcd is out of reach, while it is.
    pub error: Option<String>,
    /// Times the agent lost etcd and reached it again.
    pub reconnects: u64,
    /// Full re-reads of the tenants after a compacted revision.
    pub rereads: u64,
}

/// How full the tracking table and the source-NAT port range are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackStatus {
    /// Unix time of the pass.
    pub at: u64,
    /// The table's size in entries (two per flow).
    pub capacity: u32,
    pub entries: usize,
    /// Ports of `[snat] port_range`, each usable once per egress IP and protocol.
    pub snat_port_range: u32,
    /// Egress IP → translated (protocol, port) pairs in use.
    pub snat_ports: std::collections::BTreeMap<std::net::IpAddr, usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceStatus {
    /// `uplink` or `fabric`.
    pub role: String,
    pub name: String,
    pub ifindex: u32,
    pub mac: String,
    pub mtu: u32,
    /// What keeps the interface from taking the frames the programs
    /// redirect into it, and what to change (empty: nothing found).
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentStatus {
    pub program: String,
    pub link_pin: PathBuf,
    pub link_id: u32,
    pub prog_id: u32,
    pub ifindex: u32,
    /// `new`, `replaced` (the pinned link of an earlier agent now runs this
    /// agent's program) or `moved`.
    pub attach: String,
}

impl From<&PinnedAttachment> for AttachmentStatus {
    fn from(a: &PinnedAttachment) -> Self {
        AttachmentStatus {
            program: a.program.clone(),
            link_pin: a.link_pin.clone(),
            link_id: a.link_id,
            prog_id: a.prog_id,
            ifindex: a.ifindex,
            attach: match a.attach {
                crate::loader::Attach::New => "new",
                crate::loader::Attach::Replaced { .. } => "replaced",
                crate::loader::Attach::Moved { .. } => "moved",
            }
            .to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ApiError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied: Option<ApplyReport>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Box<AgentStatus>>,
}

impl Response {
    pub fn error(message: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(message.into()),
            ..Default::default()
        }
    }
}

/// Sends one request to the agent at `socket` and waits for its answer.
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Response> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to the agent at {} (is it running?)", socket.display()))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    // A connection the agent refuses (credentials, too many connections)
    // is answered and closed at once, maybe before the request is sent: the
    // answer says why, the failed write does not.
    let written = stream.write_all(line.as_bytes());
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    let read = reader.read_line(&mut answer);
    if answer.is_empty() {
        written.with_context(|| format!("sending the request to {}", socket.display()))?;
        read.with_context(|| format!("reading the agent's answer from {}", socket.display()))?;
        bail!(
            "the agent at {} closed the connection without answering",
            socket.display()
        );
    }
    serde_json::from_str(&answer).with_context(|| format!("the agent's answer is not valid: {answer}"))
}

/// Reads the policy files of a file or directory (the files
/// `carwash_policy::load_path` would read) into apply documents named by
/// their paths. Errors reading them are returned as policy errors.
pub fn read_documents(path: &Path) -> Result<Vec<Document>, Vec<ApiError>> {
    let file_err = |p: &Path, m: String| ApiError {
        file: p.display().to_string(),
        line: 0,
        column: 0,
        field: String::new(),
        message: m,
    };
    let meta = std::fs::metadata(path).map_err(|e| vec![file_err(path, format!("cannot read: {e}"))])?;
    let files = if meta.is_dir() {
        let mut files = Vec::new();
        let rd = std::fs::read_dir(path).map_err(|e| vec![file_err(path, format!("cannot list directory: {e}"))])?;
        for e in rd.flatten() {
            let p = e.path();
            if is_policy_file(&p) && !p.is_dir() {
                files.push(p);
            }
        }
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        match std::fs::read_to_string(&f) {
            Ok(content) => docs.push(Document {
                name: f.display().to_string(),
                content,
            }),
            Err(e) => errors.push(file_err(&f, format!("cannot read: {e}"))),
        }
    }
    if errors.is_empty() { Ok(docs) } else { Err(errors) }
}

/// The result of an apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    pub generation: u64,
    pub digest: String,
    pub tenants: usize,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: usize,
    /// Time spent writing maps, in microseconds.
    pub micros: u64,
}

impl ApplyReport {
    pub fn is_noop(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// Whether `loader`-style directory scans take `p` as a policy file: a name
/// ending in `.toml` or `.json` that does not start with `.`.
pub fn is_policy_file(p: &Path) -> bool {
    let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let ext = p.extension().and_then(|e| e.to_str());
    !name.starts_with('.') && ext.is_some_and(|e| e.eq_ignore_ascii_case("toml") || e.eq_ignore_ascii_case("json"))
}
