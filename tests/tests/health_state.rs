//! Machine health, drains and the last core switch live in the pinned
//! `HEALTH` map: a second load of the object over the same pins (what a
//! restarted agent does) finds them as they were written.
use carwash_tests::fabric::repo_policies;
use carwash_tests::require_root;
use dataplane::Dataplane;
use dataplane::health::store::{availability, machines, record, slot};
use dataplane::health::{Availability, State};
use dataplane_common::types::TenantHealth;
use netlab::netns::PinDir;

#[test]
fn health_survives_a_reload_over_the_same_pins() {
    require_root();
    let acme = repo_policies().tenants.into_iter().find(|t| t.name == "acme").unwrap();
    let pins = PinDir::new().unwrap();
    let ms = machines(&acme);
    assert_eq!(ms.len(), 4, "acme is a double lane");

    let mut h = TenantHealth {
        last_switch_ms: 1_700_000_000_000,
        ..Default::default()
    };
    let states = [
        Availability::up(10),
        Availability {
            state: State::Up,
            drained: true,
            since_ms: 20,
        },
        Availability {
            state: State::Down,
            drained: false,
            since_ms: 30,
        },
        Availability::up(40),
    ];
    for ((m, vtep, mac), a) in ms.iter().zip(states) {
        h.machines[slot(*m)] = record(a, *vtep, *mac, 1, 250);
    }
    {
        let mut dp = Dataplane::load(Some(pins.path())).unwrap();
        assert_eq!(dp.tenant_health(7).unwrap(), None);
        dp.set_tenant_health(7, &h).unwrap();
    }
    let mut again = Dataplane::load(Some(pins.path())).unwrap();
    let read = again.tenant_health(7).unwrap().expect("the record survived the reload");
    assert_eq!(read, h);
    for ((m, vtep, mac), a) in ms.iter().zip(states) {
        assert_eq!(availability(&read.machines[slot(*m)], *vtep, *mac, 999), a, "{m}");
    }
    again.remove_tenant_health(7).unwrap();
    again.remove_tenant_health(7).unwrap();
    assert_eq!(again.tenant_health(7).unwrap(), None);
}
