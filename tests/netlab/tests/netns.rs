//! The namespace harness against the real kernel: veth pairs carry traffic
//! between namespaces, and dropping a namespace leaves nothing behind.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Stdio;
use std::time::Duration;

use netlab::netns::{NetNs, PinDir, list_netns, veth};

fn root_or_skip(test: &str) -> bool {
    if netlab::is_root() {
        return true;
    }
    eprintln!("skipping {test}: needs root to create network namespaces");
    false
}

#[test]
fn veth_carries_tcp_and_drop_removes_namespaces() {
    if !root_or_skip("veth_carries_tcp_and_drop_removes_namespaces") {
        return;
    }
    let (a_name, b_name, orphan_pid);
    {
        let a = NetNs::new("cwt-a").unwrap();
        let b = NetNs::new("cwt-b").unwrap();
        a_name = a.name().to_string();
        b_name = b.name().to_string();
        veth(&a, "va", &b, "vb").unwrap();
        a.sysctl("net.ipv6.conf.all.accept_dad", "0").unwrap();
        a.addr("va", "10.99.0.1/24").unwrap();
        b.addr("vb", "10.99.0.2/24").unwrap();
        a.addr("va", "fd99::1/64").unwrap();
        b.addr("vb", "fd99::2/64").unwrap();

        // A std listener created inside b; accepting on a thread of the root
        // namespace is fine, the socket stays where it was made.
        let listener = b.enter(|| TcpListener::bind("10.99.0.2:0")).unwrap().unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, peer) = listener.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            s.write_all(&(got.len() as u64).to_be_bytes()).unwrap();
            s.write_all(&got[..1024]).unwrap();
            peer
        });
        let payload: Vec<u8> = (0..256 * 1024).map(|i| (i * 7 % 251) as u8).collect();
        let reply = a
            .enter(|| {
                let mut s = TcpStream::connect(("10.99.0.2", port)).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s.write_all(&payload).unwrap();
                s.shutdown(Shutdown::Write).unwrap();
                let mut r = Vec::new();
                s.read_to_end(&mut r).unwrap();
                r
            })
            .unwrap();
        let peer = server.join().unwrap();
        assert_eq!(peer.ip().to_string(), "10.99.0.1");
        assert_eq!(reply.len(), 8 + 1024);
        assert_eq!(u64::from_be_bytes(reply[..8].try_into().unwrap()), 256 * 1024);
        assert_eq!(&reply[8..], &payload[..1024]);

        // IPv6 works at once (no DAD) and commands run inside.
        let out = a.exec(&["ping", "-6", "-c1", "-W2", "fd99::2"]).unwrap();
        assert!(out.status.success(), "{out:?}");
        // The root namespace has no such address: the command really ran
        // in a's namespace.
        assert!(a.ip(&["-br", "addr"]).unwrap().contains("10.99.0.1/24"));

        // sysctls are per namespace.
        a.sysctl("net.ipv4.ip_forward", "1").unwrap();
        assert_eq!(a.read_sysctl("net.ipv4.ip_forward").unwrap(), "1");
        assert_eq!(a.run(&["sysctl", "-n", "net.ipv4.ip_forward"]).unwrap().trim(), "1");
        assert_eq!(b.read_sysctl("net.ipv4.ip_forward").unwrap(), "0");

        // A daemon is inside, and gone once dropped.
        let d = b.spawn(&["sleep", "30"]).unwrap();
        let pid = d.pid() as i32;
        assert!(b.pids().contains(&pid));
        d.stop();
        assert!(!b.pids().contains(&pid));

        // A detached process is not ours to reap; dropping the namespace
        // must still kill it.
        // Not `run`: the orphan would hold its output pipes open.
        let status = a
            .command("setsid")
            .unwrap()
            .args(["-f", "sleep", "60"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        let pids = a.pids();
        assert_eq!(pids.len(), 1, "{pids:?}");
        orphan_pid = pids[0];
    }
    let names = list_netns().unwrap();
    assert!(!names.contains(&a_name), "{a_name} still exists");
    assert!(!names.contains(&b_name), "{b_name} still exists");
    assert!(
        !process_alive(orphan_pid),
        "process {orphan_pid} survived its namespace"
    );
}

/// Whether a pid exists and is not a zombie.
fn process_alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the parenthesised command name; a zombie is dead.
    stat.rsplit_once(')')
        .is_some_and(|(_, rest)| rest.split_whitespace().next() != Some("Z"))
}

#[test]
fn owned_and_opened_handles() {
    if !root_or_skip("owned_and_opened_handles") {
        return;
    }
    let ns = NetNs::new("cwt-o").unwrap();
    let name = ns.name().to_string();
    assert_eq!(ns.path(), std::path::Path::new("/run/netns").join(&name));
    {
        let other = NetNs::open(&name).unwrap();
        assert!(!other.is_owned());
    }
    assert!(list_netns().unwrap().contains(&name), "open() handle deleted it");
    assert!(NetNs::named(&name).is_err(), "creating an existing name must fail");
    let err = ns.ip(&["link", "set", "dev", "nosuchdev", "up"]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("nosuchdev") && msg.contains("ip -n"), "{msg}");
    drop(ns);
    assert!(!list_netns().unwrap().contains(&name));
    assert!(NetNs::open(&name).is_err());
}

#[test]
fn pin_dir_on_bpffs_is_removed() {
    if !root_or_skip("pin_dir_on_bpffs_is_removed") {
        return;
    }
    let path;
    {
        let pins = PinDir::new().unwrap();
        path = pins.path().to_path_buf();
        assert!(path.starts_with("/sys/fs/bpf"));
        std::fs::create_dir_all(path.join("maps/inner")).unwrap();
        assert!(path.join("maps/inner").is_dir());
        netlab::ensure_bpffs().unwrap();
    }
    assert!(!path.exists(), "{} left behind", path.display());
}
