//! The API socket ([`crate::api`]): accepts connections, reads one JSON
//! request per line and hands it to the agent's loop, which owns the maps;
//! requests are therefore served one at a time, in arrival order, between
//! reloads.
//!
//! Who may talk to it: root (or the agent's own user), and with `[api]
//! group` that group's members, as the kernel vouches for the peer
//! (`SO_PEERCRED`); the socket's mode says the same, so a socket whose mode
//! was loosened still serves no one else. Its directory must not be
//! writable by anyone but its owner (root or the agent's user), or another
//! user could put a socket of their own in carwash's place.
//!
//! What a client can cost: a connection reads, parses and writes in a task
//! of its own, so the loop only ever sees whole, parsed requests, at most
//! one per connection at a time. A request longer than `max_request_bytes`,
//! or one not complete within `timeout_secs` of the last answer (or of the
//! connection), ends the connection, as does an answer not taken within
//! that time; beyond `max_connections` a new connection is told so and
//! closed.
use std::ffi::{CStr, CString};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{debug, warn};

use crate::api::{Request, Response};
use crate::config::ApiConfig;

use super::messages::Event;

/// Who may use the socket, and what a connection may cost.
#[derive(Debug, Clone)]
pub struct Access {
    /// `[api] group`, resolved: its name and id.
    pub group: Option<(String, u32)>,
    pub max_request: usize,
    pub timeout: Duration,
    pub max_connections: usize,
}

impl Access {
    /// Resolves `[api]`: an unknown group is an error.
    pub fn new(cfg: &ApiConfig) -> Result<Access> {
        let group = match &cfg.group {
            None => None,
            Some(name) => Some((name.clone(), group_id(name)?)),
        };
        Ok(Access {
            group,
            max_request: cfg.max_request_bytes,
            timeout: Duration::from_secs(cfg.timeout_secs),
            max_connections: cfg.max_connections,
        })
    }

    /// Whether a peer with these credentials may use the API; the error
    /// says why not.
    pub fn admits(&self, uid: u32, gid: u32) -> Result<(), String> {
        // SAFETY: geteuid has no preconditions.
        if uid == 0 || uid == unsafe { libc::geteuid() } {
            return Ok(());
        }
        match &self.group {
            Some((_, g)) if gid == *g || in_group(uid, *g) => Ok(()),
            Some((name, _)) => Err(format!(
                "permission denied: uid {uid} (gid {gid}) is neither root nor in group {name}"
            )),
            None => Err(format!(
                "permission denied: uid {uid} is not root (set [api] group to let a group in)"
            )),
        }
    }
}

/// The id of group `name`.
fn group_id(name: &str) -> Result<u32> {
    let c = CString::new(name).with_context(|| format!("api.group {name:?}"))?;
    // SAFETY: valid C string; the result is read at once, before any other
    // call that could reuse its static buffer (the agent starts single-threaded).
    let g = unsafe { libc::getgrnam(c.as_ptr()) };
    if g.is_null() {
        bail!("api.group {name:?}: no such group");
    }
    // SAFETY: non-null result of getgrnam.
    Ok(unsafe { (*g).gr_gid })
}

/// Whether the user `uid` is a member of group `gid` (supplementary groups
/// included, as the system's group database lists them).
fn in_group(uid: u32, gid: u32) -> bool {
    let mut buf = vec![0u8; 16384];
    // SAFETY: a plain C struct of integers and pointers; all zeroes is a
    // valid (empty) value, filled in by getpwuid_r.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: buffers of the sizes given; `found` is set to `&pw` or null.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() {
        return false;
    }
    // SAFETY: getpwuid_r filled pw_name with a NUL-terminated string in buf.
    let name = unsafe { CStr::from_ptr(pw.pw_name) };
    let mut groups = vec![0 as libc::gid_t; 256];
    let mut n = groups.len() as libc::c_int;
    // SAFETY: `groups` holds `n` entries; getgrouplist writes at most that.
    let rc = unsafe { libc::getgrouplist(name.as_ptr(), pw.pw_gid, groups.as_mut_ptr(), &mut n) };
    if rc < 0 {
        return false;
    }
    groups[..n.max(0) as usize].contains(&gid)
}

/// Creates the socket's directory (mode 0755) if it is missing, and
/// refuses one that anyone but its owner may write to, or whose owner is
/// neither root nor the agent's user. Run at start, before anything else.
pub fn check_dir(path: &Path) -> Result<()> {
    let Some(dir) = path.parent() else {
        return Ok(());
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let m = std::fs::metadata(dir).with_context(|| format!("the API socket's directory {}", dir.display()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if m.uid() != 0 && m.uid() != me {
        bail!(
            "the API socket's directory {} belongs to uid {}, not root: refusing to serve from it",
            dir.display(),
            m.uid()
        );
    }
    let mode = m.mode() & 0o7777;
    if mode & 0o002 != 0 || (mode & 0o020 != 0 && m.gid() != 0) {
        bail!(
            "the API socket's directory {} is writable by others (mode {:o}, group {}): \
             refusing to serve from it (make it 0755, owned by root)",
            dir.display(),
            mode,
            m.gid()
        );
    }
    Ok(())
}

/// Binds the API socket: a stale socket of a dead agent replaced, the
/// socket made owner root (group `[api] group`, or root), mode 0660 with a
/// group, 0600 without. A socket some live process answers on is not taken
/// over. The directory is checked again ([`check_dir`]).
pub fn bind(path: &Path, access: &Access) -> Result<UnixListener> {
    check_dir(path)?;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("something already answers on the API socket {}", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    // Created with no access for anyone but the owner from the start.
    // SAFETY: umask only changes this process's file creation mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, restoring it.
    unsafe { libc::umask(old) };
    let listener = bound.with_context(|| format!("binding the API socket {}", path.display()))?;
    let (gid, mode) = match &access.group {
        Some((_, g)) => (*g, 0o660),
        None => (0, 0o600),
    };
    std::os::unix::fs::chown(path, Some(0), Some(gid)).with_context(|| format!("chown {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Accepts connections until the listener fails.
pub async fn serve(
    listener: UnixListener,
    tx: mpsc::UnboundedSender<Event>,
    access: Access,
    events: super::events::EventSink,
) {
    let access = Arc::new(access);
    let slots = Arc::new(Semaphore::new(access.max_connections));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let cred = stream.peer_cred();
                let refusal = match &cred {
                    Ok(c) => access.admits(c.uid(), c.gid()).err(),
                    Err(e) => Some(format!("permission denied: no peer credentials ({e})")),
                };
                if let Some(why) = refusal {
                    warn!(peer = ?cred.ok(), "API socket: {why}");
                    refuse(&stream, &why);
                    continue;
                }
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    warn!(
                        max = access.max_connections,
                        "API socket: too many connections, closing a new one"
                    );
                    refuse(
                        &stream,
                        &format!("too many connections ({} at once); try again", access.max_connections),
                    );
                    continue;
                };
                let (tx, access, events) = (tx.clone(), access.clone(), events.clone());
                tokio::spawn(async move {
                    connection(stream, tx, &access, &events).await;
                    drop(permit);
                });
            }
            Err(e) => {
                warn!(error = %e, "API socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Answers a connection that will not be served with one error line,
/// without waiting (a new socket's buffer takes it), and closes it.
fn refuse(stream: &UnixStream, why: &str) {
    let mut out = serde_json::to_string(&Response::error(why)).unwrap_or_else(|_| r#"{"ok":false}"#.into());
    out.push('\n');
    let _ = stream.try_write(out.as_bytes());
}

/// Why a request could not be read.
enum ReadError {
    TooLarge,
    Io(std::io::Error),
}

/// Reads one line of at most `max` bytes (without its newline); `None` at
/// the end of the stream.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R, max: usize) -> Result<Option<Vec<u8>>, ReadError> {
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf().await.map_err(ReadError::Io)?;
        if buf.is_empty() {
            return Ok(if line.is_empty() { None } else { Some(line) });
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], i + 1),
            None => (buf, buf.len()),
        };
        if line.len() + chunk.len() > max {
            return Err(ReadError::TooLarge);
        }
        line.extend_from_slice(chunk);
        let newline = done > chunk.len();
        r.consume(done);
        if newline {
            return Ok(Some(line));
        }
    }
}

async fn connection(
    stream: UnixStream,
    tx: mpsc::UnboundedSender<Event>,
    access: &Access,
    events: &super::events::EventSink,
) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let resp = match tokio::time::timeout(access.timeout, read_line(&mut reader, access.max_request)).await {
            Err(_) => {
                debug!("API connection: no whole request within {:?}, closing", access.timeout);
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    send(
                        &mut write,
                        &Response::error(format!(
                            "no whole request within {} s: closing",
                            access.timeout.as_secs()
                        )),
                    ),
                )
                .await;
                return;
            }
            Ok(Ok(None)) => return,
            Ok(Err(ReadError::Io(e))) => {
                debug!(error = %e, "API connection closed");
                return;
            }
            Ok(Err(ReadError::TooLarge)) => {
                warn!(max = access.max_request, "API connection: request too large, closing");
                let why = format!(
                    "request larger than {} bytes (api.max_request_bytes): closing",
                    access.max_request
                );
                let _ = tokio::time::timeout(access.timeout, send(&mut write, &Response::error(why))).await;
                return;
            }
            Ok(Ok(Some(line))) => {
                if line.iter().all(|b| b.is_ascii_whitespace()) {
                    continue;
                }
                if let Some(filter) = monitor_request(&line) {
                    return monitor(reader, write, filter, events, access).await;
                }
                match serde_json::from_slice::<Request>(&line) {
                    Ok(req) => {
                        let (reply, rx) = oneshot::channel();
                        if tx.send(Event::Api(req, reply)).is_err() {
                            return;
                        }
                        rx.await.unwrap_or_else(|_| Response::error("the agent is stopping"))
                    }
                    Err(e) => Response::error(format!("bad request: {e}")),
                }
            }
        };
        match tokio::time::timeout(access.timeout, send(&mut write, &resp)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                debug!(error = %e, "API connection closed");
                return;
            }
            Err(_) => {
                warn!("API connection: answer not taken within {:?}, closing", access.timeout);
                return;
            }
        }
    }
}

/// `{"op":"monitor", "filter": {...}}`: the connection becomes a stream of
/// events (one JSON line each), until the client closes it.
fn monitor_request(line: &[u8]) -> Option<crate::event::Filter> {
    #[derive(serde::Deserialize)]
    struct Monitor {
        op: String,
        #[serde(default)]
        filter: crate::event::Filter,
    }
    serde_json::from_slice::<Monitor>(line)
        .ok()
        .filter(|m| m.op == "monitor")
        .map(|m| m.filter)
}

async fn monitor(
    mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut write: tokio::net::unix::OwnedWriteHalf,
    filter: crate::event::Filter,
    events: &super::events::EventSink,
    access: &Access,
) {
    if let Err(e) = filter.check() {
        let _ = tokio::time::timeout(access.timeout, send(&mut write, &Response::error(e))).await;
        return;
    }
    let mut rx = events.subscribe(filter);
    // The first line says the stream is open: a monitor knows it is
    // attached before any event comes.
    let ok = Response {
        ok: true,
        ..Default::default()
    };
    if send(&mut write, &ok).await.is_err() {
        return;
    }
    let mut sink = [0u8; 64];
    loop {
        let mut line = tokio::select! {
            l = rx.recv() => match l {
                Some(l) => l,
                None => return,
            },
            // The client closed (or wrote, which a monitor does not).
            _ = tokio::io::AsyncReadExt::read(&mut reader, &mut sink) => return,
        };
        line.push('\n');
        // A monitor that stops reading is closed (its queue holds what it
        // has not taken, and loses the rest, counted).
        match tokio::time::timeout(access.timeout, write.write_all(line.as_bytes())).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
}

async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, resp: &Response) -> std::io::Result<()> {
    let mut out = serde_json::to_string(resp).unwrap_or_else(|_| r#"{"ok":false}"#.into());
    out.push('\n');
    write.write_all(out.as_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(group: Option<(&str, u32)>) -> Access {
        Access {
            group: group.map(|(n, g)| (n.to_string(), g)),
            max_request: 1,
            timeout: Duration::from_secs(1),
            max_connections: 1,
        }
    }

    #[test]
    fn root_and_the_group_are_admitted() {
        let none = access(None);
        assert!(none.admits(0, 0).is_ok());
        assert_eq!(
            none.admits(4242, 100).unwrap_err(),
            "permission denied: uid 4242 is not root (set [api] group to let a group in)"
        );
        let group = access(Some(("carwash", 4321)));
        assert!(group.admits(4242, 4321).is_ok(), "by the connecting group");
        assert_eq!(
            group.admits(4242, 100).unwrap_err(),
            "permission denied: uid 4242 (gid 100) is neither root nor in group carwash"
        );
        // A user the group database knows as a member (its own group).
        let own = access(Some(("nogroup", 65534)));
        if in_group(65534, 65534) {
            assert!(own.admits(65534, 100).is_ok());
        }
    }

    #[test]
    fn a_group_must_exist() {
        let e = Access::new(&ApiConfig {
            group: Some("no-such-group-here".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(format!("{e:#}"), "api.group \"no-such-group-here\": no such group");
        let a = Access::new(&ApiConfig {
            group: Some("root".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(a.group, Some(("root".to_string(), 0)));
    }

    #[tokio::test]
    async fn a_line_longer_than_the_limit_is_refused() {
        let mut r = BufReader::with_capacity(4, &b"{\"op\":\"status\"}\nxxxxxxxxxxxxxxxxxxxxxxxx\n"[..]);
        assert_eq!(
            read_line(&mut r, 16).await.ok().flatten().as_deref(),
            Some(&b"{\"op\":\"status\"}"[..])
        );
        assert!(matches!(read_line(&mut r, 16).await, Err(ReadError::TooLarge)));
        let mut r = BufReader::new(&b"last"[..]);
        assert_eq!(
            read_line(&mut r, 16).await.ok().flatten().as_deref(),
            Some(&b"last"[..])
        );
        assert!(matches!(read_line(&mut r, 16).await, Ok(None)));
    }
}
