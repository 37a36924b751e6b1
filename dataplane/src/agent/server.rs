//! The API socket ([`crate::api`]): accepts connections, reads one JSON
//! request per line and hands it to the agent's loop, which owns the maps;
//! requests are therefore served one at a time, in arrival order, between
//! reloads.
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::Agent;
use crate::api::{Request, Response};

/// What the agent's loop is asked to do.
#[derive(Debug)]
pub enum Event {
    /// Re-read `policy_dir`; the string says why (for logs and status),
    /// the paths which files changed (`None`: any may have).
    Reload(&'static str, Option<Vec<std::path::PathBuf>>),
    Api(Request, oneshot::Sender<Response>),
}

/// Binds the API socket: its directory is created (mode 0755), a stale
/// socket of a dead agent replaced, and the socket made owner root, mode
/// 0600. A socket some live process answers on is not taken over.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
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
    std::os::unix::fs::chown(path, Some(0), Some(0)).with_context(|| format!("chown root {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts connections until the listener fails.
pub async fn serve(listener: UnixListener, tx: mpsc::UnboundedSender<Event>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, tx.clone()));
            }
            Err(e) => {
                warn!(error = %e, "API socket: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(stream: UnixStream, tx: mpsc::UnboundedSender<Event>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => return,
            Err(e) => {
                debug!(error = %e, "API connection closed");
                return;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                let (reply, rx) = oneshot::channel();
                if tx.send(Event::Api(req, reply)).is_err() {
                    return;
                }
                rx.await.unwrap_or_else(|_| Response::error("the agent is stopping"))
            }
            Err(e) => Response::error(format!("bad request: {e}")),
        };
        let mut out = serde_json::to_string(&resp).unwrap_or_else(|_| r#"{"ok":false}"#.into());
        out.push('\n');
        if write.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Serves one request (on the agent's loop).
pub fn handle(agent: &mut Agent, req: Request) -> Response {
    match req {
        Request::Status => Response {
            ok: true,
            status: Some(Box::new(agent.status())),
            ..Default::default()
        },
        Request::Reload => agent.reload("api"),
        Request::Apply {
            documents,
            tenants,
            dry_run,
        } => agent.apply_documents(documents, tenants, dry_run),
    }
}
