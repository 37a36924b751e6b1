//! The event stream's records: one JSON object per event, the same in the
//! flow log, on the API socket and in `carwash monitor -o json`. Data-path
//! events ([`dataplane_common::events::DataEvent`]) and the agent's own
//! (policy, health, summaries) share one flat schema; fields that do not
//! apply to a type are left out. Also the filters and the one-line form
//! that `carwash monitor` prints.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dataplane_common::DropReason;
use dataplane_common::events::{self as ev, DataEvent};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::maps::policy::read::proto_name;

/// One event. `fields` holds everything but the time and the type, in the
/// order they were set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// UTC, RFC 3339 with milliseconds.
    pub ts: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

/// The types `carwash monitor --type` selects by, and the event types each
/// takes in.
pub const TYPE_GROUPS: &[(&str, &[&str])] = &[
    (
        "drop",
        &["drop", "ports_exhausted", "conntrack_full", "fail_closed", "summary"],
    ),
    ("flow", &["flow", "translation"]),
    ("health", &["health", "core_switch", "drain"]),
    ("policy", &["policy"]),
];

impl Event {
    /// An event of `kind` now, with `fields`.
    pub fn new(kind: &str, fields: Map<String, Value>) -> Event {
        Event::at(SystemTime::now(), kind, fields)
    }

    pub fn at(t: SystemTime, kind: &str, fields: Map<String, Value>) -> Event {
        Event {
            ts: rfc3339(t),
            kind: kind.to_string(),
            fields,
        }
    }

    /// The time, from `ts` (`None` if it does not parse).
    pub fn time(&self) -> Option<SystemTime> {
        parse_rfc3339(&self.ts)
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(|v| v.as_str())
    }

    /// One line for people: time, type, then `key=value` for each field.
    pub fn line(&self) -> String {
        let mut s = format!("{} {:<15}", self.ts, self.kind);
        for (k, v) in &self.fields {
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Array(a) => a
                    .iter()
                    .map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string()))
                    .collect::<Vec<_>>()
                    .join(","),
                other => other.to_string(),
            };
            s.push(' ');
            s.push_str(k);
            s.push('=');
            s.push_str(&v);
        }
        s
    }
}

/// What the data path's record says, with names resolved by the caller:
/// `tenant` the tenant's name (if known), `interface` the ifindex's name,
/// `wall` the wall-clock time it was received.
pub fn from_data(e: &DataEvent, tenant: Option<&str>, interface: Option<&str>, wall: SystemTime) -> Event {
    let mut f = Map::new();
    let kind = ev::kind_name(e.kind);
    if e.kind != ev::KIND_TRANSLATION && e.kind != ev::KIND_FLOW {
        let reason = DropReason::from_index(e.reason as u32)
            .map(|r| r.name())
            .unwrap_or("unknown");
        f.insert("reason".into(), reason.into());
    }
    f.insert("tenant".into(), tenant.unwrap_or("").into());
    f.insert("tenant_id".into(), e.tenant.into());
    if let Some(c) = class_name(e.class) {
        f.insert("class".into(), c.into());
    }
    f.insert("proto".into(), proto_name(e.proto).into());
    let (src_key, sport_key, dst_key, dport_key) = if e.kind == ev::KIND_TRANSLATION {
        ("machine", "machine_port", "egress_ip", "egress_port")
    } else {
        ("src", "sport", "dst", "dport")
    };
    f.insert(src_key.into(), addr(&e.src, e.v6 != 0).to_string().into());
    f.insert(sport_key.into(), e.sport.into());
    f.insert(dst_key.into(), addr(&e.dst, e.v6 != 0).to_string().into());
    f.insert(dport_key.into(), e.dport.into());
    f.insert("ifindex".into(), e.ifindex.into());
    if let Some(i) = interface {
        f.insert("interface".into(), i.into());
    }
    f.insert("generation".into(), e.generation.into());
    f.insert("cpu".into(), e.cpu.into());
    Event::at(wall, kind, f)
}

/// A summary of what a tenant's budget held back on one CPU since the last
/// event or summary.
pub fn summary(tenant: Option<&str>, tenant_id: u32, cpu: u32, suppressed: u64) -> Event {
    let mut f = Map::new();
    f.insert("tenant".into(), tenant.unwrap_or("").into());
    f.insert("tenant_id".into(), tenant_id.into());
    f.insert("cpu".into(), cpu.into());
    f.insert("suppressed".into(), suppressed.into());
    Event::new("summary", f)
}

pub fn class_name(c: u8) -> Option<&'static str> {
    match c {
        dataplane_common::types::CLASS_HTTPS => Some("https"),
        dataplane_common::types::CLASS_JMS => Some("jms"),
        _ => None,
    }
}

fn addr(a: &[u8; 16], v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(*a))
    } else {
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    }
}

/// `carwash monitor`'s filters; every one given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// A group of [`TYPE_GROUPS`], or an event type.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "type")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// An address: matches any address field of the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<IpAddr>,
}

impl Filter {
    /// An unknown `--type` is refused rather than matching nothing.
    pub fn check(&self) -> Result<(), String> {
        if let Some(k) = &self.kind
            && !TYPE_GROUPS.iter().any(|(g, ts)| g == k || ts.contains(&k.as_str()))
        {
            let groups: Vec<&str> = TYPE_GROUPS.iter().map(|(g, _)| *g).collect();
            return Err(format!("unknown event type {k:?}: one of {}", groups.join(", ")));
        }
        Ok(())
    }

    pub fn matches(&self, e: &Event) -> bool {
        if let Some(t) = &self.tenant
            && e.str("tenant") != Some(t.as_str())
            && !e
                .fields
                .get("tenants")
                .and_then(|v| v.as_array())
                .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(t.as_str())))
        {
            return false;
        }
        if let Some(k) = &self.kind {
            let in_group = TYPE_GROUPS
                .iter()
                .find(|(g, _)| g == k)
                .is_some_and(|(_, ts)| ts.contains(&e.kind.as_str()));
            if !in_group && e.kind != *k {
                return false;
            }
        }
        if let Some(r) = &self.reason
            && e.str("reason") != Some(r.as_str())
        {
            return false;
        }
        if let Some(a) = &self.addr {
            let a = a.to_string();
            let hit = ["src", "dst", "machine", "egress_ip", "addr"]
                .iter()
                .any(|k| e.str(k) == Some(a.as_str()));
            if !hit {
                return false;
            }
        }
        true
    }
}

/// `t` as RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_millis()
    )
}

/// The UTC date of `t`, `YYYY-MM-DD` (the flow log's file names).
pub fn date(t: SystemTime) -> String {
    rfc3339(t)[..10].to_string()
}

/// Parses what [`rfc3339`] writes (and the same without fractions).
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || !s.ends_with('Z') {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<u64>().ok();
    let days = days_from_civil(n(0..4)? as i64, n(5..7)? as u32, n(8..10)? as u32);
    let secs = days as u64 * 86_400 + n(11..13)? * 3600 + n(14..16)? * 60 + n(17..19)?;
    let ms = match s.get(19..20) {
        Some(".") => n(20..23).unwrap_or(0),
        _ => 0,
    };
    Some(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms))
}

/// Parses a `YYYY-MM-DD` date to its midnight, UTC.
pub fn parse_date(s: &str) -> Option<SystemTime> {
    parse_rfc3339(&format!("{s}T00:00:00Z"))
}

// Howard Hinnant's days-from-civil and its inverse.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Parses `--since`: `90s`, `30m`, `2h`, `7d`.
pub fn parse_age(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?}: expected a number and s, m, h or d (e.g. 2h)");
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_go_there_and_back() {
        for secs in [0u64, 951_782_400, 1_796_356_800, 4_102_444_799] {
            let t = UNIX_EPOCH + Duration::from_millis(secs * 1000 + 123);
            assert_eq!(parse_rfc3339(&rfc3339(t)), Some(t), "{}", rfc3339(t));
        }
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn ages() {
        assert_eq!(parse_age("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_age("30m"), Ok(Duration::from_secs(1800)));
        assert!(parse_age("2 weeks").is_err());
        assert!(parse_age("h").is_err());
    }

    #[test]
    fn filters_match_groups_fields_and_addresses() {
        let e = from_data(
            &DataEvent {
                kind: ev::KIND_DROP,
                reason: DropReason::NotAllowed.index() as u8,
                tenant: 1,
                proto: 6,
                src: [198, 51, 100, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ..Default::default()
            },
            Some("acme"),
            None,
            UNIX_EPOCH,
        );
        let f = |tenant: Option<&str>, kind: Option<&str>, reason: Option<&str>, addr: Option<&str>| Filter {
            tenant: tenant.map(Into::into),
            kind: kind.map(Into::into),
            reason: reason.map(Into::into),
            addr: addr.map(|a| a.parse().unwrap()),
        };
        assert!(f(Some("acme"), Some("drop"), Some("not_allowed"), Some("198.51.100.7")).matches(&e));
        assert!(!f(Some("beta"), None, None, None).matches(&e));
        assert!(!f(None, Some("policy"), None, None).matches(&e));
        assert!(!f(None, None, Some("no_service"), None).matches(&e));
        assert!(!f(None, None, None, Some("198.51.100.8")).matches(&e));
        assert!(f(None, Some("bogus"), None, None).check().is_err());
        let json = serde_json::to_string(&e).unwrap();
        assert!(
            json.starts_with(r#"{"ts":"1970-01-01T00:00:00.000Z","type":"drop","#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), e);
    }
}
