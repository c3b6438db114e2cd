//! What a running daemon can change without a restart (`SIGHUP`): the threat side, whose
//! inputs (GeoIP databases, reputation feeds, event log, sinks) and threads (the feed
//! thread, the response thread) [`ThreatSide`] owns and replaces as a whole, and the
//! settings that only a restart applies ([`restart_only_changes`]).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock, atomic::AtomicBool},
    thread::JoinHandle,
};

use anyhow::{Context as _, Result};
use tracing::warn;

use crate::{
    act::{
        commands::DropList,
        respond::{Pipeline, PipelineTx},
    },
    api::{Shared, ThreatStatus},
    classify::{
        config::ThreatConfig,
        feeds::{FeedRefresher, Feeds},
        geo::Geo,
    },
    config::RunConfig,
};

/// The threat side's inputs, opened and loaded, before any thread runs: what can fail
/// about a threat configuration has failed or not once this exists.
pub struct Opened {
    pub cfg: ThreatConfig,
    pub event_log: PathBuf,
    pub geo: Arc<Geo>,
    /// The feed set as loaded: shared by the classifier and the feed thread's slot.
    pub feeds: Arc<Feeds>,
    refresher: FeedRefresher,
}

impl Opened {
    /// Opens the GeoIP databases and loads every feed of `cfg` (a file that cannot be read
    /// or parsed is an error that names it; see `FeedRefresher::start`).
    pub fn open(cfg: &ThreatConfig, state_dir: &Path) -> Result<Self> {
        let geo = open_geo(cfg)?;
        let (refresher, feeds) = load_feeds(cfg, state_dir)?;
        Ok(Self {
            cfg: cfg.clone(),
            event_log: event_log_path(cfg, state_dir),
            geo,
            feeds: Arc::new(feeds),
            refresher,
        })
    }

    /// The response thread's work for this configuration.
    pub fn pipeline(
        &self,
        pin_dir: &Path,
        state_dir: &Path,
        shared: &Arc<Shared>,
    ) -> Result<Pipeline> {
        pipeline(&self.cfg, &self.event_log, pin_dir, state_dir, shared)
    }
}

fn open_geo(cfg: &ThreatConfig) -> Result<Arc<Geo>> {
    Ok(Arc::new(Geo::open(&cfg.geoip).context("--geoip / geoip")?))
}

fn load_feeds(cfg: &ThreatConfig, state_dir: &Path) -> Result<(FeedRefresher, Feeds)> {
    FeedRefresher::start(cfg.feeds.clone(), Some(state_dir.join("feeds")))
        .context("loading the reputation feeds")
}

fn event_log_path(cfg: &ThreatConfig, state_dir: &Path) -> PathBuf {
    cfg.alerts
        .log
        .clone()
        .unwrap_or_else(|| state_dir.join("events.jsonl"))
}

/// The response thread's work: the event log opened, the sinks started (errors: the log
/// cannot be opened, a sink cannot start).
fn pipeline(
    cfg: &ThreatConfig,
    event_log: &Path,
    pin_dir: &Path,
    state_dir: &Path,
    shared: &Arc<Shared>,
) -> Result<Pipeline> {
    Pipeline::new(
        cfg,
        DropList::new(pin_dir, state_dir),
        event_log,
        shared.clone(),
    )
}

/// The running threat side: the configuration in force, the feed set the feed thread
/// publishes, and the response thread's queue.
pub struct ThreatSide {
    pub cfg: ThreatConfig,
    pub event_log: PathBuf,
    pub geo: Arc<Geo>,
    /// The feed set the feed thread publishes.
    pub feeds: Arc<RwLock<Arc<Feeds>>>,
    feed_thread: Option<(JoinHandle<()>, Arc<AtomicBool>)>,
    /// The response thread (event log, policy, sinks).
    pub pipeline: Option<PipelineTx>,
    pipeline_thread: Option<JoinHandle<()>>,
    sink_names: Vec<&'static str>,
}

impl ThreatSide {
    /// Starts the feed thread (when there are feeds) and the response thread (`pipeline`;
    /// when it could not be made, alerts still reach the log, the API and the metrics, and
    /// responses and sinks wait for a reload or a restart).
    pub fn start(opened: Opened, pipeline: Result<Pipeline>, shared: &Shared) -> Self {
        let mut side = Self {
            cfg: opened.cfg,
            event_log: opened.event_log,
            geo: opened.geo,
            feeds: Arc::new(RwLock::new(opened.feeds)),
            feed_thread: None,
            pipeline: None,
            pipeline_thread: None,
            sink_names: Vec::new(),
        };
        side.start_feeds(opened.refresher, shared);
        side.start_pipeline(pipeline);
        side
    }

    fn start_feeds(&mut self, refresher: FeedRefresher, shared: &Shared) {
        *shared.feed_status.write().expect("lock not poisoned") = refresher.status.clone();
        if self.cfg.feeds.is_empty() {
            return;
        }
        let stop = Arc::new(AtomicBool::new(false));
        match refresher.spawn(self.feeds.clone(), shared.feed_status.clone(), stop.clone()) {
            Ok(h) => self.feed_thread = Some((h, stop)),
            Err(e) => warn!("cannot start the feed thread, feeds will not refresh: {e}"),
        }
    }

    fn start_pipeline(&mut self, pipeline: Result<Pipeline>) {
        let started = pipeline.and_then(|p| {
            let names = p.sink_names();
            let (tx, h) = p.spawn()?;
            Ok((tx, h, names))
        });
        match started {
            Ok((tx, h, names)) => {
                self.pipeline = Some(tx);
                self.pipeline_thread = Some(h);
                self.sink_names = names;
            }
            Err(e) => {
                self.sink_names.clear();
                warn!("the response thread is not running (no event log, actions or sinks): {e:#}");
            }
        }
    }

    /// Ends the response thread once it has handled what is queued.
    fn stop_pipeline(&mut self) {
        self.pipeline = None;
        if let Some(h) = self.pipeline_thread.take()
            && h.join().is_err()
        {
            warn!("the response thread panicked");
        }
    }

    fn stop_feeds(&mut self) {
        if let Some((h, stop)) = self.feed_thread.take() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if h.join().is_err() {
                warn!("the feed thread panicked");
            }
        }
    }

    /// Ends both threads (the response thread after the alerts queued).
    pub fn stop(&mut self) {
        self.stop_pipeline();
        self.stop_feeds();
    }

    /// Reads the GeoIP databases again (a reload with the threat configuration unchanged:
    /// the files may have been updated in place, as a monthly database is); a database that
    /// does not load is an error and the ones in use stay.
    pub fn reopen_geo(&mut self, shared: &Shared) -> Result<()> {
        if self.cfg.geoip.is_empty() {
            return Ok(());
        }
        self.geo = open_geo(&self.cfg)?;
        shared
            .classifier
            .write()
            .expect("lock not poisoned")
            .set_geo(self.geo.clone());
        Ok(())
    }

    /// Puts `new` in force. What it names is opened first (the GeoIP databases, read again
    /// whether or not their paths changed; the feeds when they changed; the event log, the
    /// sinks), so a configuration that does not load is an error that leaves the running
    /// one as it was. Then the response thread finishes its queue and a new one starts;
    /// changed feeds are refreshed by a new feed thread; and the classifier scores with the
    /// new weights, rules and thresholds from the next drain (its detections start over when
    /// the detection settings changed).
    pub fn replace(
        &mut self,
        new: &ThreatConfig,
        pin_dir: &Path,
        state_dir: &Path,
        shared: &Arc<Shared>,
    ) -> Result<()> {
        let geo = open_geo(new)?;
        let feeds = (new.feeds != self.cfg.feeds)
            .then(|| load_feeds(new, state_dir))
            .transpose()?;
        let event_log = event_log_path(new, state_dir);
        let pipeline = pipeline(new, &event_log, pin_dir, state_dir, shared)
            .context("opening the event log and the alert sinks")?;
        // Nothing below fails: the new configuration is in force from here on.
        self.stop_pipeline();
        self.cfg = new.clone();
        self.event_log = event_log;
        self.geo = geo.clone();
        if let Some((refresher, mut feeds)) = feeds {
            self.stop_feeds();
            feeds.generation = self.feeds.read().expect("lock not poisoned").generation + 1;
            *self.feeds.write().expect("lock not poisoned") = Arc::new(feeds);
            let kept: Vec<&str> = self.cfg.feeds.iter().map(|f| f.name.as_str()).collect();
            for old in shared.feed_status.read().expect("lock not poisoned").iter() {
                if !kept.contains(&old.name.as_str()) {
                    let _ = shared
                        .metrics
                        .feed_entries
                        .remove_label_values(&[&old.name]);
                    let _ = shared
                        .metrics
                        .feed_failures
                        .remove_label_values(&[&old.name]);
                }
            }
            self.start_feeds(refresher, shared);
        }
        {
            let mut c = shared.classifier.write().expect("lock not poisoned");
            c.reconfigure(self.cfg.clone());
            c.set_geo(geo);
            c.set_feeds(self.feeds.read().expect("lock not poisoned").clone());
        }
        self.start_pipeline(Ok(pipeline));
        Ok(())
    }

    /// The threat side's part of `/api/status` (its `feeds` are the feed thread's, filled
    /// in by every drain).
    pub fn status(&self) -> ThreatStatus {
        ThreatStatus {
            feeds: Vec::new(),
            geoip: self
                .geo
                .dbs
                .iter()
                .map(|d| format!("{} ({})", d.path, d.database_type()))
                .collect(),
            sinks: self.sink_names.iter().map(|s| s.to_string()).collect(),
            event_log: self.event_log.display().to_string(),
            dry_run: self.cfg.response.dry_run,
            policy_lines: self.cfg.response.policy.len(),
        }
    }
}

/// The settings that differ between `running` and `new` and take effect only at the next
/// start (they shape what is attached, where, and the maps' sizes), by their names in the
/// configuration file.
pub fn restart_only_changes(running: &RunConfig, new: &RunConfig) -> Vec<&'static str> {
    fn tls(c: &RunConfig) -> Option<(&Path, &Path)> {
        c.tls.as_ref().map(|t| t.paths())
    }
    [
        ("interfaces", running.interfaces != new.interfaces),
        ("listen", running.listen != new.listen),
        (
            "flow_map_size/socket_map_size/port_map_size",
            running.sizes != new.sizes,
        ),
        ("run_dir", running.run_dir != new.run_dir),
        ("pin_dir", running.pin_dir != new.pin_dir),
        ("state_dir", running.state_dir != new.state_dir),
        ("tc_attach", running.tc_mode != new.tc_mode),
        ("udp_hook", running.udp_hook != new.udp_hook),
        ("flow_table", running.flow_table != new.flow_table),
        ("tls_cert/tls_key", tls(running) != tls(new)),
        (
            "process_top_k/process_series_ttl",
            running.process_series != new.process_series,
        ),
    ]
    .into_iter()
    .filter_map(|(name, changed)| changed.then_some(name))
    .collect()
}
