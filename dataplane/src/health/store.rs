//! The records of `HEALTH`, the pinned map of machine health: a machine's
//! slot, what its record says of it, the record it gets. The map's reads
//! and writes are `crate::maps::health`'s; it lives with the other pins, so
//! it survives agent restarts, and the CLI reads it while the agent is down.

use arrayvec::ArrayVec;
use carwash_policy::Tenant;
use dataplane_common::types::{MACHINE_DOWN, MACHINE_UP, MachineRecord, TenantHealth};

use super::decide::Availability;
use super::tracker::{Machine, Role, State};

/// The slot of `machine` in [`TenantHealth::machines`].
pub fn slot(machine: Machine) -> usize {
    match machine.role {
        Role::Connector => machine.index as usize,
        Role::Core => 2 + machine.index as usize,
    }
}

/// A tenant's probed machines (2 connectors and 2 cores at most), with
/// their VTEP and MAC; on the stack, for it is built for every probe result.
pub type Machines = ArrayVec<(Machine, [u8; 4], [u8; 6]), 4>;

/// The tenant's machines in slot order, with their identity in the policy.
pub fn machines(t: &Tenant) -> Machines {
    let conn = t.connectors.iter().take(2).enumerate().map(|(i, b)| {
        let m = Machine {
            role: Role::Connector,
            index: i as u8,
        };
        (m, b.vtep.octets(), b.mac.0)
    });
    let cores = t.cores.iter().take(2).enumerate().map(|(i, b)| {
        let m = Machine {
            role: Role::Core,
            index: i as u8,
        };
        (m, b.vtep.octets(), b.mac.0)
    });
    conn.chain(cores).collect()
}

/// What `rec` says of the machine at (`vtep`, `mac`): its availability, or
/// up since `now_ms` when the record is of another machine or of none (a
/// policy apply that keeps a machine keeps its health and drain; one that
/// replaces it starts the new machine afresh).
pub fn availability(rec: &MachineRecord, vtep: [u8; 4], mac: [u8; 6], now_ms: u64) -> Availability {
    if rec.vtep != vtep || rec.mac != mac {
        return Availability::up(now_ms);
    }
    Availability {
        state: if rec.state == MACHINE_DOWN {
            State::Down
        } else {
            State::Up
        },
        drained: rec.drained != 0,
        since_ms: rec.since_ms,
    }
}

/// A record of `a` for the machine at (`vtep`, `mac`).
pub fn record(a: Availability, vtep: [u8; 4], mac: [u8; 6], transitions: u32, last_latency_us: u32) -> MachineRecord {
    MachineRecord {
        vtep,
        mac,
        state: if a.state == State::Up { MACHINE_UP } else { MACHINE_DOWN },
        drained: a.drained as u8,
        since_ms: a.since_ms,
        transitions,
        last_latency_us,
        ..Default::default()
    }
}

/// One machine's health as readers report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineView {
    pub machine: Machine,
    pub vtep: [u8; 4],
    pub mac: [u8; 6],
    /// `None` before any probe or request wrote a record of this machine.
    pub record: Option<MachineRecord>,
}

/// The machines of a tenant record with their `HEALTH` records (only those
/// of the same machine), in slot order.
pub fn views(info: &dataplane_common::types::TenantInfo, h: Option<&TenantHealth>) -> Vec<MachineView> {
    let mut out = Vec::new();
    let groups = [
        (Role::Connector, &info.connectors[..(info.n_connectors as usize).min(2)]),
        (Role::Core, &info.cores[..(info.n_cores as usize).min(2)]),
    ];
    for (role, list) in groups {
        for (i, b) in list.iter().enumerate() {
            let machine = Machine { role, index: i as u8 };
            let record = h
                .map(|h| h.machines[slot(machine)])
                .filter(|r| r.state != dataplane_common::types::MACHINE_UNKNOWN && r.vtep == b.vtep && r.mac == b.mac);
            out.push(MachineView {
                machine,
                vtep: b.vtep,
                mac: b.mac,
                record,
            });
        }
    }
    out
}

/// The `HEALTH` map's reads and writes live with the other map families.
pub use crate::maps::health::read_pinned;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_kept_for_the_same_machine_only() {
        let a = Availability {
            state: State::Down,
            drained: true,
            since_ms: 42,
        };
        let rec = record(a, [10, 0, 0, 1], [2, 0, 0, 0, 0, 1], 3, 0);
        assert_eq!(availability(&rec, [10, 0, 0, 1], [2, 0, 0, 0, 0, 1], 99), a);
        assert_eq!(
            availability(&rec, [10, 0, 0, 2], [2, 0, 0, 0, 0, 1], 99),
            Availability::up(99),
            "another machine in the slot starts afresh"
        );
        assert_eq!(
            availability(&MachineRecord::default(), [10, 0, 0, 1], [2, 0, 0, 0, 0, 1], 7),
            Availability::up(7)
        );
        let m = |s: &str| s.parse::<Machine>().unwrap();
        assert_eq!(
            [
                slot(m("connector/0")),
                slot(m("connector/1")),
                slot(m("core/0")),
                slot(m("core/1"))
            ],
            [0, 1, 2, 3]
        );
    }
}
