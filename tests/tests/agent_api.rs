//! The agent's API socket end to end: `carwash policy apply` against a
//! running agent (applied, refused with file:line, the set in force kept);
//! who is served (root, the `[api] group`, by the peer's credentials, even
//! when the socket's mode was loosened); what a hostile client cannot do
//! (an oversized request, slow or silent clients, more connections than
//! allowed, a client that never reads its answers) to the agent's loop or
//! its other clients; and a socket directory writable by others refused at
//! start.
mod agent_common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use agent_common::*;
use carwash_tests::require_root;

/// Appends `text` to the setup's host configuration.
fn add_config(setup: &AgentSetup, text: &str) {
    let mut t = std::fs::read_to_string(&setup.config).unwrap();
    t.push_str(text);
    std::fs::write(&setup.config, t).unwrap();
}

/// `carwash policy apply --socket SOCKET PATH [extra]`, as `uid`:`gid`
/// (root: 0, 0).
fn apply_as(uid: u32, gid: u32, socket: &Path, path: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(carwash_bin());
    cmd.args(["policy", "apply", "--socket"])
        .arg(socket)
        .arg(path)
        .args(extra)
        .stdin(Stdio::null());
    if uid != 0 {
        cmd.uid(uid).gid(gid);
    }
    cmd.output().expect("running carwash policy apply")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A directory of policy files readable by anyone: the repository's `files`,
/// and `extra` (name, content).
fn policy_set(what: &str, files: &[&str], extra: &[(&str, &str)]) -> TempDir {
    let d = TempDir::new(what);
    for f in files {
        std::fs::copy(repo_policies_dir().join(f), d.path().join(f)).unwrap();
    }
    for (name, content) in extra {
        std::fs::write(d.path().join(name), content).unwrap();
    }
    d
}

fn tenant_names(agent: &AgentProc) -> Vec<String> {
    let mut v: Vec<String> = agent.status().tenants.into_iter().map(|t| t.name).collect();
    v.sort();
    v
}

#[test]
fn policy_apply_hands_a_set_to_the_running_agent() {
    require_root();
    let setup = AgentSetup::new(&["acme.toml"]).unwrap();
    let agent = setup.start().unwrap();
    assert_eq!(tenant_names(&agent), ["acme"]);

    let both = policy_set("apply-both", &["acme.toml", "beta.toml"], &[]);
    let dry = apply_as(0, 0, &setup.socket, both.path(), &["--dry-run"]);
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(
        String::from_utf8_lossy(&dry.stdout).contains("dry run, nothing applied"),
        "{}",
        text(&dry)
    );
    assert_eq!(tenant_names(&agent), ["acme"], "a dry run applies nothing");

    let out = apply_as(0, 0, &setup.socket, both.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("applied: generation"),
        "{}",
        text(&out)
    );
    assert_eq!(tenant_names(&agent), ["acme", "beta"]);
    let digest = agent.status().digest;
    // What the agent stores in its policy_dir is the set applied.
    assert!(setup.policy_dir.join("beta.toml").exists());

    // A set with an error is refused as a whole, with file and line; the
    // set in force stays.
    let beta = std::fs::read_to_string(repo_policies_dir().join("beta.toml")).unwrap();
    let broken = beta.replace("vni = 1002", "vni = 0");
    let bad = policy_set("apply-bad", &["acme.toml"], &[("beta.toml", &broken)]);
    let out = apply_as(0, 0, &setup.socket, bad.path(), &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = broken.lines().position(|l| l.starts_with("vni")).unwrap() + 1;
    assert!(err.contains(&format!("beta.toml:{line}:")), "{}", text(&out));
    assert!(err.contains("vni"), "{}", text(&out));
    assert!(err.contains("refused"), "{}", text(&out));
    assert_eq!(agent.status().digest, digest);
    assert_eq!(tenant_names(&agent), ["acme", "beta"]);
}

const NOBODY: u32 = 65534;
const NOGROUP: u32 = 65534;
const USERS: u32 = 100;
/// A user the system does not know, so in no group by the group database.
const STRANGER: u32 = 4242;

#[test]
fn only_root_and_the_api_group_are_served() {
    require_root();
    let setup = AgentSetup::new(&["acme.toml"]).unwrap();
    add_config(&setup, "[api]\ngroup = \"nogroup\"\n");
    let agent = setup.start().unwrap();
    let set = policy_set("creds", &["acme.toml"], &[]);

    let m = std::fs::metadata(&setup.socket).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (0, NOGROUP, 0o660));

    let root = apply_as(0, 0, &setup.socket, set.path(), &["--dry-run"]);
    assert!(root.status.success(), "root: {}", text(&root));
    let member = apply_as(NOBODY, NOGROUP, &setup.socket, set.path(), &["--dry-run"]);
    assert!(member.status.success(), "a member of the group: {}", text(&member));
    // nobody's own group is nogroup: a member by the group database, also
    // when it connects with another group.
    std::fs::set_permissions(&setup.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let member = apply_as(NOBODY, USERS, &setup.socket, set.path(), &["--dry-run"]);
    assert!(
        member.status.success(),
        "a member by the group database: {}",
        text(&member)
    );
    std::fs::set_permissions(&setup.socket, std::fs::Permissions::from_mode(0o660)).unwrap();

    // A client outside the group cannot even open the socket...
    let outsider = apply_as(STRANGER, USERS, &setup.socket, set.path(), &["--dry-run"]);
    assert_eq!(outsider.status.code(), Some(1), "{}", text(&outsider));
    // ...and when the socket's mode is loosened, the agent itself refuses
    // it by its credentials.
    std::fs::set_permissions(&setup.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let outsider = apply_as(STRANGER, USERS, &setup.socket, set.path(), &["--dry-run"]);
    assert_eq!(outsider.status.code(), Some(1), "{}", text(&outsider));
    let err = String::from_utf8_lossy(&outsider.stderr);
    assert!(
        err.contains("permission denied: uid 4242 (gid 100) is neither root nor in group nogroup"),
        "{}",
        text(&outsider)
    );
    assert!(agent.log_text().contains("permission denied"), "{}", agent.log_text());
    // Root is still served, the agent unmoved.
    let root = apply_as(0, 0, &setup.socket, set.path(), &["--dry-run"]);
    assert!(root.status.success(), "root: {}", text(&root));
    assert_eq!(tenant_names(&agent), ["acme"]);
}

#[test]
fn without_a_group_only_root_is_served() {
    require_root();
    let setup = AgentSetup::new(&["acme.toml"]).unwrap();
    let agent = setup.start().unwrap();
    let set = policy_set("rootonly", &["acme.toml"], &[]);
    let m = std::fs::metadata(&setup.socket).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (0, 0, 0o600));
    std::fs::set_permissions(&setup.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let nobody = apply_as(NOBODY, NOGROUP, &setup.socket, set.path(), &["--dry-run"]);
    assert_eq!(nobody.status.code(), Some(1), "{}", text(&nobody));
    assert!(
        String::from_utf8_lossy(&nobody.stderr).contains("permission denied: uid 65534 is not root"),
        "{}",
        text(&nobody)
    );
    let root = apply_as(0, 0, &setup.socket, set.path(), &["--dry-run"]);
    assert!(root.status.success(), "root: {}", text(&root));
    drop(agent);
}

/// Connects to the socket, answers read within `timeout`.
fn connect(socket: &Path, timeout: Duration) -> UnixStream {
    let s = UnixStream::connect(socket).expect("connecting to the API socket");
    s.set_read_timeout(Some(timeout)).unwrap();
    s
}

/// One line from the stream ("" at its end).
fn read_answer(s: &UnixStream) -> String {
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    line
}

/// A status request on a connection of its own, and how long it took.
fn timed_status(socket: &Path) -> (String, Duration) {
    let t0 = Instant::now();
    let mut s = connect(socket, Duration::from_secs(20));
    s.write_all(b"{\"op\":\"status\"}\n").unwrap();
    (read_answer(&s), t0.elapsed())
}

#[test]
fn hostile_clients_cannot_stall_the_agent_or_its_other_clients() {
    require_root();
    let setup = AgentSetup::new(&["acme.toml"]).unwrap();
    add_config(
        &setup,
        "[api]\nmax_request_bytes = 65536\ntimeout_secs = 3\nmax_connections = 4\n",
    );
    let agent = setup.start().unwrap();

    // An oversized request: an error naming the limit, and the end.
    let mut big = connect(&setup.socket, Duration::from_secs(20));
    let _ = big.write_all(&vec![b'x'; 100_000]);
    let answer = read_answer(&big);
    assert!(
        answer.contains("request larger than 65536 bytes (api.max_request_bytes)"),
        "{answer:?}"
    );
    assert_eq!(
        read_answer(&big),
        "",
        "the connection is closed after an oversized request"
    );
    drop(big);

    // Three slow clients, each halfway through a request, hold three of the
    // four connections: the loop and the fourth client are served at once.
    let slow: Vec<UnixStream> = (0..3)
        .map(|_| {
            let mut s = connect(&setup.socket, Duration::from_secs(30));
            s.write_all(b"{\"op\":").unwrap();
            s
        })
        .collect();
    let (status, took) = timed_status(&setup.socket);
    assert!(status.contains("\"ok\":true"), "{status:?}");
    assert!(
        took < Duration::from_secs(2),
        "a status took {took:?} beside slow clients"
    );
    let set = policy_set("hostile", &["acme.toml", "beta.toml"], &[]);
    let out = apply_as(0, 0, &setup.socket, set.path(), &[]);
    assert!(out.status.success(), "an apply beside slow clients: {}", text(&out));

    // With the fourth connection held too, a fifth is told and closed.
    let held = connect(&setup.socket, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(200));
    let fifth = connect(&setup.socket, Duration::from_secs(5));
    let answer = read_answer(&fifth);
    assert!(answer.contains("too many connections (4 at once)"), "{answer:?}");
    drop((fifth, held));

    // The slow clients are closed once their time is up, with a word.
    let t0 = Instant::now();
    for s in &slow {
        let answer = read_answer(s);
        assert!(answer.contains("no whole request within 3 s"), "{answer:?}");
        assert_eq!(read_answer(s), "");
    }
    let waited = t0.elapsed();
    assert!(waited < Duration::from_secs(10), "slow clients closed after {waited:?}");
    drop(slow);

    // A client that sends requests and never reads the answers: once they
    // fill the socket, the agent gives up on it after its timeout; others
    // are served meanwhile.
    let mut greedy = connect(&setup.socket, Duration::from_secs(30));
    greedy.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let writer = std::thread::spawn(move || {
        let t0 = Instant::now();
        while greedy.write_all(b"{\"op\":\"status\"}\n").is_ok() {
            if t0.elapsed() > Duration::from_secs(60) {
                return None;
            }
        }
        Some(t0.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    let (status, took) = timed_status(&setup.socket);
    assert!(status.contains("\"ok\":true"), "{status:?}");
    assert!(
        took < Duration::from_secs(2),
        "a status took {took:?} beside a client that never reads"
    );
    let closed_after = writer.join().unwrap();
    assert!(
        closed_after.is_some(),
        "the agent kept a client that never reads its answers for a minute"
    );
    assert_eq!(tenant_names(&agent), ["acme", "beta"]);
}

#[test]
fn a_socket_directory_writable_by_others_is_refused_at_start() {
    require_root();
    let setup = AgentSetup::new(&["acme.toml"]).unwrap();
    let dir = setup.socket.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut cmd = setup.ns.command(carwash_bin().to_str().unwrap()).unwrap();
    let out = cmd
        .args(["agent", "--config"])
        .arg(&setup.config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "the API socket's directory {} is writable by others",
            dir.display()
        )),
        "{err}"
    );
    // Nothing was attached or pinned before the refusal.
    assert!(
        std::fs::read_dir(setup.pin_path()).map(|d| d.count()).unwrap_or(0) == 0,
        "pins left under {}",
        setup.pin_path().display()
    );

    // Owned by another user: refused too.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(dir, Some(NOBODY), Some(NOGROUP)).unwrap();
    let mut cmd = setup.ns.command(carwash_bin().to_str().unwrap()).unwrap();
    let out = cmd
        .args(["agent", "--config"])
        .arg(&setup.config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("belongs to uid 65534, not root"), "{err}");

    // Made right, the agent starts.
    std::os::unix::fs::chown(dir, Some(0), Some(0)).unwrap();
    let agent = setup.start().unwrap();
    let mut s = connect(&setup.socket, Duration::from_secs(20));
    s.write_all(b"{\"op\":\"status\"}\n").unwrap();
    let mut all = String::new();
    let _ = BufReader::new(&s).read_line(&mut all);
    assert!(all.contains("\"ok\":true"), "{all}");
    drop(agent);
}
