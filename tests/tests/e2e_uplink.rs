//! End to end: the uplink program attached to a veth in a namespace sees a
//! real TCP handshake and transfer, and its counters are read back from the
//! pinned map.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use aya::programs::XdpMode;
use carwash_tests::require_root;
use dataplane::Dataplane;
use dataplane::maps::counters::pinned_counters;
use dataplane_common::Counter;
use dataplane_common::types::SIDE_UPLINK;
use netlab::netns::{NetNs, PinDir, veth};

const TRANSFER: usize = 1 << 20;

#[test]
fn uplink_counts_a_real_tcp_transfer() {
    require_root();
    let client = NetNs::new("cwt-cli").unwrap();
    let host = NetNs::new("cwt-host").unwrap();
    veth(&client, "eth0", &host, "uplink").unwrap();
    client.addr("eth0", "192.0.2.1/24").unwrap();
    host.addr("uplink", "192.0.2.2/24").unwrap();
    let pins = PinDir::new().unwrap();

    let mut dp = Dataplane::load(Some(pins.path())).unwrap();
    host.enter(|| dp.attach_uplink("uplink", XdpMode::Default))
        .unwrap()
        .unwrap();
    let before = pinned_counters(pins.path(), SIDE_UPLINK).unwrap();

    // A socket keeps the namespace it was created in, so the listener can be
    // served from any thread.
    let listener = host.enter(|| TcpListener::bind("192.0.2.2:7000")).unwrap().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; TRANSFER];
        s.read_exact(&mut buf).unwrap();
        s.write_all(b"done").unwrap();
        buf.iter().map(|&b| b as u64).sum::<u64>()
    });
    let sent: Vec<u8> = (0..TRANSFER).map(|i| (i * 7 % 251) as u8).collect();
    let reply = client
        .enter(|| {
            let mut s = TcpStream::connect_timeout(&"192.0.2.2:7000".parse().unwrap(), Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(&sent)?;
            let mut r = [0u8; 4];
            s.read_exact(&mut r)?;
            std::io::Result::Ok(r)
        })
        .unwrap()
        .unwrap();
    assert_eq!(&reply, b"done");
    assert_eq!(server.join().unwrap(), sent.iter().map(|&b| b as u64).sum::<u64>());

    let seen = pinned_counters(pins.path(), SIDE_UPLINK).unwrap().since(&before);
    // The client's segments (SYN, data, ACK of "done", FIN...) all crossed
    // the uplink: at least the handshake plus 1 MiB of payload.
    assert!(seen.get(Counter::Tcp) >= 3, "{seen:?}");
    assert!(seen.get(Counter::Bytes) >= TRANSFER as u64, "{seen:?}");
    assert_eq!(
        seen.get(Counter::Ipv4),
        seen.get(Counter::Tcp) + seen.get(Counter::Icmp) + seen.get(Counter::Udp),
        "{seen:?}"
    );
    // Nothing is carwash's business here: everything passed.
    assert_eq!(seen.get(Counter::ActionPass), seen.get(Counter::Packets), "{seen:?}");
    assert_eq!(seen.get(Counter::ActionDrop), 0);
    // The counters stay readable from the pin after the loader is gone.
    drop(dp);
    assert!(pinned_counters(pins.path(), SIDE_UPLINK).unwrap().get(Counter::Tcp) >= seen.get(Counter::Tcp));
}
