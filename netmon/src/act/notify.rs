//! Telling people: every alert and every automatic action becomes an [`Event`], written to the
//! forensic event log (JSON lines, rotated by size) and handed to the configured sinks
//! (webhook, syslog, email; [`super::sinks`]), each on its own thread behind a bounded
//! queue, so a sink that is slow or down never holds up the drain loop or the other sinks.
//! Before the sinks, a per-key deduplication window and an hourly cap per key keep a
//! flapping detection from flooding anyone.

use std::{
    collections::{HashMap, VecDeque},
    fs::File,
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::classify::{Alert, config::AlertsConfig, score::Level};

/// What an automatic response did (or would have done, or why it did not).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ActionRecord {
    /// `ban` or `kill`.
    pub action: String,
    pub remote: IpAddr,
    /// `done`, `dry_run`, `allowed`, `rate_limited`, `skipped`, `failed`.
    pub result: String,
    pub detail: String,
    /// The alert that caused it.
    pub alert_id: u64,
    pub alert_kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

/// One line of the forensic log; what the sinks receive.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    /// Unix milliseconds.
    pub time_ms: u64,
    /// RFC 3339, UTC.
    pub time: String,
    pub host: String,
    /// `alert` or `action`.
    pub event: String,
    pub severity: Level,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<ActionRecord>,
}

impl Event {
    pub fn alert(a: &Alert, host: &str) -> Self {
        Self {
            time_ms: a.time_ms,
            time: crate::act::state::rfc3339(a.time_ms),
            host: host.to_string(),
            event: "alert".into(),
            severity: a.severity,
            alert: Some(serde_json::to_value(a).expect("alerts serialize")),
            action: None,
        }
    }

    pub fn action(r: ActionRecord, severity: Level, host: &str) -> Self {
        let now = crate::act::state::now_ms();
        Self {
            time_ms: now,
            time: crate::act::state::rfc3339(now),
            host: host.to_string(),
            event: "action".into(),
            severity,
            alert: None,
            action: Some(r),
        }
    }

    /// `kind` of the alert, or the action's name.
    pub fn kind(&self) -> String {
        match (&self.alert, &self.action) {
            (Some(a), _) => a["kind"].as_str().unwrap_or("").to_string(),
            (_, Some(r)) => r.action.clone(),
            _ => String::new(),
        }
    }

    /// What it is about: the remote address, or a threshold rule's detail.
    pub fn subject(&self) -> String {
        match (&self.alert, &self.action) {
            (Some(a), _) => a["remote"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| a["reasons"][0]["kind"].as_str().unwrap_or("").to_string()),
            (_, Some(r)) => r.remote.to_string(),
            _ => String::new(),
        }
    }

    /// One line for people (syslog MSG, email subject).
    pub fn summary(&self) -> String {
        match (&self.alert, &self.action) {
            (Some(a), _) => format!(
                "{} {} alert: {} (score {})",
                self.severity,
                a["kind"].as_str().unwrap_or(""),
                a["detail"].as_str().unwrap_or(""),
                a["score"]
            ),
            (_, Some(r)) => format!(
                "{} {} {}: {} ({} alert #{})",
                r.action, r.remote, r.result, r.detail, r.alert_kind, r.alert_id
            ),
            _ => String::new(),
        }
    }
}

/// The forensic log: JSON lines appended to `path`; past `max_bytes` it becomes `path.1`
/// (`path.1` becomes `path.2`, ... up to `keep`, the oldest removed).
pub struct EventLog {
    path: PathBuf,
    max_bytes: u64,
    keep: usize,
    file: Option<File>,
    size: u64,
    last_error: Option<String>,
}

impl EventLog {
    pub fn open(path: &Path, max_bytes: u64, keep: usize) -> Result<Self> {
        if let Some(dir) = path.parent() {
            crate::files::private_dir(dir).with_context(|| {
                format!("creating the directory of the event log {}", path.display())
            })?;
        }
        let file = crate::files::append(path)
            .with_context(|| format!("opening the event log {}", path.display()))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self {
            path: path.to_path_buf(),
            max_bytes,
            keep,
            file: Some(file),
            size,
            last_error: None,
        })
    }

    fn rotated(path: &Path, i: usize) -> PathBuf {
        let mut s = path.as_os_str().to_owned();
        s.push(format!(".{i}"));
        PathBuf::from(s)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let mode = crate::files::mode_of(&self.path);
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(Self::rotated(&self.path, self.keep));
            for i in (1..self.keep).rev() {
                let from = Self::rotated(&self.path, i);
                if from.exists() {
                    std::fs::rename(&from, Self::rotated(&self.path, i + 1))?;
                }
            }
            std::fs::rename(&self.path, Self::rotated(&self.path, 1))?;
        }
        // The new file keeps the mode of the one it follows.
        let file = crate::files::append(&self.path)?;
        if let Some(mode) = mode {
            file.set_permissions(mode)?;
        }
        self.file = Some(file);
        self.size = 0;
        Ok(())
    }

    /// Appends one event; a failure is returned (and logged once until it works again).
    pub fn append(&mut self, ev: &Event) -> Result<()> {
        let mut line = serde_json::to_vec(ev).expect("events serialize");
        line.push(b'\n');
        let r = (|| -> std::io::Result<()> {
            if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
                self.rotate()?;
            }
            if self.file.is_none() {
                self.file = Some(crate::files::append(&self.path)?);
            }
            let f = self.file.as_mut().expect("opened above");
            f.write_all(&line)?;
            self.size += line.len() as u64;
            Ok(())
        })();
        match r {
            Ok(()) => {
                if self.last_error.take().is_some() {
                    tracing::info!("event log {} is writable again", self.path.display());
                }
                Ok(())
            }
            Err(e) => {
                let msg = format!("writing the event log {}: {e}", self.path.display());
                if self.last_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!("{msg}");
                    self.last_error = Some(msg.clone());
                }
                self.file = None;
                Err(anyhow::anyhow!(msg))
            }
        }
    }

    /// The last `n` alerts in the log at `path` and its rotated files, oldest first, read from
    /// the newest file back until there are `n`; and how many lines of the files read were
    /// not events (a line cut short when the daemon was killed mid-write, an edit by hand),
    /// which are skipped.
    pub fn recent_alerts(path: &Path, keep: usize, n: usize) -> (Vec<Alert>, usize) {
        let mut files = Vec::new();
        let (mut found, mut bad) = (0, 0);
        for f in Self::files(path, keep).iter().rev() {
            if found >= n {
                break;
            }
            let Ok(text) = std::fs::read_to_string(f) else {
                bad += 1;
                continue;
            };
            let mut alerts = Vec::new();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                match serde_json::from_str::<Event>(line) {
                    Ok(Event { alert: Some(a), .. }) => match serde_json::from_value::<Alert>(a) {
                        Ok(a) => alerts.push(a),
                        Err(_) => bad += 1,
                    },
                    Ok(_) => {}
                    Err(_) => bad += 1,
                }
            }
            found += alerts.len();
            files.push(alerts);
        }
        let mut all: Vec<Alert> = files.into_iter().rev().flatten().collect();
        all.drain(..all.len().saturating_sub(n));
        (all, bad)
    }

    /// Removes every event older than `cutoff_ms` (unix milliseconds) from the log and its
    /// rotated files: a file whose events are all older goes, a file that starts before it
    /// is rewritten with the rest (atomically, in its own mode). Events are appended in time
    /// order, so the walk stops at the first file that starts at or after the cutoff. A line
    /// that is no event (cut short by a kill) goes with the event before it. Returns how
    /// many events were removed.
    pub fn expire(&mut self, cutoff_ms: u64) -> std::io::Result<usize> {
        let mut removed = 0;
        for f in Self::files(&self.path, self.keep) {
            let text = match std::fs::read_to_string(&f) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            // The byte offset of the first line at or after the cutoff.
            let mut keep_from = None;
            let mut old = 0;
            let mut at = 0;
            for line in text.split_inclusive('\n') {
                if let Ok(ev) = serde_json::from_str::<Event>(line.trim_end()) {
                    if ev.time_ms >= cutoff_ms {
                        keep_from = Some(at);
                        break;
                    }
                    old += 1;
                }
                at += line.len();
            }
            removed += old;
            let current = f == self.path;
            match keep_from {
                Some(0) => break,
                None => {
                    if current {
                        self.file = None;
                        self.size = 0;
                    }
                    std::fs::remove_file(&f)?;
                }
                Some(from) => {
                    let tmp = f.with_extension("expire.tmp");
                    let mut out = crate::files::create(&tmp)?;
                    if let Some(mode) = crate::files::mode_of(&f) {
                        out.set_permissions(mode)?;
                    }
                    out.write_all(&text.as_bytes()[from..])?;
                    out.sync_all()?;
                    if current {
                        self.file = None;
                        self.size = (text.len() - from) as u64;
                    }
                    std::fs::rename(&tmp, &f)?;
                    break;
                }
            }
        }
        Ok(removed)
    }

    /// The log files, oldest first: `path.keep` ... `path.1`, `path`.
    pub fn files(path: &Path, keep: usize) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = (1..=keep.max(16))
            .rev()
            .map(|i| Self::rotated(path, i))
            .filter(|p| p.exists())
            .collect();
        if path.exists() {
            v.push(path.to_path_buf());
        }
        v
    }
}

/// Why an event was not passed on to the sinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suppressed {
    /// The same key and severity went out within the dedup window.
    Duplicate,
    /// The key's hourly cap is reached.
    RateLimited,
    /// Below the sinks' minimum severity.
    BelowSeverity,
}

/// Deduplication and a rate limit per alert key (kind, subject). Pure: time is passed in.
#[derive(Debug)]
pub struct Gate {
    dedup: Duration,
    per_hour: usize,
    min: Level,
    /// key -> (severity, when) of the last one let through, and the hour's send times.
    seen: HashMap<(String, String), (Level, Instant, VecDeque<Instant>)>,
}

impl Gate {
    pub fn new(cfg: &AlertsConfig) -> Self {
        Self {
            dedup: cfg.dedup,
            per_hour: cfg.max_per_key_per_hour,
            min: cfg.min_severity,
            seen: HashMap::new(),
        }
    }

    pub fn admit(&mut self, ev: &Event, now: Instant) -> Result<(), Suppressed> {
        if ev.severity < self.min {
            return Err(Suppressed::BelowSeverity);
        }
        let hour = Duration::from_secs(3600);
        let key = (format!("{}:{}", ev.event, ev.kind()), ev.subject());
        let e = self
            .seen
            .entry(key)
            .or_insert_with(|| (ev.severity, now, VecDeque::new()));
        while e.2.front().is_some_and(|t| now.duration_since(*t) >= hour) {
            e.2.pop_front();
        }
        if !e.2.is_empty() && e.0 >= ev.severity && now.duration_since(e.1) < self.dedup {
            return Err(Suppressed::Duplicate);
        }
        if e.2.len() >= self.per_hour {
            return Err(Suppressed::RateLimited);
        }
        e.0 = ev.severity;
        e.1 = now;
        e.2.push_back(now);
        // Keys silent for an hour are forgotten.
        if self.seen.len() > 10_000 {
            self.seen
                .retain(|_, (_, t, _)| now.duration_since(*t) < hour);
        }
        Ok(())
    }
}

/// This host's name, for events and syslog.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(kind: &str, remote: &str, severity: Level) -> Alert {
        Alert {
            id: 1,
            time_ms: 1_700_000_000_000,
            kind: kind.into(),
            severity,
            remote: Some(remote.parse().unwrap()),
            score: 50,
            reasons: vec![],
            detail: format!("{remote}: something"),
        }
    }

    #[test]
    fn dedup_window_escalation_and_hourly_cap() {
        let cfg = AlertsConfig {
            dedup: Duration::from_secs(300),
            max_per_key_per_hour: 3,
            ..Default::default()
        };
        let mut g = Gate::new(&cfg);
        let t0 = Instant::now();
        let ev = |k: &str, r: &str, l: Level| Event::alert(&alert(k, r, l), "h");
        let med = ev("port_scan", "198.18.0.2", Level::Medium);
        assert_eq!(g.admit(&med, t0), Ok(()));
        // The same within 5 min: a duplicate. Another remote or kind: its own key.
        assert_eq!(
            g.admit(&med, t0 + Duration::from_secs(60)),
            Err(Suppressed::Duplicate)
        );
        assert!(
            g.admit(&ev("port_scan", "198.18.0.3", Level::Medium), t0)
                .is_ok()
        );
        assert!(
            g.admit(&ev("host_sweep", "198.18.0.2", Level::Medium), t0)
                .is_ok()
        );
        // An escalation goes out at once.
        let high = ev("port_scan", "198.18.0.2", Level::High);
        assert!(g.admit(&high, t0 + Duration::from_secs(61)).is_ok());
        // After the window, again; then the cap of 3 per hour holds.
        assert!(g.admit(&high, t0 + Duration::from_secs(400)).is_ok());
        assert_eq!(
            g.admit(&high, t0 + Duration::from_secs(800)),
            Err(Suppressed::RateLimited)
        );
        // An hour after the first, a slot is free again.
        assert!(g.admit(&high, t0 + Duration::from_secs(3601)).is_ok());
    }

    #[test]
    fn the_log_rotates_by_size_and_keeps_n_files() {
        let tmp = crate::test_support::TempDir::new("evlog");
        let dir = tmp.0.join("log");
        let path = dir.join("events.jsonl");
        let mut log = EventLog::open(&path, 4096, 2).unwrap();
        let ev = Event::alert(&alert("port_scan", "198.18.0.2", Level::High), "h");
        let one = serde_json::to_vec(&ev).unwrap().len() as u64 + 1;
        let n = 4096 / one * 4 + 1;
        for _ in 0..n {
            log.append(&ev).unwrap();
        }
        let files = EventLog::files(&path, 2);
        assert_eq!(
            files,
            vec![
                dir.join("events.jsonl.2"),
                dir.join("events.jsonl.1"),
                path.clone()
            ]
        );
        for f in &files {
            let text = std::fs::read_to_string(f).unwrap();
            assert!(
                text.len() as u64 <= 4096,
                "{} is {} bytes",
                f.display(),
                text.len()
            );
            for line in text.lines() {
                let back: Event = serde_json::from_str(line).unwrap();
                assert_eq!(back.kind(), "port_scan");
            }
        }

        // Owner-only (crate::files); a file after a rotation takes the mode of the one it
        // follows, which the operator may have opened to a log shipper's group.
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!((mode(&dir), mode(&path)), (0o700, 0o600));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let len = || std::fs::metadata(&path).unwrap().len();
        // Until the file shrinks: it rotated.
        let mut last = len();
        loop {
            log.append(&ev).unwrap();
            if len() < last {
                break;
            }
            last = len();
        }
        assert_eq!(
            (mode(&path), mode(&dir.join("events.jsonl.1"))),
            (0o640, 0o640)
        );
    }

    /// `expire` removes exactly the events before the cutoff: whole files that hold only
    /// older ones, and the older lines of the file that straddles it (rewritten in its own
    /// mode); the log takes events after it, also once every event was removed.
    #[test]
    fn events_past_the_retention_are_removed_file_by_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = crate::test_support::TempDir::new("expire");
        let path = tmp.0.join("events.jsonl");
        let mut log = EventLog::open(&path, 4096, 3).unwrap();
        let ev = |t: u64| {
            let a = Alert {
                time_ms: t,
                ..alert("port_scan", "198.18.0.2", Level::High)
            };
            Event::alert(&a, "h")
        };
        for i in 0..80 {
            log.append(&ev(1_000_000 + i * 1000)).unwrap();
        }
        let times = || -> Vec<u64> {
            EventLog::files(&path, 3)
                .iter()
                .flat_map(|f| {
                    std::fs::read_to_string(f)
                        .unwrap()
                        .lines()
                        .map(|l| serde_json::from_str::<Event>(l).unwrap().time_ms)
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let files = EventLog::files(&path, 3);
        assert_eq!(files.len(), 4, "{files:?}");
        for f in &files {
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o640)).unwrap();
        }
        let before = times();
        // Inside the second-oldest file: the oldest goes, the second is rewritten.
        let first_of = |f: &Path| {
            let text = std::fs::read_to_string(f).unwrap();
            serde_json::from_str::<Event>(text.lines().next().unwrap())
                .unwrap()
                .time_ms
        };
        let cutoff = first_of(&files[1]) + 2500;
        let old = before.iter().filter(|t| **t < cutoff).count();
        assert_eq!(log.expire(cutoff).unwrap(), old);
        let after = times();
        assert_eq!(after, before[old..]);
        assert_eq!(EventLog::files(&path, 3).len(), 3);
        assert_eq!(first_of(&EventLog::files(&path, 3)[0]), cutoff + 500);
        for f in EventLog::files(&path, 3) {
            let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o640, "{}", f.display());
        }
        // Nothing more to remove; the log goes on.
        assert_eq!(log.expire(cutoff).unwrap(), 0);
        log.append(&ev(2_000_000)).unwrap();
        assert_eq!(times().last(), Some(&2_000_000));
        // Everything old: every file goes, including the one being written; then a new one.
        assert_eq!(log.expire(3_000_000).unwrap(), after.len() + 1);
        assert!(EventLog::files(&path, 3).is_empty());
        log.append(&ev(3_000_001)).unwrap();
        assert_eq!(times(), [3_000_001]);
    }

    /// The last alerts come back from the log, across its rotation, oldest first; action
    /// events are not alerts, and a line cut short (a kill mid-write) is counted and skipped.
    #[test]
    fn recent_alerts_are_read_back_across_rotation() {
        let tmp = crate::test_support::TempDir::new("evback");
        let dir = tmp.0.join("log");
        let path = dir.join("events.jsonl");
        let mut log = EventLog::open(&path, 1 << 20, 3).unwrap();
        let numbered = |id: u64| Alert {
            id,
            ..alert("port_scan", "198.18.0.2", Level::High)
        };
        for id in 1..=3 {
            log.append(&Event::alert(&numbered(id), "h")).unwrap();
        }
        let action = ActionRecord {
            action: "ban".into(),
            remote: "198.18.0.2".parse().unwrap(),
            result: "done".into(),
            detail: String::new(),
            alert_id: 3,
            alert_kind: "port_scan".into(),
            ttl_seconds: Some(600),
        };
        log.append(&Event::action(action, Level::High, "h"))
            .unwrap();
        log.rotate().unwrap();
        for id in 4..=5 {
            log.append(&Event::alert(&numbered(id), "h")).unwrap();
        }
        drop(log);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"time_ms\":17000000").unwrap();
        drop(f);

        let ids = |(a, bad): (Vec<Alert>, usize)| (a.iter().map(|a| a.id).collect::<Vec<_>>(), bad);
        assert_eq!(
            ids(EventLog::recent_alerts(&path, 3, 4)),
            (vec![2, 3, 4, 5], 1)
        );
        assert_eq!(ids(EventLog::recent_alerts(&path, 3, 2)), (vec![4, 5], 1));
        assert_eq!(
            ids(EventLog::recent_alerts(&path, 3, 100)),
            (vec![1, 2, 3, 4, 5], 1)
        );
        let back = EventLog::recent_alerts(&path, 3, 1).0;
        assert_eq!(back[0].kind, "port_scan");
        assert_eq!(back[0].remote, Some("198.18.0.2".parse().unwrap()));
        assert_eq!(back[0].detail, "198.18.0.2: something");
        // No log yet: nothing, nothing skipped.
        assert_eq!(
            ids(EventLog::recent_alerts(&dir.join("none.jsonl"), 3, 10)),
            (vec![], 0)
        );
    }
}
