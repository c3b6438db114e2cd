//! Reputation feeds: lists of known-bad addresses and networks, read from files or URLs in
//! the formats public feeds use (plain lists, FireHOL `.netset`, Spamhaus DROP/EDROP text and
//! JSON lines, abuse.ch-style CSV), kept as sorted, merged address ranges so that a lookup
//! is one binary search per feed. Parsing and lookups are pure; fetching is in [`fetch`].

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::act::net::Net;

/// Networks of one feed as inclusive ranges, sorted and merged: IPv4 as u32, IPv6 as u128.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PrefixSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

fn merge<T: Ord + Copy>(mut r: Vec<(T, T)>, next: impl Fn(T) -> Option<T>) -> Vec<(T, T)> {
    r.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(r.len());
    for (a, b) in r {
        if let Some(last) = out.last_mut() {
            // Overlapping or adjacent: extend.
            if a <= last.1 || next(last.1) == Some(a) {
                last.1 = last.1.max(b);
                continue;
            }
        }
        out.push((a, b));
    }
    out.shrink_to_fit();
    out
}

fn find<T: Ord + Copy>(r: &[(T, T)], x: T) -> bool {
    // The last range starting at or before x.
    let i = r.partition_point(|&(a, _)| a <= x);
    i > 0 && r[i - 1].1 >= x
}

impl PrefixSet {
    pub fn new(nets: &[Net]) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for n in nets {
            match n.addr() {
                IpAddr::V4(a) => {
                    let start = u32::from(a);
                    let host = if n.prefix() == 0 {
                        u32::MAX
                    } else {
                        (1u32 << (32 - n.prefix() as u32)).wrapping_sub(1)
                    };
                    v4.push((start, start | host));
                }
                IpAddr::V6(a) => {
                    let start = u128::from(a);
                    let host = if n.prefix() == 0 {
                        u128::MAX
                    } else {
                        (1u128 << (128 - n.prefix() as u32)).wrapping_sub(1)
                    };
                    v6.push((start, start | host));
                }
            }
        }
        Self {
            v4: merge(v4, |x: u32| x.checked_add(1)),
            v6: merge(v6, |x: u128| x.checked_add(1)),
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => find(&self.v4, u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => find(&self.v4, u32::from(v4)),
                None => find(&self.v6, u128::from(a)),
            },
        }
    }

    /// Merged ranges held (IPv4 + IPv6).
    pub fn ranges(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

/// Parses a feed's text: one network per line in any of the formats named in the module
/// docs. `#` and `;` start comments (not inside JSON lines); a CSV header line is skipped.
/// Any other line with no address fails the whole feed, with `source` and the line number,
/// so that a corrupt download never replaces a good feed.
pub fn parse_feed(text: &str, source: &str) -> Result<Vec<Net>> {
    let mut out = Vec::new();
    let mut seen_data = false;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let at = || format!("{source} line {}", i + 1);
        if line.starts_with('{') {
            // Spamhaus DROP JSON lines: {"cidr":"192.0.2.0/24","sblid":"SBL1","rir":"..."};
            // the closing metadata line has no cidr.
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("{}: bad JSON", at()))?;
            if let Some(c) = v.get("cidr").and_then(|c| c.as_str()) {
                out.push(parse_net_lenient(c).with_context(at)?);
            } else if v.get("type").is_none() {
                bail!("{}: a JSON line without `cidr`", at());
            }
            seen_data = true;
            continue;
        }
        let content = line.split(['#', ';']).next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        if content.contains(',') {
            // CSV (abuse.ch Feodo/SSLBL style): the first field that is an address.
            let found = content
                .split(',')
                .map(|f| f.trim().trim_matches('"').trim())
                .find_map(|f| parse_net_lenient(f).ok());
            match found {
                Some(n) => out.push(n),
                None if !seen_data => {} // the header row
                None => bail!("{}: no IP address or CIDR in `{content}`", at()),
            }
            seen_data = true;
            continue;
        }
        let field = content.split_whitespace().next().unwrap_or("");
        out.push(parse_net_lenient(field).with_context(at)?);
        seen_data = true;
    }
    Ok(out)
}

/// A feed entry: an address or CIDR. Unlike the drop list, a feed's `10.1.2.3/8` is read as
/// the network it names (feeds are not ours to correct).
fn parse_net_lenient(s: &str) -> Result<Net> {
    match s.parse::<Net>() {
        Ok(n) => Ok(n),
        Err(crate::act::net::NetError::HostBits { network, .. }) => Ok(network.parse()?),
        Err(e) => Err(e.into()),
    }
}

/// Where a feed comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    File(PathBuf),
    Url(String),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::File(p) => write!(f, "{}", p.display()),
            Location::Url(u) => f.write_str(u),
        }
    }
}

/// A configured feed: `[[feeds]]` in the threat configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedConfig {
    pub name: String,
    pub location: Location,
    pub refresh: Duration,
    /// Where it is declared (`FILE:LINE`), for errors.
    pub decl: String,
}

/// One loaded feed.
#[derive(Debug, Clone)]
pub struct Feed {
    pub name: String,
    pub set: PrefixSet,
    /// Entries as listed (before merging).
    pub entries: usize,
    /// Unix milliseconds of the load.
    pub loaded_ms: u64,
}

/// Every loaded feed; `lookup` names the feeds that list an address.
#[derive(Debug, Default, Clone)]
pub struct Feeds {
    pub feeds: Vec<Feed>,
    /// Bumped on every change, so per-remote caches know to look again.
    pub generation: u64,
}

impl Feeds {
    pub fn lookup(&self, ip: IpAddr) -> Vec<String> {
        self.feeds
            .iter()
            .filter(|f| f.set.contains(ip))
            .map(|f| f.name.clone())
            .collect()
    }
}

/// Reads a feed from its location: a file, or an http(s) URL (fetched with a timeout).
pub fn fetch(loc: &Location) -> Result<String> {
    match loc {
        Location::File(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading the feed {}", p.display()))
        }
        Location::Url(u) => {
            let agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(30)))
                .build()
                .new_agent();
            let mut resp = agent
                .get(u)
                .header("User-Agent", concat!("netmon/", env!("CARGO_PKG_VERSION")))
                .call()
                .with_context(|| format!("fetching the feed {u}"))?;
            resp.body_mut()
                .with_config()
                .limit(256 << 20)
                .read_to_string()
                .with_context(|| format!("reading the feed {u}"))
        }
    }
}

/// Loads one feed: fetch, parse, index. For URL feeds, a good download is also saved to
/// `cache` (so a restart without network still has it) and, when the download fails, the
/// cached copy is used and the failure is returned alongside.
pub fn load(cfg: &FeedConfig, cache: Option<&Path>) -> Result<Feed> {
    let text = fetch(&cfg.location)?;
    let nets = parse_feed(&text, &cfg.location.to_string())?;
    if let (Location::Url(_), Some(dir)) = (&cfg.location, cache) {
        // Inside the state directory, which this may be the first to create: owner-only,
        // as `crate::files` makes it.
        let _ = crate::files::private_dir(dir);
        let path = dir.join(format!("{}.txt", cfg.name));
        let tmp = path.with_extension("tmp");
        if std::fs::write(&tmp, &text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .is_err()
        {
            tracing::warn!(
                "feed {}: could not save the cached copy {}",
                cfg.name,
                path.display()
            );
        }
    }
    Ok(Feed {
        name: cfg.name.clone(),
        entries: nets.len(),
        set: PrefixSet::new(&nets),
        loaded_ms: crate::act::state::now_ms(),
    })
}

/// The cached copy of a URL feed (see [`load`]), for a start without network.
pub fn load_cached(cfg: &FeedConfig, cache: &Path) -> Result<Feed> {
    let path = cache.join(format!("{}.txt", cfg.name));
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the cached feed {}", path.display()))?;
    let nets = parse_feed(&text, &path.display().to_string())?;
    Ok(Feed {
        name: cfg.name.clone(),
        entries: nets.len(),
        set: PrefixSet::new(&nets),
        loaded_ms: crate::act::state::now_ms(),
    })
}

/// The state of one feed, for `/api/status` and the metrics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FeedStatus {
    pub name: String,
    pub source: String,
    pub entries: usize,
    pub ranges: usize,
    /// Unix milliseconds of the last good load.
    pub loaded_ms: u64,
    /// The last refresh's error; the feed in use is then the last good one.
    pub error: Option<String>,
    pub failures: u64,
}

/// Keeps feeds loaded and refreshed on their intervals, on a thread of its own; a refresh
/// that fails (unreadable, unreachable, corrupt) keeps the last good copy and is reported.
pub struct FeedRefresher {
    cfgs: Vec<FeedConfig>,
    cache: Option<PathBuf>,
    pub status: Vec<FeedStatus>,
    next: Vec<std::time::Instant>,
}

impl FeedRefresher {
    /// Loads every feed once. A file feed that cannot be read or parsed is an error (the
    /// configuration is wrong); a URL feed that cannot be fetched falls back to its cached
    /// copy, or starts empty and is retried, with a warning.
    pub fn start(cfgs: Vec<FeedConfig>, cache: Option<PathBuf>) -> Result<(Self, Feeds)> {
        let mut feeds = Feeds::default();
        let mut status = Vec::new();
        for c in &cfgs {
            let mut st = FeedStatus {
                name: c.name.clone(),
                source: c.location.to_string(),
                ..Default::default()
            };
            let loaded = match (load(c, cache.as_deref()), &c.location, &cache) {
                (Ok(f), _, _) => Some(f),
                (Err(e), Location::File(_), _) => {
                    return Err(e.context(format!("feed {} ({})", c.name, c.decl)));
                }
                (Err(e), Location::Url(_), dir) => {
                    let msg = format!("{e:#}");
                    st.error = Some(msg.clone());
                    st.failures = 1;
                    match dir.as_deref().map(|d| load_cached(c, d)) {
                        Some(Ok(f)) => {
                            tracing::warn!("feed {}: {msg}; using the cached copy", c.name);
                            Some(f)
                        }
                        _ => {
                            tracing::warn!("feed {}: {msg}; starting without it", c.name);
                            None
                        }
                    }
                }
            };
            if let Some(f) = loaded {
                st.entries = f.entries;
                st.ranges = f.set.ranges();
                st.loaded_ms = f.loaded_ms;
                feeds.feeds.push(f);
            }
            status.push(st);
        }
        feeds.generation = 1;
        let now = std::time::Instant::now();
        let next = cfgs.iter().map(|c| now + c.refresh).collect();
        Ok((
            Self {
                cfgs,
                cache,
                status,
                next,
            },
            feeds,
        ))
    }

    /// Refreshes the feeds that are due; returns the new set when any changed.
    pub fn refresh_due(&mut self, current: &Feeds, now: std::time::Instant) -> Option<Feeds> {
        let mut out: Option<Feeds> = None;
        for i in 0..self.cfgs.len() {
            if now < self.next[i] {
                continue;
            }
            self.next[i] = now + self.cfgs[i].refresh;
            let c = &self.cfgs[i];
            match load(c, self.cache.as_deref()) {
                Ok(f) => {
                    let st = &mut self.status[i];
                    if st.error.take().is_some() {
                        tracing::info!("feed {}: refreshed again", c.name);
                    }
                    st.entries = f.entries;
                    st.ranges = f.set.ranges();
                    st.loaded_ms = f.loaded_ms;
                    let next = out.get_or_insert_with(|| current.clone());
                    match next.feeds.iter_mut().find(|x| x.name == c.name) {
                        Some(slot) => *slot = f,
                        None => next.feeds.push(f),
                    }
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    tracing::warn!(
                        "feed {}: refresh failed, keeping the last good copy: {msg}",
                        c.name
                    );
                    let st = &mut self.status[i];
                    st.error = Some(msg);
                    st.failures += 1;
                }
            }
        }
        if let Some(f) = &mut out {
            f.generation = current.generation + 1;
        }
        out
    }

    /// Runs until `stop` is set, publishing into `feeds` and `status`. The thread first
    /// joins `after` (the feed thread this one replaces, told to stop), so the two never
    /// fetch at once. Once `stop` is set it publishes nothing more: what it loaded after a
    /// reload replaced it is dropped, not written over the reload's feeds (the check is made
    /// under the lock the reload writes with).
    pub fn spawn(
        mut self,
        feeds: Arc<std::sync::RwLock<Arc<Feeds>>>,
        status: Arc<std::sync::RwLock<Vec<FeedStatus>>>,
        stop: Arc<std::sync::atomic::AtomicBool>,
        after: Option<std::thread::JoinHandle<()>>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        use std::sync::atomic::Ordering::Relaxed;
        *status.write().expect("lock not poisoned") = self.status.clone();
        std::thread::Builder::new()
            .name("netmon-feeds".into())
            .spawn(move || {
                if let Some(h) = after
                    && h.join().is_err()
                {
                    tracing::warn!("the feed thread replaced by a reload panicked");
                }
                while !stop.load(Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    let now = std::time::Instant::now();
                    if !self.next.iter().any(|n| now >= *n) {
                        continue;
                    }
                    let current = feeds.read().expect("lock not poisoned").clone();
                    if let Some(new) = self.refresh_due(&current, now) {
                        let mut slot = feeds.write().expect("lock not poisoned");
                        if stop.load(Relaxed) {
                            break;
                        }
                        *slot = Arc::new(new);
                    }
                    let mut slot = status.write().expect("lock not poisoned");
                    if stop.load(Relaxed) {
                        break;
                    }
                    *slot = self.status.clone();
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn formats() {
        let text = "\
# FireHOL netset
203.0.113.0/24
198.51.100.7
; Spamhaus DROP
192.0.2.0/25 ; SBL123
2001:db8::/32
{\"cidr\":\"100.64.1.0/24\",\"sblid\":\"SBL9\",\"rir\":\"arin\"}
{\"type\":\"metadata\",\"timestamp\":1}
";
        let nets = parse_feed(text, "f").unwrap();
        assert_eq!(nets.len(), 5);
        let csv = "\
# abuse.ch Feodo Tracker
\"first_seen_utc\",\"dst_ip\",\"dst_port\",\"c2_status\",\"last_online\",\"malware\"
\"2021-01-17 07:44:46\",\"51.68.198.240\",\"443\",\"online\",\"2021-05-22\",\"Dridex\"
\"2021-01-18 07:44:46\",\"203.0.113.50\",\"8080\",\"offline\",\"2021-05-22\",\"Emotet\"
";
        let nets = parse_feed(csv, "c").unwrap();
        assert_eq!(nets.len(), 2);
        // A feed's host bits are not an error: the network it names is meant.
        assert_eq!(
            parse_feed("10.1.2.3/8\n", "f").unwrap()[0].to_string(),
            "10.0.0.0/8"
        );
    }

    #[test]
    fn corrupt_lines_fail_the_feed_with_the_line() {
        let e = parse_feed("203.0.113.0/24\n<html>\n", "https://x/feed")
            .unwrap_err()
            .to_string();
        assert!(e.contains("https://x/feed line 2"), "{e}");
        let e = parse_feed("a,b\n1.2.3.4,x\nfoo,bar\n", "c.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.csv line 3"), "{e}");
    }

    #[test]
    fn lookups_over_merged_ranges() {
        let nets: Vec<Net> = [
            "203.0.113.0/25",
            "203.0.113.128/25",
            "198.51.100.7",
            "10.0.0.0/8",
            "10.1.0.0/16",
            "2001:db8::/32",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let s = PrefixSet::new(&nets);
        // Adjacent /25s and the /16 inside the /8 are merged.
        assert_eq!(s.ranges(), 4);
        for yes in [
            "203.0.113.0",
            "203.0.113.255",
            "198.51.100.7",
            "10.255.255.255",
            "2001:db8::1",
            "::ffff:198.51.100.7",
        ] {
            assert!(s.contains(ip(yes)), "{yes}");
        }
        for no in [
            "203.0.112.255",
            "203.0.114.0",
            "198.51.100.6",
            "198.51.100.8",
            "11.0.0.0",
            "2001:db9::",
        ] {
            assert!(!s.contains(ip(no)), "{no}");
        }
        let all = PrefixSet::new(&["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()]);
        assert!(all.contains(ip("255.255.255.255")) && all.contains(ip("ffff::1")));
    }

    #[test]
    fn a_broken_refresh_keeps_the_last_good_feed() {
        let tmp = crate::test_support::TempDir::new("feed-test");
        let dir = &tmp.0;
        let path = dir.join("bad.txt");
        std::fs::write(&path, "203.0.113.0/24\n").unwrap();
        let cfg = FeedConfig {
            name: "local".into(),
            location: Location::File(path.clone()),
            refresh: Duration::from_millis(1),
            decl: "threat.toml:3".into(),
        };
        let (mut r, feeds) = FeedRefresher::start(vec![cfg.clone()], None).unwrap();
        assert_eq!(feeds.lookup(ip("203.0.113.9")), vec!["local"]);
        // The file is replaced with garbage: the refresh fails, nothing changes.
        std::fs::write(&path, "203.0.113.0/24\nnot an address\n").unwrap();
        let later = std::time::Instant::now() + Duration::from_secs(1);
        assert!(r.refresh_due(&feeds, later).is_none());
        assert!(
            r.status[0].error.as_deref().unwrap().contains("line 2"),
            "{:?}",
            r.status[0]
        );
        assert_eq!(r.status[0].entries, 1);
        // And the file is removed: still the last good copy.
        std::fs::remove_file(&path).unwrap();
        assert!(
            r.refresh_due(&feeds, later + Duration::from_secs(1))
                .is_none()
        );
        assert_eq!(r.status[0].failures, 2);
        // Fixed: the new content is in force, under a new generation.
        std::fs::write(&path, "198.51.100.0/24\n").unwrap();
        let new = r
            .refresh_due(&feeds, later + Duration::from_secs(2))
            .unwrap();
        assert!(new.generation > feeds.generation);
        assert!(new.lookup(ip("203.0.113.9")).is_empty());
        assert_eq!(new.lookup(ip("198.51.100.1")), vec!["local"]);
        assert!(r.status[0].error.is_none());
        // A file feed that cannot be read at start is a configuration error.
        std::fs::remove_file(&path).unwrap();
        let e = FeedRefresher::start(vec![cfg], None).err().unwrap();
        let e = format!("{e:#}");
        assert!(e.contains("bad.txt") && e.contains("threat.toml:3"), "{e}");
    }
}
