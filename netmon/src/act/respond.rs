//! Automatic response: the policy (`[[response.policy]]`) maps an alert's level and kind to
//! actions — ban the remote through the drop list with a TTL (kind `auto`, reason and audit
//! record), terminate its connections (sock_diag SOCK_DESTROY). Never acted on: addresses on
//! the response allow list or the drop list's allow entries, loopback and this host's own
//! addresses; at most `max_bans_per_minute` bans; in dry-run mode only what would have been
//! done is recorded. It all runs on the response thread ([`Pipeline`]), with the event log
//! and the sinks, so the drain loop only hands alerts over.

use std::{
    collections::VecDeque,
    net::IpAddr,
    sync::{
        Arc,
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    commands::{BanOptions, DropList},
    net::Net,
    notify::{ActionRecord, Event, EventLog, Gate},
    sinks::Sinks,
    state::{Kind, Rate, now_ms},
};
use crate::{
    api::Shared,
    classify::{
        Alert,
        config::{Action, ResponseConfig, ThreatConfig},
    },
    sockdiag::SockDiag,
};

/// One action the policy asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Planned {
    pub action: Action,
    /// For bans and rate limits.
    pub ttl: Duration,
    /// For rate limits.
    pub rate: Rate,
}

/// The actions the policy gives an alert, each once: a ban or limit gets the longest TTL of
/// the lines that ask for it, a limit the strictest rate of those in the first line's unit
/// (packets or bytes: a limit counts one of them).
pub fn plan(cfg: &ResponseConfig, alert: &Alert) -> Vec<Planned> {
    let mut out: Vec<Planned> = Vec::new();
    for p in &cfg.policy {
        let level_ok = p.level.is_none_or(|l| alert.severity >= l);
        let kind_ok = p.kinds.is_empty() || p.kinds.contains(&alert.kind);
        if !(level_ok && kind_ok) {
            continue;
        }
        for &a in &p.actions {
            match out.iter_mut().find(|x| x.action == a) {
                Some(x) => {
                    x.ttl = x.ttl.max(p.ban_ttl);
                    x.rate = stricter(x.rate, p.rate);
                }
                None => out.push(Planned {
                    action: a,
                    ttl: p.ban_ttl,
                    rate: p.rate,
                }),
            }
        }
    }
    out.sort();
    out
}

/// The stricter of two rates in one unit, each part the lesser; of two in different units,
/// the first.
fn stricter(a: Rate, b: Rate) -> Rate {
    match (a, b) {
        (Rate::Packets { pps, burst }, Rate::Packets { pps: p, burst: b }) => Rate::Packets {
            pps: pps.min(p),
            burst: burst.min(b),
        },
        (
            Rate::Bytes {
                bytes_per_sec,
                burst_bytes,
            },
            Rate::Bytes {
                bytes_per_sec: r,
                burst_bytes: b,
            },
        ) => Rate::Bytes {
            bytes_per_sec: bytes_per_sec.min(r),
            burst_bytes: burst_bytes.min(b),
        },
        (a, _) => a,
    }
}

/// At most `max` bans in any 60 s.
#[derive(Debug)]
pub struct BanBudget {
    max: usize,
    used: VecDeque<Instant>,
}

impl BanBudget {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            used: VecDeque::new(),
        }
    }

    pub fn take(&mut self, now: Instant) -> bool {
        while self
            .used
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            self.used.pop_front();
        }
        if self.used.len() >= self.max {
            return false;
        }
        self.used.push_back(now);
        true
    }
}

/// Carries out the policy.
pub struct Responder {
    cfg: ResponseConfig,
    droplist: DropList,
    budget: BanBudget,
    diag: Option<SockDiag>,
}

impl Responder {
    pub fn new(cfg: ResponseConfig, droplist: DropList) -> Self {
        Self {
            budget: BanBudget::new(cfg.max_bans_per_minute),
            cfg,
            droplist,
            diag: None,
        }
    }

    /// Why `ip` must not be acted on, if it must not.
    fn protected(&self, ip: IpAddr) -> Option<String> {
        if let Some(n) = self.cfg.allow.iter().find(|n| n.contains(ip)) {
            return Some(format!("{ip} is on the response allow list ({n})"));
        }
        match self.droplist.load_state() {
            Ok(state) => {
                if let Some(a) = state.allows.iter().find(|a| a.net.contains(ip)) {
                    return Some(format!("{ip} is on the drop list's allow list ({})", a.net));
                }
            }
            // Without the drop list we cannot tell: do nothing rather than something wrong.
            Err(e) => return Some(format!("the drop list cannot be read ({e:#})")),
        }
        super::net::danger(&Net::host(ip), &super::net::own_addresses())
    }

    /// What the policy does about `alert`, one record per action.
    pub fn respond(&mut self, alert: &Alert) -> Vec<ActionRecord> {
        let actions = plan(&self.cfg, alert);
        let Some(remote) = alert.remote else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for Planned { action, ttl, rate } in actions {
            let rec = |result: &str, detail: String| ActionRecord {
                action: action.as_str().into(),
                remote,
                result: result.into(),
                detail,
                alert_id: alert.id,
                alert_kind: alert.kind.clone(),
                ttl_seconds: (action != Action::Kill).then_some(ttl.as_secs()),
            };
            if let Some(why) = self.protected(remote) {
                out.push(rec("allowed", format!("not acted on: {why}")));
                continue;
            }
            let r = match action {
                Action::Ban => self.ban(remote, ttl, alert),
                Action::Kill => self.kill(remote),
                Action::RateLimit => self.limit(remote, ttl, rate, alert),
            };
            out.push(match r {
                Outcome::Done(d) => rec("done", d),
                Outcome::DryRun(d) => rec("dry_run", d),
                Outcome::Skipped(d) => rec("skipped", d),
                Outcome::RateLimited(d) => rec("rate_limited", d),
                Outcome::Failed(d) => rec("failed", d),
            });
        }
        out
    }

    fn ban(&mut self, remote: IpAddr, ttl: Duration, alert: &Alert) -> Outcome {
        let now = now_ms();
        match self.droplist.load_state() {
            Ok(state) => {
                if let Some(b) = state.live_bans(now).find(|b| b.net.contains(remote)) {
                    return Outcome::Skipped(format!("already banned by {} ({:?})", b.net, b.kind));
                }
            }
            Err(e) => return Outcome::Failed(format!("reading the drop list: {e:#}")),
        }
        if self.cfg.dry_run {
            return Outcome::DryRun(format!(
                "would ban {remote} for {} s (dry run)",
                ttl.as_secs()
            ));
        }
        if !self.budget.take(Instant::now()) {
            return Outcome::RateLimited(format!(
                "not banned: {} automatic bans in the last minute is the limit \
                 (response.max_bans_per_minute)",
                self.cfg.max_bans_per_minute
            ));
        }
        match self
            .droplist
            .ban(Net::host(remote), &auto_options(ttl, alert))
        {
            Ok(e) => Outcome::Done(format!(
                "banned {} until {}",
                e.net,
                e.expires_ms
                    .map(crate::act::state::rfc3339)
                    .unwrap_or_default()
            )),
            Err(e) => Outcome::Failed(format!("{e:#}")),
        }
    }

    fn limit(&mut self, remote: IpAddr, ttl: Duration, rate: Rate, alert: &Alert) -> Outcome {
        let now = now_ms();
        match self.droplist.load_state() {
            Ok(state) => {
                if let Some(b) = state.live_bans(now).find(|b| b.net.contains(remote)) {
                    return Outcome::Skipped(format!("banned already by {}", b.net));
                }
                if let Some(l) = state.live_limits(now).find(|l| l.net.contains(remote)) {
                    return Outcome::Skipped(format!("rate limited already ({})", l.rate));
                }
            }
            Err(e) => return Outcome::Failed(format!("reading the drop list: {e:#}")),
        }
        if self.cfg.dry_run {
            return Outcome::DryRun(format!(
                "would limit {remote} to {rate} for {} s (dry run)",
                ttl.as_secs()
            ));
        }
        let opts = auto_options(ttl, alert);
        match self.droplist.limit(Net::host(remote), rate, &opts) {
            Ok(_) => Outcome::Done(format!(
                "limited {remote} to {rate} for {} s",
                ttl.as_secs()
            )),
            Err(e) => Outcome::Failed(format!("{e:#}")),
        }
    }

    fn kill(&mut self, remote: IpAddr) -> Outcome {
        if self.cfg.dry_run {
            return Outcome::DryRun(format!(
                "would terminate the connections with {remote} (dry run)"
            ));
        }
        if self.diag.is_none() {
            match SockDiag::new() {
                Ok(d) => self.diag = Some(d),
                Err(e) => return Outcome::Failed(format!("{e:#}")),
            }
        }
        let diag = self.diag.as_mut().expect("opened above");
        match diag.kill(remote, None, None) {
            Ok(v) if v.is_empty() => Outcome::Skipped(format!("no open connection with {remote}")),
            Ok(v) => {
                let rec = super::state::AuditRecord::new(
                    "kill",
                    remote,
                    &format!("auto: terminated {} connections", v.len()),
                );
                let _ = self.droplist.audit(&rec);
                Outcome::Done(format!("terminated {} connections with {remote}", v.len()))
            }
            Err(e) => Outcome::Failed(format!("{e:#}")),
        }
    }
}

/// Drop-list options of an automatic entry: kind `auto`, the TTL, the alert as the reason;
/// never forced (loopback and this host's addresses stay refused).
fn auto_options(ttl: Duration, alert: &Alert) -> BanOptions {
    BanOptions {
        ttl: Some(ttl),
        reason: format!(
            "auto: {} alert #{} ({}, score {}): {}",
            alert.kind, alert.id, alert.severity, alert.score, alert.detail
        ),
        force: false,
        kind: Kind::Auto,
    }
}

enum Outcome {
    Done(String),
    DryRun(String),
    Skipped(String),
    RateLimited(String),
    Failed(String),
}

/// Alerts the response thread keeps queued before new ones are dropped (counted).
const QUEUE: usize = 1024;

/// How often the response thread removes the events past `alerts.log_max_age`.
const EXPIRY_EVERY: Duration = Duration::from_secs(600);

/// The response thread: for each alert, the event log, the policy's actions, and the sinks
/// (through the dedup/rate-limit gate).
pub struct Pipeline {
    responder: Responder,
    log: Option<EventLog>,
    /// `alerts.log_max_age`: events older are removed, at the thread's start and every
    /// `EXPIRY_EVERY`.
    log_max_age: Option<Duration>,
    gate: Gate,
    sinks: Sinks,
    host: String,
    shared: Arc<Shared>,
}

impl Pipeline {
    /// Opens the event log and starts the sinks (errors: the log cannot be opened).
    pub fn new(
        cfg: &ThreatConfig,
        droplist: DropList,
        log_path: &std::path::Path,
        shared: Arc<Shared>,
    ) -> Result<Self> {
        let host = super::notify::hostname();
        let log = EventLog::open(log_path, cfg.alerts.log_max_bytes, cfg.alerts.log_keep)?;
        let m = &shared.metrics;
        m.automatic_bans.inc_by(0);
        for a in ["ban", "kill", "ratelimit"] {
            for r in [
                "done",
                "dry_run",
                "allowed",
                "rate_limited",
                "skipped",
                "failed",
            ] {
                m.response_actions.with_label_values(&[a, r]).inc_by(0);
            }
        }
        for r in ["sent", "failed"] {
            m.notifications.with_label_values(&["log", r]).inc_by(0);
        }
        m.notifications
            .with_label_values(&["gate", "suppressed"])
            .inc_by(0);
        m.notifications
            .with_label_values(&["pipeline", "dropped"])
            .inc_by(0);
        Ok(Self {
            responder: Responder::new(cfg.response.clone(), droplist),
            log: Some(log),
            log_max_age: cfg.alerts.log_max_age,
            gate: Gate::new(&cfg.alerts),
            sinks: Sinks::start(&cfg.alerts, &host, shared.clone())?,
            host,
            shared,
        })
    }

    pub fn sink_names(&self) -> Vec<&'static str> {
        self.sinks.names()
    }

    fn emit(&mut self, ev: &Event) {
        let m = &self.shared.metrics;
        if let Some(log) = &mut self.log {
            let r = if log.append(ev).is_ok() {
                "sent"
            } else {
                "failed"
            };
            m.notifications.with_label_values(&["log", r]).inc();
        }
        match self.gate.admit(ev, Instant::now()) {
            Ok(()) => self.sinks.send(ev, m),
            Err(_) => m
                .notifications
                .with_label_values(&["gate", "suppressed"])
                .inc(),
        }
    }

    /// Removes the event log's events older than `log_max_age`, if set (logged; a failure is
    /// a warning, and the next round tries again).
    fn expire_old_events(&mut self) {
        let (Some(age), Some(log)) = (self.log_max_age, self.log.as_mut()) else {
            return;
        };
        let cutoff = crate::act::state::now_ms().saturating_sub(age.as_millis() as u64);
        match log.expire(cutoff) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                "event log: {n} events older than {} removed (alerts.log_max_age)",
                crate::act::state::rfc3339(cutoff)
            ),
            Err(e) => tracing::warn!("event log: removing the events past log_max_age: {e}"),
        }
    }

    pub fn handle(&mut self, alert: &Alert) {
        self.emit(&Event::alert(alert, &self.host));
        for rec in self.responder.respond(alert) {
            let m = &self.shared.metrics;
            m.response_actions
                .with_label_values(&[rec.action.as_str(), rec.result.as_str()])
                .inc();
            if rec.action == "ban" && rec.result == "done" {
                m.automatic_bans.inc();
            }
            let line = format!(
                "response: {} {} {}: {}",
                rec.action, rec.remote, rec.result, rec.detail
            );
            if rec.result == "failed" {
                tracing::warn!("{line}");
            } else {
                tracing::info!("{line}");
            }
            self.emit(&Event::action(rec, alert.severity, &self.host));
        }
    }

    /// Runs on a thread of its own until the sender is dropped; returns the sender. The
    /// thread first joins `after` (the response thread this one replaces, its queue closed),
    /// so alerts are handled in the order they were raised; what arrives meanwhile waits in
    /// this one's queue.
    pub fn spawn(
        mut self,
        after: Option<std::thread::JoinHandle<()>>,
    ) -> std::io::Result<(PipelineTx, std::thread::JoinHandle<()>)> {
        let (tx, rx): (SyncSender<Alert>, Receiver<Alert>) = std::sync::mpsc::sync_channel(QUEUE);
        let shared = self.shared.clone();
        let h = std::thread::Builder::new()
            .name("netmon-response".into())
            .spawn(move || {
                if let Some(h) = after
                    && h.join().is_err()
                {
                    tracing::warn!("the response thread replaced by a reload panicked");
                }
                let mut expired_at = None;
                loop {
                    if expired_at.is_none_or(|t: Instant| t.elapsed() >= EXPIRY_EVERY) {
                        self.expire_old_events();
                        expired_at = Some(Instant::now());
                    }
                    match rx.recv_timeout(EXPIRY_EVERY) {
                        Ok(a) => self.handle(&a),
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                self.sinks.stop(Duration::from_secs(3));
            })?;
        Ok((PipelineTx { tx, shared }, h))
    }
}

/// The drain loop's end of the response thread's queue.
pub struct PipelineTx {
    tx: SyncSender<Alert>,
    shared: Arc<Shared>,
}

impl PipelineTx {
    pub fn send(&self, a: Alert) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(a) {
            self.shared
                .metrics
                .notifications
                .with_label_values(&["pipeline", "dropped"])
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{config::PolicyRule, score::Level};

    fn alert(kind: &str, level: Level) -> Alert {
        Alert {
            id: 3,
            time_ms: 0,
            kind: kind.into(),
            severity: level,
            remote: Some("198.18.0.2".parse().unwrap()),
            score: 50,
            reasons: vec![],
            detail: String::new(),
        }
    }

    #[test]
    fn policy_lines_match_on_level_and_kind() {
        let cfg = ResponseConfig {
            policy: vec![
                PolicyRule {
                    level: Some(Level::High),
                    kinds: vec![],
                    actions: vec![Action::Ban, Action::RateLimit],
                    ban_ttl: Duration::from_secs(600),
                    rate: Rate::Packets { pps: 10, burst: 20 },
                },
                PolicyRule {
                    level: None,
                    kinds: vec!["port_scan".into()],
                    actions: vec![Action::Ban, Action::Kill, Action::RateLimit],
                    ban_ttl: Duration::from_secs(3600),
                    rate: Rate::Packets { pps: 50, burst: 5 },
                },
                PolicyRule {
                    level: None,
                    kinds: vec!["host_sweep".into(), "syn_flood".into()],
                    actions: vec![Action::RateLimit],
                    ban_ttl: Duration::from_secs(60),
                    rate: Rate::Bytes {
                        bytes_per_sec: 125_000,
                        burst_bytes: 20_000,
                    },
                },
                PolicyRule {
                    level: None,
                    kinds: vec!["syn_flood".into()],
                    actions: vec![Action::RateLimit],
                    ban_ttl: Duration::from_secs(60),
                    rate: Rate::Bytes {
                        bytes_per_sec: 250_000,
                        burst_bytes: 10_000,
                    },
                },
            ],
            ..Default::default()
        };
        assert!(plan(&cfg, &alert("login_bruteforce", Level::Medium)).is_empty());
        let p = |a, ttl, pps, burst| Planned {
            action: a,
            ttl: Duration::from_secs(ttl),
            rate: Rate::Packets { pps, burst },
        };
        assert_eq!(
            plan(&cfg, &alert("login_bruteforce", Level::High)),
            vec![
                p(Action::Ban, 600, 10, 20),
                p(Action::RateLimit, 600, 10, 20)
            ]
        );
        // A bandwidth line alone, and two: the lesser rate and the lesser burst.
        let bw = |ttl, bytes_per_sec, burst_bytes| Planned {
            action: Action::RateLimit,
            ttl: Duration::from_secs(ttl),
            rate: Rate::Bytes {
                bytes_per_sec,
                burst_bytes,
            },
        };
        assert_eq!(
            plan(&cfg, &alert("host_sweep", Level::Medium)),
            vec![bw(60, 125_000, 20_000)]
        );
        assert_eq!(
            plan(&cfg, &alert("syn_flood", Level::Medium)),
            vec![bw(60, 125_000, 10_000)]
        );
        // Packets first, then bytes: the packet rate stands (a limit counts one unit).
        assert_eq!(
            plan(&cfg, &alert("host_sweep", Level::High)),
            vec![
                p(Action::Ban, 600, 10, 20),
                p(Action::RateLimit, 600, 10, 20)
            ]
        );
        // Both lines: each action once, the longer TTL, the strictest rate.
        assert_eq!(
            plan(&cfg, &alert("port_scan", Level::High)),
            vec![
                p(Action::Ban, 3600, 10, 5),
                p(Action::Kill, 3600, 50, 5),
                p(Action::RateLimit, 3600, 10, 5)
            ]
        );
    }

    #[test]
    fn the_ban_budget_is_per_minute() {
        let mut b = BanBudget::new(2);
        let t = Instant::now();
        assert!(b.take(t) && b.take(t + Duration::from_secs(1)));
        assert!(!b.take(t + Duration::from_secs(59)));
        assert!(b.take(t + Duration::from_secs(60)));
        assert!(!b.take(t + Duration::from_secs(60)));
    }
}
