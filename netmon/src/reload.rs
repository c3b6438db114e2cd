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

/// A reload made ready: the configuration as its files now say, and what its threat side
/// needs opened. Made on a thread of its own ([`Prepared::open`]: reading GeoIP databases,
/// fetching feeds over the network, starting sinks take time the drain loop does not
/// have), then put in force by the drain loop at once (`ThreatSide::apply`).
pub struct Prepared {
    pub new: RunConfig,
    pub threat: NextThreat,
}

/// The threat side of a [`Prepared`] reload.
pub enum NextThreat {
    /// The threat configuration is unchanged: its GeoIP databases read again (they may have
    /// been updated in place, as a monthly database is; `None`: it has none).
    Geo(Option<Arc<Geo>>),
    /// It changed: the GeoIP databases opened (read again whether or not their paths
    /// changed), the feeds loaded when they changed, the event log and the sinks opened.
    Replace {
        geo: Arc<Geo>,
        feeds: Option<(FeedRefresher, Feeds)>,
        event_log: PathBuf,
        pipeline: Box<Pipeline>,
    },
}

impl Prepared {
    /// Opens what `new` needs beside `running` (the configuration in force); an error (a
    /// file that does not load, named) leaves nothing to put in force, so the running
    /// configuration stays as it was. The pin and state directories are `running`'s: those
    /// change only with a restart.
    pub fn open(running: &RunConfig, mut new: RunConfig, shared: &Arc<Shared>) -> Result<Self> {
        // The API stays where it was bound (`listen` changes with a restart).
        new.threat.api_port = running.threat.api_port;
        let t = &new.threat;
        let threat = if *t == running.threat {
            NextThreat::Geo(if t.geoip.is_empty() {
                None
            } else {
                Some(open_geo(t)?)
            })
        } else {
            let geo = open_geo(t)?;
            let feeds = (t.feeds != running.threat.feeds)
                .then(|| load_feeds(t, &running.state_dir))
                .transpose()?;
            let event_log = event_log_path(t, &running.state_dir);
            let pipeline = pipeline(t, &event_log, &running.pin_dir, &running.state_dir, shared)
                .context("opening the event log and the alert sinks")?;
            NextThreat::Replace {
                geo,
                feeds,
                event_log,
                pipeline: Box::new(pipeline),
            }
        };
        Ok(Self { new, threat })
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
    /// Feed threads told to stop by a reload that started none (joined at `stop`).
    retired: Vec<JoinHandle<()>>,
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
            retired: Vec::new(),
            pipeline: None,
            pipeline_thread: None,
            sink_names: Vec::new(),
        };
        side.start_feeds(opened.refresher, shared, None);
        side.start_pipeline(pipeline, None);
        side
    }

    /// Starts the feed thread for `self.cfg`'s feeds; `after`, the thread it replaces
    /// (told to stop), is joined by the new one before its first refresh, so the two never
    /// fetch at once. With no feeds there is no new thread, and `after` is kept to be joined
    /// at [`stop`](Self::stop).
    fn start_feeds(
        &mut self,
        refresher: FeedRefresher,
        shared: &Shared,
        after: Option<JoinHandle<()>>,
    ) {
        *shared.feed_status.write().expect("lock not poisoned") = refresher.status.clone();
        if self.cfg.feeds.is_empty() {
            self.retired.extend(after);
            return;
        }
        let stop = Arc::new(AtomicBool::new(false));
        match refresher.spawn(
            self.feeds.clone(),
            shared.feed_status.clone(),
            stop.clone(),
            after,
        ) {
            Ok(h) => self.feed_thread = Some((h, stop)),
            Err(e) => warn!("cannot start the feed thread, feeds will not refresh: {e}"),
        }
    }

    /// Starts the response thread; `after`, the one it replaces (its queue closed), is
    /// joined by the new one before it handles an alert, so the alerts reach the event log
    /// and the sinks in the order they were raised.
    fn start_pipeline(&mut self, pipeline: Result<Pipeline>, after: Option<JoinHandle<()>>) {
        let started = pipeline.and_then(|p| {
            let names = p.sink_names();
            let (tx, h) = p.spawn(after)?;
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

    /// Closes the response thread's queue; the thread ends once it has handled what is
    /// queued (the caller joins it, or hands it to the next one).
    fn close_pipeline(&mut self) -> Option<JoinHandle<()>> {
        self.pipeline = None;
        self.pipeline_thread.take()
    }

    /// Tells the feed thread to stop (it does at its next check, and publishes nothing
    /// more: see `FeedRefresher::spawn`).
    fn close_feeds(&mut self) -> Option<JoinHandle<()>> {
        let (h, stop) = self.feed_thread.take()?;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        Some(h)
    }

    /// Ends every thread of the threat side: the response thread after the alerts queued,
    /// the feed thread after the fetch under way, and those they replaced.
    pub fn stop(&mut self) {
        let threads = [
            ("response", self.close_pipeline()),
            ("feed", self.close_feeds()),
        ];
        let retired = std::mem::take(&mut self.retired).into_iter();
        for (what, h) in threads
            .into_iter()
            .chain(retired.map(|h| ("feed", Some(h))))
        {
            if let Some(h) = h
                && h.join().is_err()
            {
                warn!("the {what} thread panicked");
            }
        }
    }

    /// Puts a prepared threat side in force. Nothing here fails or waits: what could fail
    /// was opened by [`Prepared::open`], and the threads replaced finish on their own (each
    /// new one joins the one before it). The classifier scores with the new weights, rules,
    /// thresholds and databases from the next drain (its detections start over when the
    /// detection settings changed); changed feeds are refreshed by a new feed thread.
    pub fn apply(&mut self, cfg: &ThreatConfig, next: NextThreat, shared: &Arc<Shared>) {
        self.retired.retain(|h| !h.is_finished());
        let (geo, feeds, event_log, pipeline) = match next {
            NextThreat::Geo(None) => return,
            NextThreat::Geo(Some(geo)) => {
                self.geo = geo.clone();
                shared
                    .classifier
                    .write()
                    .expect("lock not poisoned")
                    .set_geo(geo);
                return;
            }
            NextThreat::Replace {
                geo,
                feeds,
                event_log,
                pipeline,
            } => (geo, feeds, event_log, pipeline),
        };
        let before = self.close_pipeline();
        self.cfg = cfg.clone();
        self.event_log = event_log;
        self.geo = geo.clone();
        if let Some((refresher, mut feeds)) = feeds {
            let replaced = self.close_feeds();
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
            self.start_feeds(refresher, shared, replaced);
        }
        {
            let mut c = shared.classifier.write().expect("lock not poisoned");
            c.reconfigure(self.cfg.clone());
            c.set_geo(geo);
            c.set_feeds(self.feeds.read().expect("lock not poisoned").clone());
        }
        self.start_pipeline(Ok(*pipeline), before);
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
        ("xdp_attach", running.xdp_attach != new.xdp_attach),
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
