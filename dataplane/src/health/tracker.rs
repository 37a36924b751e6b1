//! One machine's probe results turned into a state with hysteresis.

use std::fmt;
use std::str::FromStr;

/// A machine's role in its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Connector,
    Core,
}

/// A machine named as operators name it: `connector/0`, `core/1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Machine {
    pub role: Role,
    pub index: u8,
}

impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let role = match self.role {
            Role::Connector => "connector",
            Role::Core => "core",
        };
        write!(f, "{role}/{}", self.index)
    }
}

impl FromStr for Machine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("machine {s:?}: expected connector/N or core/N, like connector/0 or core/1");
        let (role, index) = s.split_once('/').ok_or_else(bad)?;
        let role = match role {
            "connector" => Role::Connector,
            "core" => Role::Core,
            _ => return Err(bad()),
        };
        let index = index.parse().map_err(|_| bad())?;
        Ok(Machine { role, index })
    }
}

/// What the checker believes of a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Up,
    Down,
}

/// One probe's outcome: latency on success, why on failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Pass { latency_us: u32 },
    Fail { why: String },
}

/// A declared change of a machine's state, decided by [`Tracker::record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub machine: Machine,
    pub from: State,
    pub to: State,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub probe: Probe,
}

/// Consecutive results of one machine. A machine starts up: a checker that
/// has not run yet (or has just restarted) must not take traffic away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    pub machine: Machine,
    pub state: State,
    /// Consecutive results that disagree with `state`.
    pub streak: u32,
    pub since_ms: u64,
    pub last: Option<Probe>,
    pub transitions: u64,
}

impl Tracker {
    pub fn new(machine: Machine, state: State, since_ms: u64) -> Tracker {
        Tracker {
            machine,
            state,
            streak: 0,
            since_ms,
            last: None,
            transitions: 0,
        }
    }

    /// Counts one result; `rise` passes in a row declare a down machine up,
    /// `fall` failures in a row declare an up machine down. A result that
    /// agrees with the state resets the count, so alternating results never
    /// change anything.
    pub fn record(&mut self, probe: Probe, rise: u32, fall: u32, now_ms: u64) -> Option<Transition> {
        let pass = matches!(probe, Probe::Pass { .. });
        self.last = Some(probe.clone());
        let agrees = pass == (self.state == State::Up);
        if agrees {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let need = if pass { rise } else { fall };
        if self.streak < need.max(1) {
            return None;
        }
        let from = self.state;
        self.state = if pass { State::Up } else { State::Down };
        self.streak = 0;
        self.since_ms = now_ms;
        self.transitions += 1;
        Some(Transition {
            machine: self.machine,
            from,
            to: self.state,
            at_ms: now_ms,
            probe,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass() -> Probe {
        Probe::Pass { latency_us: 100 }
    }
    fn fail() -> Probe {
        Probe::Fail {
            why: "connection refused".into(),
        }
    }
    const C0: Machine = Machine {
        role: Role::Core,
        index: 0,
    };

    #[test]
    fn names_round_trip_and_bad_names_say_the_form() {
        for s in ["connector/0", "connector/1", "core/0", "core/1"] {
            assert_eq!(s.parse::<Machine>().unwrap().to_string(), s);
        }
        for s in ["core", "core/x", "server/0", "core/-1", ""] {
            assert!(
                s.parse::<Machine>().unwrap_err().contains("connector/N or core/N"),
                "{s}"
            );
        }
    }

    #[test]
    fn fall_failures_declare_down_and_rise_passes_declare_up() {
        let mut t = Tracker::new(C0, State::Up, 0);
        assert_eq!(t.record(fail(), 2, 3, 1), None);
        assert_eq!(t.record(fail(), 2, 3, 2), None);
        let down = t.record(fail(), 2, 3, 3).expect("third failure declares down");
        assert_eq!((down.from, down.to, down.at_ms), (State::Up, State::Down, 3));
        assert_eq!(t.since_ms, 3);
        assert_eq!(t.record(pass(), 2, 3, 4), None);
        let up = t.record(pass(), 2, 3, 5).expect("second pass declares up");
        assert_eq!((up.from, up.to), (State::Down, State::Up));
        assert_eq!(t.transitions, 2);
    }

    #[test]
    fn alternating_results_change_nothing() {
        let mut t = Tracker::new(C0, State::Up, 0);
        for i in 0..99 {
            let p = if i % 3 == 2 { pass() } else { fail() };
            assert_eq!(t.record(p, 2, 3, i), None, "probe {i}");
        }
        assert_eq!(t.state, State::Up);
        assert!(matches!(t.last, Some(Probe::Pass { .. })));
    }
}
