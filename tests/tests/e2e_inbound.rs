//! End to end, path 1 with path 2 for the replies: real TLS and TCP
//! clients in the lab's internet namespace reach the tenants' machines
//! through carwash, over IPv4 and IPv6.
use std::collections::BTreeSet;

use carwash_tests::labrun::LabRun;
use carwash_tests::require_root;
use dataplane_common::DropReason;
use dataplane_common::types::SIDE_UPLINK;
use netlab::lab::{ALLOWED_CLIENT_V4, ALLOWED_CLIENT_V6, DENIED_CLIENT_V4, one_mib, parse_peer};

#[test]
fn tls_and_jms_through_carwash() {
    require_root();
    let run = LabRun::up().unwrap();
    let acme = run.lab.tenant("acme").unwrap();
    let (vip4, vip6) = (acme.vip_v4().unwrap(), acme.vip_v6().unwrap());
    let c4 = ALLOWED_CLIENT_V4.to_string();
    let c6 = ALLOWED_CLIENT_V6.to_string();

    // 1 MiB over TLS, IPv4 and IPv6, byte for byte.
    let want = one_mib();
    let got4 = run.curl(&c4, &format!("https://{vip4}/1MiB.bin"), 20).unwrap();
    assert!(
        got4 == want,
        "IPv4 transfer: {} bytes, content differs or short",
        got4.len()
    );
    let got6 = run.curl(&c6, &format!("https://[{vip6}]/1MiB.bin"), 20).unwrap();
    assert!(got6 == want, "IPv6 transfer: {} bytes", got6.len());

    // Many connections spread over both connectors, and the machines see
    // the client's own address.
    let mut seen = BTreeSet::new();
    for _ in 0..24 {
        let body = run.curl(&c4, &format!("https://{vip4}/peer"), 5).unwrap();
        let text = String::from_utf8_lossy(&body).to_string();
        assert_eq!(parse_peer(&text), Some(ALLOWED_CLIENT_V4.into()), "{text}");
        seen.insert(text.split(" peer=").next().unwrap_or_default().to_string());
    }
    assert_eq!(
        seen.len(),
        2,
        "connections should spread over both connectors: {seen:?}"
    );
    assert!(seen.iter().all(|l| l.contains("conn")), "{seen:?}");

    // A JMS-port session reaches the active core, and is echoed.
    let out = run
        .from_internet(&[
            "sh",
            "-c",
            &format!("printf 'hello-jms\\n' | socat -t 2 - TCP4:{vip4}:61616,bind={c4}"),
        ])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("acme core 0 "), "the active core answers: {text}");
    assert!(text.contains("hello-jms"), "echo: {text}");
    assert_eq!(
        parse_peer(text.lines().next().unwrap_or("")),
        Some(ALLOWED_CLIENT_V4.into()),
        "{text}"
    );

    // A denied client gets nothing, and its SYNs are counted.
    let before = run.dp.counters(SIDE_UPLINK).unwrap();
    assert!(
        run.curl(&DENIED_CLIENT_V4.to_string(), &format!("https://{vip4}/whoami"), 2)
            .is_err()
    );
    let after = run.dp.counters(SIDE_UPLINK).unwrap().since(&before);
    assert!(after.dropped(DropReason::NotAllowed) >= 1, "{after:?}");
}
