//! Following `policy_dir`: inotify (through `notify`) on the directory,
//! debounced, turned into reloads. Any change in the directory counts,
//! dot-files included (a Kubernetes ConfigMap volume switches its files by
//! renaming `..data`); only reads do not. A reload of an unchanged set
//! writes nothing, so a spurious one costs only the reading.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher, event::AccessKind, event::AccessMode};
use tokio::sync::mpsc;
use tracing::warn;

use super::messages::Event;

/// The longest a burst of changes can hold a reload back.
const MAX_DELAY: Duration = Duration::from_millis(500);

/// Watches `dir`; `debounce` after the last change of a burst (or
/// [`MAX_DELAY`] after its first), sends `Event::Reload("policy_dir")`.
/// The watch lasts as long as the returned watcher.
pub fn spawn(dir: &Path, tx: mpsc::UnboundedSender<Event>, debounce: Duration) -> Result<RecommendedWatcher> {
    // Each event: the paths it names, or None when it is about the
    // directory as a whole (or names nothing).
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<Option<Vec<PathBuf>>>();
    let dir_path = dir.to_path_buf();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
        Ok(ev) => {
            let read_only = matches!(
                ev.kind,
                EventKind::Access(AccessKind::Open(_))
                    | EventKind::Access(AccessKind::Read)
                    | EventKind::Access(AccessKind::Close(AccessMode::Read))
                    | EventKind::Access(AccessKind::Close(AccessMode::Execute))
                    | EventKind::Access(AccessKind::Any)
                    | EventKind::Access(AccessKind::Other)
            );
            if !read_only {
                // Only events naming policy files of the directory narrow
                // the reload down; anything else (an overflow, a dot-file
                // such as a ConfigMap's `..data`, the directory) re-reads all.
                let precise = !ev.need_rescan()
                    && !ev.paths.is_empty()
                    && ev
                        .paths
                        .iter()
                        .all(|p| p.parent() == Some(dir_path.as_path()) && super::is_policy_file(p));
                let files = precise.then_some(ev.paths);
                let _ = raw_tx.send(files);
            }
        }
        Err(e) => warn!(error = %e, "watching policy_dir"),
    })
    .context("creating the policy_dir watcher")?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    tokio::spawn(async move {
        while let Some(first_paths) = raw_rx.recv().await {
            let mut changed = first_paths;
            let first = tokio::time::Instant::now();
            loop {
                let left = MAX_DELAY.saturating_sub(first.elapsed());
                match tokio::time::timeout(debounce.min(left), raw_rx.recv()).await {
                    Ok(Some(paths)) => {
                        changed = match (changed, paths) {
                            (Some(mut a), Some(b)) => {
                                a.extend(b);
                                Some(a)
                            }
                            _ => None,
                        };
                        if left.is_zero() {
                            break;
                        }
                    }
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if tx.send(Event::Reload("policy_dir", changed)).is_err() {
                return;
            }
        }
    });
    Ok(watcher)
}
