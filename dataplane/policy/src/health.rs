//! The optional `[health]` table: how the agent probes a tenant's machines
//! and when it declares them up or down.

use serde::{Deserialize, Serialize};

/// A duration written as `"1s"` or `"250ms"`, kept in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Millis(pub u64);

impl std::str::FromStr for Millis {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
            (n, 1)
        } else if let Some(n) = s.strip_suffix('s') {
            (n, 1000)
        } else {
            return Err(format!(
                "duration {s:?} needs a unit: \"s\" or \"ms\", like \"1s\" or \"500ms\""
            ));
        };
        let n: u64 = num
            .parse()
            .map_err(|_| format!("duration {s:?}: {num:?} is not a whole number"))?;
        n.checked_mul(scale)
            .map(Millis)
            .ok_or_else(|| format!("duration {s:?} is too long"))
    }
}

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_multiple_of(1000) {
            write!(f, "{}s", self.0 / 1000)
        } else {
            write!(f, "{}ms", self.0)
        }
    }
}

impl Serialize for Millis {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Millis {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Millis;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration like \"1s\" or \"500ms\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Millis, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// What a connector probe checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpsCheck {
    /// A TCP connect.
    Tcp,
    /// A TCP connect and a TLS handshake.
    Tls,
}

/// What a core probe checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JmsCheck {
    /// A TCP connect to the first JMS port.
    Tcp,
}

fn d_interval() -> Millis {
    Millis(1000)
}
fn d_timeout() -> Millis {
    Millis(1000)
}
fn d_rise() -> u32 {
    2
}
fn d_fall() -> u32 {
    3
}
fn d_https() -> HttpsCheck {
    HttpsCheck::Tls
}
fn d_jms() -> JmsCheck {
    JmsCheck::Tcp
}

/// `[health]`; every key has a default, and a table that spells out only
/// defaults is the same policy as no table (same digest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    #[serde(default = "d_interval")]
    pub interval: Millis,
    #[serde(default = "d_timeout")]
    pub timeout: Millis,
    #[serde(default = "d_rise")]
    pub rise: u32,
    #[serde(default = "d_fall")]
    pub fall: u32,
    #[serde(default = "d_https")]
    pub https_check: HttpsCheck,
    #[serde(default = "d_jms")]
    pub jms_check: JmsCheck,
    #[serde(default)]
    pub failback: bool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            interval: d_interval(),
            timeout: d_timeout(),
            rise: d_rise(),
            fall: d_fall(),
            https_check: d_https(),
            jms_check: d_jms(),
            failback: false,
        }
    }
}

impl Health {
    /// For `skip_serializing_if`: defaults leave the canonical JSON as it
    /// was before `[health]` existed, so digests of older sets hold.
    pub fn is_default(&self) -> bool {
        *self == Health::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_canonically() {
        assert_eq!("1s".parse::<Millis>(), Ok(Millis(1000)));
        assert_eq!("250ms".parse::<Millis>(), Ok(Millis(250)));
        assert_eq!("1000ms".parse::<Millis>().unwrap().to_string(), "1s");
        assert_eq!(Millis(1500).to_string(), "1500ms");
        assert!("1".parse::<Millis>().unwrap_err().contains("unit"));
        assert!("1.5s".parse::<Millis>().unwrap_err().contains("whole number"));
        assert!("99999999999999999999s".parse::<Millis>().is_err());
    }
}
