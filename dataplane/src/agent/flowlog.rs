//! The flow log (`event_log`): every event as a JSON line, rotated daily
//! and at `[events] max_file_bytes`, rotated files kept
//! `event_retention_days`. A write that fails (a full disk, an unwritable
//! directory) loses that line, is counted and reported once per outage,
//! and never stops the agent: the next line tries again.
//!
//! Rotated files are named `NAME.YYYY-MM-DD` (and `NAME.YYYY-MM-DD.N` for
//! a day's further size rotations), after the UTC day of their events;
//! retention goes by that name, so a clock that is given (a fake one in
//! tests) decides everything.
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use crate::event::{date, parse_date, parse_rfc3339};

/// Where time comes from.
pub trait Clock: Send {
    fn now(&self) -> SystemTime;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

pub struct FlowLog {
    path: PathBuf,
    max_bytes: u64,
    retention_days: u32,
    clock: Box<dyn Clock>,
    file: Option<File>,
    /// The UTC day of the open file's events.
    day: String,
    size: u64,
    /// The error of the outage in progress, if any (reported once).
    broken: Option<String>,
    pub written: u64,
    pub failed: u64,
}

impl FlowLog {
    pub fn new(path: &Path, max_bytes: u64, retention_days: u32, clock: Box<dyn Clock>) -> FlowLog {
        FlowLog {
            path: path.to_path_buf(),
            max_bytes: max_bytes.max(1),
            retention_days,
            clock,
            file: None,
            day: String::new(),
            size: 0,
            broken: None,
            written: 0,
            failed: 0,
        }
    }

    /// The error of the outage in progress.
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Appends one line. `Err` carries the error the first time a write
    /// fails after working (or at the first write): the caller reports it.
    pub fn append(&mut self, line: &str) -> Result<(), Option<String>> {
        match self.try_append(line) {
            Ok(()) => {
                self.written += 1;
                if let Some(e) = self.broken.take() {
                    info!(event_log = %self.path.display(), "the flow log is written again (after: {e})");
                }
                Ok(())
            }
            Err(e) => {
                self.failed += 1;
                self.file = None;
                let msg = format!("{}: {e}", self.path.display());
                if self.broken.is_none() {
                    warn!(
                        event_log = %self.path.display(),
                        error = %e,
                        "cannot write the flow log: events are lost from it (counted) until it can be written; \
                         the data path and the agent go on"
                    );
                    self.broken = Some(msg.clone());
                    return Err(Some(msg));
                }
                Err(None)
            }
        }
    }

    fn try_append(&mut self, line: &str) -> std::io::Result<()> {
        let now = self.clock.now();
        let today = date(now);
        let len = line.len() as u64 + 1;
        if self.file.is_none() {
            self.open()?;
        }
        if self.size > 0 && (self.day != today || self.size + len > self.max_bytes) {
            self.rotate()?;
            self.expire(now)?;
            self.open()?;
        }
        if self.size == 0 {
            self.day = today;
        }
        let f = self.file.as_mut().expect("opened above");
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        f.write_all(&buf)?;
        self.size += len;
        Ok(())
    }

    fn open(&mut self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let f = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.size = f.metadata()?.len();
        // A file left by an earlier agent: its day is its first event's.
        if self.size > 0 {
            self.day = first_day(&self.path).unwrap_or_else(|| date(self.clock.now()));
        }
        self.file = Some(f);
        Ok(())
    }

    /// Moves the open file aside under its day's name.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let base = format!("{}.{}", self.path.display(), self.day);
        let mut target = PathBuf::from(&base);
        let mut n = 1;
        while target.exists() {
            target = PathBuf::from(format!("{base}.{n}"));
            n += 1;
        }
        std::fs::rename(&self.path, &target)?;
        self.size = 0;
        Ok(())
    }

    /// Deletes rotated files of days more than `retention_days` before
    /// `now`'s.
    pub fn expire(&self, now: SystemTime) -> std::io::Result<Vec<PathBuf>> {
        let cutoff = parse_date(&date(now)).unwrap_or(now) - Duration::from_secs(86_400 * self.retention_days as u64);
        let mut gone = Vec::new();
        for (day, p) in rotated(&self.path)? {
            if day < cutoff {
                std::fs::remove_file(&p)?;
                gone.push(p);
            }
        }
        Ok(gone)
    }
}

/// The rotated files of the log at `path`, with their days.
pub fn rotated(path: &Path) -> std::io::Result<Vec<(SystemTime, PathBuf)>> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{name}.");
    let mut out = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in rd.flatten() {
        let n = e.file_name();
        let Some(rest) = n.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        if let Some(day) = rest.get(..10).and_then(parse_date) {
            out.push((day, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn first_day(path: &Path) -> Option<String> {
    let f = File::open(path).ok()?;
    let mut line = String::new();
    std::io::BufReader::new(f).read_line(&mut line).ok()?;
    let v: serde_json::Value = serde_json::from_str(&line).ok()?;
    parse_rfc3339(v.get("ts")?.as_str()?).map(date)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone)]
    struct FakeClock(Arc<Mutex<SystemTime>>);

    impl Clock for FakeClock {
        fn now(&self) -> SystemTime {
            *self.0.lock().unwrap()
        }
    }

    fn line(t: SystemTime, n: u32) -> String {
        format!(r#"{{"ts":"{}","type":"drop","n":{n}}}"#, crate::event::rfc3339(t))
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn rotates_daily_and_keeps_exactly_the_retention() {
        let dir = std::env::temp_dir().join(format!("carwash-flowlog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let start = parse_rfc3339("2026-11-01T12:00:00Z").unwrap();
        let clock = FakeClock(Arc::new(Mutex::new(start)));
        let mut log = FlowLog::new(&dir.join("events.jsonl"), 1 << 20, 30, Box::new(clock.clone()));
        // One event a day for 40 days.
        for day in 0..40u32 {
            let t = start + Duration::from_secs(86_400 * day as u64);
            *clock.0.lock().unwrap() = t;
            log.append(&line(t, day)).unwrap();
        }
        // Today (2026-12-10) is in events.jsonl; rotated days kept: the 30
        // before it (2026-11-10 ..= 2026-12-09); older ones deleted.
        let got = names(&dir);
        assert_eq!(got.len(), 31, "{got:#?}");
        assert_eq!(got[0], "events.jsonl");
        assert_eq!(got[1], "events.jsonl.2026-11-10");
        assert_eq!(got[30], "events.jsonl.2026-12-09");
        let today = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
        assert!(today.contains(r#""n":39"#) && today.lines().count() == 1, "{today}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rotates_at_the_size_limit_within_a_day() {
        let dir = std::env::temp_dir().join(format!("carwash-flowlog-size-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let t = parse_rfc3339("2026-12-04T08:00:00Z").unwrap();
        let mut log = FlowLog::new(
            &dir.join("e.jsonl"),
            100,
            30,
            Box::new(FakeClock(Arc::new(Mutex::new(t)))),
        );
        for n in 0..5 {
            log.append(&line(t, n)).unwrap();
        }
        // 52-byte lines: one per 100-byte file.
        assert_eq!(
            names(&dir),
            [
                "e.jsonl",
                "e.jsonl.2026-12-04",
                "e.jsonl.2026-12-04.1",
                "e.jsonl.2026-12-04.2",
                "e.jsonl.2026-12-04.3"
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unwritable_log_is_reported_once_and_recovers() {
        let dir = std::env::temp_dir().join(format!("carwash-flowlog-ro-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // A file where the directory should be: nothing can be created.
        std::fs::write(&dir, b"").unwrap();
        let t = parse_rfc3339("2026-12-04T08:00:00Z").unwrap();
        let mut log = FlowLog::new(
            &dir.join("e.jsonl"),
            1 << 20,
            30,
            Box::new(FakeClock(Arc::new(Mutex::new(t)))),
        );
        assert!(matches!(log.append(&line(t, 0)), Err(Some(_))));
        assert_eq!(log.append(&line(t, 1)), Err(None), "reported once per outage");
        assert_eq!((log.written, log.failed), (0, 2));
        std::fs::remove_file(&dir).unwrap();
        log.append(&line(t, 2)).unwrap();
        assert!(log.broken().is_none());
        assert_eq!(std::fs::read_to_string(dir.join("e.jsonl")).unwrap().lines().count(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
