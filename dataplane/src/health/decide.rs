//! What follows from the machines' states: the connectors in the
//! consistent-hash choice, the active core, and whether an operator's
//! request may be carried out.

use std::fmt;

use super::tracker::{Machine, Role, State};

/// Automatic failback waits until the recovered first core has been up this
/// many probe intervals without a break, and as long since the last switch.
/// `rise` alone says a machine answers again; this says it stays answering,
/// so a flapping machine (up for `rise` probes, down for `fall`, again and
/// again) never takes the core back. Failover away from a dead active core is
/// never delayed: `fall` already debounces it, and waiting would black-hole
/// JMS for longer.
pub const HOLD_DOWN_INTERVALS: u64 = 10;

/// One machine as the decisions see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Availability {
    pub state: State,
    pub drained: bool,
    /// When `state` began (ms since the epoch).
    pub since_ms: u64,
}

impl Availability {
    pub fn up(since_ms: u64) -> Availability {
        Availability {
            state: State::Up,
            drained: false,
            since_ms,
        }
    }

    pub fn takes_traffic(&self) -> bool {
        self.state == State::Up && !self.drained
    }
}

/// Which connectors take new flows. None able to: all of them, as if up
/// (a broken checker or a drained pair must not black-hole the tenant), and
/// the second value says so.
pub fn connectors_in_choice(connectors: &[Availability]) -> (Vec<bool>, bool) {
    let live: Vec<bool> = connectors.iter().map(Availability::takes_traffic).collect();
    if live.iter().any(|&l| l) || live.is_empty() {
        (live, false)
    } else {
        (vec![true; connectors.len()], true)
    }
}

/// The decision on a tenant's active core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoreChoice {
    Keep,
    /// One write of the tenant record makes `to` active.
    Switch {
        to: u8,
        failback: bool,
    },
}

/// The active core after this round. `last_switch_ms` is when the tenant's
/// active core last changed, if known.
pub fn choose_core(
    active: u8,
    cores: &[Availability],
    failback: bool,
    now_ms: u64,
    last_switch_ms: Option<u64>,
    interval_ms: u64,
) -> CoreChoice {
    if cores.len() < 2 || active as usize >= cores.len() {
        return CoreChoice::Keep;
    }
    let other = 1 - active;
    let (a, o) = (cores[active as usize], cores[other as usize]);
    if !a.takes_traffic() {
        // Both unavailable: the active stays; switching would move JMS to a
        // machine no better off and lose the broker's own pairing.
        if o.takes_traffic() {
            return CoreChoice::Switch {
                to: other,
                failback: false,
            };
        }
        return CoreChoice::Keep;
    }
    let hold = HOLD_DOWN_INTERVALS * interval_ms;
    let first = cores[0];
    if failback
        && active != 0
        && first.takes_traffic()
        && now_ms.saturating_sub(first.since_ms) >= hold
        && last_switch_ms.is_none_or(|t| now_ms.saturating_sub(t) >= hold)
    {
        return CoreChoice::Switch { to: 0, failback: true };
    }
    CoreChoice::Keep
}

/// Why a request by hand is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManualError {
    UnknownTenant(String),
    UnknownMachine {
        tenant: String,
        machine: Machine,
        has: String,
    },
    NotACore(Machine),
    CoreUnavailable {
        machine: Machine,
        why: &'static str,
    },
}

impl fmt::Display for ManualError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManualError::UnknownTenant(t) => write!(f, "no tenant {t:?} in the policy in force"),
            ManualError::UnknownMachine { tenant, machine, has } => {
                write!(f, "tenant {tenant:?} has no {machine}; it has {has}")
            }
            ManualError::NotACore(m) => write!(f, "{m} is not a core; only cores are activated"),
            ManualError::CoreUnavailable { machine, why } => {
                write!(f, "{machine} is {why}; activate it anyway with --force")
            }
        }
    }
}

impl std::error::Error for ManualError {}

/// Checks that `machine` exists in a tenant with `connectors` and `cores`.
pub fn check_machine(tenant: &str, machine: Machine, connectors: usize, cores: usize) -> Result<(), ManualError> {
    let n = match machine.role {
        Role::Connector => connectors,
        Role::Core => cores,
    };
    if (machine.index as usize) < n {
        return Ok(());
    }
    let mut names: Vec<String> = (0..connectors).map(|i| format!("connector/{i}")).collect();
    names.extend((0..cores).map(|i| format!("core/{i}")));
    Err(ManualError::UnknownMachine {
        tenant: tenant.to_string(),
        machine,
        has: names.join(", "),
    })
}

/// Checks a `core activate`: a core that cannot take traffic needs `force`.
pub fn check_activate(machine: Machine, core: Availability, force: bool) -> Result<(), ManualError> {
    if machine.role != Role::Core {
        return Err(ManualError::NotACore(machine));
    }
    if force {
        return Ok(());
    }
    if core.state == State::Down {
        return Err(ManualError::CoreUnavailable { machine, why: "down" });
    }
    if core.drained {
        return Err(ManualError::CoreUnavailable {
            machine,
            why: "drained",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::tracker::{Probe, Tracker};
    use crate::maglev;

    const I: u64 = 1000;

    fn down(since_ms: u64) -> Availability {
        Availability {
            state: State::Down,
            drained: false,
            since_ms,
        }
    }
    fn drained(a: Availability) -> Availability {
        Availability { drained: true, ..a }
    }

    #[test]
    fn a_connector_out_leaves_the_choice_and_all_out_spreads_over_all() {
        assert_eq!(
            connectors_in_choice(&[Availability::up(0), down(0)]),
            (vec![true, false], false)
        );
        assert_eq!(
            connectors_in_choice(&[drained(Availability::up(0)), Availability::up(0)]),
            (vec![false, true], false)
        );
        assert_eq!(connectors_in_choice(&[down(0), down(0)]), (vec![true, true], true));
        assert_eq!(
            connectors_in_choice(&[down(0), drained(Availability::up(0))]),
            (vec![true, true], true)
        );
        assert_eq!(connectors_in_choice(&[Availability::up(0)]), (vec![true], false));
    }

    #[test]
    fn a_connector_down_moves_only_its_own_buckets_and_they_come_back() {
        let ids: Vec<maglev::Identity> = vec![
            ([10, 200, 1, 10], [2, 0, 10, 200, 1, 10]),
            ([10, 200, 1, 11], [2, 0, 10, 200, 1, 11]),
        ];
        let both = maglev::build(
            &ids,
            &connectors_in_choice(&[Availability::up(0), Availability::up(0)]).0,
        );
        let one = maglev::build(&ids, &connectors_in_choice(&[down(5), Availability::up(0)]).0);
        for (b, (x, y)) in both.iter().zip(&one).enumerate() {
            if *x == 1 {
                assert_eq!(*y, 1, "bucket {b} of the connector that stayed moved");
            }
            assert_eq!(*y, 1, "bucket {b} still on the connector that is down");
        }
        let back = maglev::build(
            &ids,
            &connectors_in_choice(&[Availability::up(9), Availability::up(0)]).0,
        );
        assert_eq!(back, both, "recovered, the connector gets exactly its buckets back");
        let none = maglev::build(&ids, &connectors_in_choice(&[down(5), down(5)]).0);
        assert_eq!(none, both, "all down spreads over all as if up");
    }

    #[test]
    fn the_standby_takes_over_when_the_active_is_out_and_never_both() {
        let up = Availability::up(0);
        assert_eq!(choose_core(0, &[up, up], false, 50 * I, None, I), CoreChoice::Keep);
        assert_eq!(
            choose_core(0, &[down(10 * I), up], false, 11 * I, None, I),
            CoreChoice::Switch { to: 1, failback: false }
        );
        assert_eq!(
            choose_core(0, &[drained(up), up], false, 11 * I, Some(10 * I), I),
            CoreChoice::Switch { to: 1, failback: false },
            "draining the active core hands over at once"
        );
        assert_eq!(
            choose_core(0, &[down(0), down(0)], true, 50 * I, None, I),
            CoreChoice::Keep
        );
        assert_eq!(
            choose_core(1, &[down(0), down(0)], true, 50 * I, None, I),
            CoreChoice::Keep
        );
        assert_eq!(
            choose_core(0, &[up], false, 50 * I, None, I),
            CoreChoice::Keep,
            "single lane"
        );
        // The recovered former active stays standby without failback.
        assert_eq!(choose_core(1, &[up, up], false, 500 * I, Some(0), I), CoreChoice::Keep);
    }

    #[test]
    fn failback_waits_for_the_hold_down() {
        let up = Availability::up;
        let hold = HOLD_DOWN_INTERVALS * I;
        // Core 0 back up at t=100 s; the switch to core 1 was at t=20 s.
        assert_eq!(
            choose_core(1, &[up(100 * I), up(0)], true, 100 * I + hold - 1, Some(20 * I), I),
            CoreChoice::Keep
        );
        assert_eq!(
            choose_core(1, &[up(100 * I), up(0)], true, 100 * I + hold, Some(20 * I), I),
            CoreChoice::Switch { to: 0, failback: true }
        );
        // Recent switch: wait even though core 0 has been up long enough.
        assert_eq!(
            choose_core(1, &[up(0), up(0)], true, 100 * I, Some(95 * I), I),
            CoreChoice::Keep
        );
    }

    /// A first core that answers for `rise` probes and fails for `fall`,
    /// over and over, moves the active core once and never back.
    #[test]
    fn a_flapping_first_core_does_not_make_the_core_flap() {
        let (rise, fall) = (2, 3);
        let c0 = Machine {
            role: Role::Core,
            index: 0,
        };
        let mut t0 = Tracker::new(c0, State::Up, 0);
        let standby = Availability::up(0);
        let mut active = 0u8;
        let mut switches = Vec::new();
        let mut last_switch = None;
        for round in 0..1000u64 {
            let now = round * I;
            let pass = (round % 7) >= 4; // four failures, then three passes
            let p = if pass {
                Probe::Pass { latency_us: 50 }
            } else {
                Probe::Fail { why: "refused".into() }
            };
            t0.record(p, rise, fall, now);
            let a0 = Availability {
                state: t0.state,
                drained: false,
                since_ms: t0.since_ms,
            };
            if let CoreChoice::Switch { to, .. } = choose_core(active, &[a0, standby], true, now, last_switch, I) {
                active = to;
                last_switch = Some(now);
                switches.push(now);
            }
        }
        assert!(t0.transitions > 200, "the first core did flap: {}", t0.transitions);
        assert_eq!(switches.len(), 1, "switches at {switches:?}");
        assert_eq!(active, 1);
    }

    #[test]
    fn requests_by_hand_are_checked() {
        let m = |s: &str| s.parse::<Machine>().unwrap();
        assert!(check_machine("acme", m("core/1"), 2, 2).is_ok());
        let e = check_machine("acme", m("core/1"), 1, 1).unwrap_err().to_string();
        assert_eq!(e, "tenant \"acme\" has no core/1; it has connector/0, core/0");
        let e = check_activate(m("connector/0"), Availability::up(0), true).unwrap_err();
        assert_eq!(e, ManualError::NotACore(m("connector/0")));
        let e = check_activate(m("core/1"), down(0), false).unwrap_err().to_string();
        assert_eq!(e, "core/1 is down; activate it anyway with --force");
        assert!(check_activate(m("core/1"), down(0), true).is_ok());
        assert!(check_activate(m("core/1"), drained(Availability::up(0)), false).is_err());
        assert!(check_activate(m("core/1"), Availability::up(0), false).is_ok());
    }
}
