//! The drop list's source of truth: a versioned JSON state file written atomically (temp
//! file, fsync, rename, fsync of the directory; the previous version kept as `.bak`), an
//! append-only audit log (JSON lines), and a lock that serialises every change.

use std::{
    fs::{self, File, OpenOptions},
    io::Write as _,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use super::net::Net;

pub const STATE_VERSION: u32 = 1;
pub const STATE_FILE: &str = "droplist.json";
pub const AUDIT_FILE: &str = "audit.log";
const LOCK_FILE: &str = "droplist.lock";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    #[default]
    Manual,
    Import,
    Auto,
}

impl Kind {
    /// `netmon_common::ban_kind` value.
    pub fn code(self) -> u8 {
        match self {
            Self::Manual => netmon_common::ban_kind::MANUAL,
            Self::Import => netmon_common::ban_kind::IMPORT,
            Self::Auto => netmon_common::ban_kind::AUTO,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanEntry {
    pub net: Net,
    pub kind: Kind,
    #[serde(default)]
    pub reason: String,
    pub uid: u32,
    /// Unix milliseconds.
    pub added_ms: u64,
    /// Unix milliseconds; none: permanent.
    #[serde(default)]
    pub expires_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowEntry {
    pub net: Net,
    #[serde(default)]
    pub reason: String,
    pub uid: u32,
    pub added_ms: u64,
}

/// A per-source rate limit: packets or bytes per second from one address, with a burst.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitEntry {
    /// A single address (the kernel keys limits by source address).
    pub net: Net,
    /// In the state file as `pps` and `burst`, or `bytes_per_sec` and `burst_bytes`.
    #[serde(flatten)]
    pub rate: Rate,
    pub kind: Kind,
    #[serde(default)]
    pub reason: String,
    pub uid: u32,
    pub added_ms: u64,
    #[serde(default)]
    pub expires_ms: Option<u64>,
}

/// What a rate limit lets through from its source: packets per second with a burst of
/// packets, or a bandwidth, bytes per second with a burst of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Rate {
    Packets {
        pps: u32,
        burst: u32,
    },
    Bytes {
        bytes_per_sec: u64,
        burst_bytes: u64,
    },
}

impl Rate {
    /// The slowest bandwidth limit: 8 kbit/s (the kernel's cost of a packet, its length
    /// times the fixed-point nanoseconds per byte, stays within 64 bits for any frame).
    pub const MIN_BYTES_PER_SEC: u64 = 1_000;
    /// The fastest: 1 Tbit/s.
    pub const MAX_BYTES_PER_SEC: u64 = 125_000_000_000;
    /// The smallest burst of a bandwidth limit: a frame longer than the burst never passes.
    pub const MIN_BURST_BYTES: u64 = 1_514;

    /// A bandwidth limit of `bytes_per_sec` with a burst of `burst_bytes`, or by default 100 ms
    /// of the rate and at least 16 KiB; refused outside the bounds above.
    pub fn bandwidth(bytes_per_sec: u64, burst_bytes: Option<u64>) -> Result<Self> {
        if !(Self::MIN_BYTES_PER_SEC..=Self::MAX_BYTES_PER_SEC).contains(&bytes_per_sec) {
            bail!(
                "a bandwidth limit must be from 8kbit to 1000gbit per second, not {} bit/s",
                bytes_per_sec.saturating_mul(8)
            );
        }
        let burst_bytes = burst_bytes.unwrap_or((bytes_per_sec / 10).max(16_384));
        if burst_bytes < Self::MIN_BURST_BYTES {
            bail!(
                "a bandwidth limit's burst must be at least {} bytes (a full Ethernet frame, \
                 which would otherwise never pass), not {burst_bytes}",
                Self::MIN_BURST_BYTES
            );
        }
        Ok(Self::Bytes {
            bytes_per_sec,
            burst_bytes,
        })
    }

    /// A packet limit; refused for a rate or burst of 0.
    pub fn packets(pps: u32, burst: u32) -> Result<Self> {
        if pps == 0 || burst == 0 {
            bail!("--pps and --burst must be at least 1 (to stop everything, use `netmon ban`)");
        }
        Ok(Self::Packets { pps, burst })
    }
}

/// `1/s (burst 5)`, `1 Mbit/s (burst 16384 bytes)`.
impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::Packets { pps, burst } => write!(f, "{pps}/s (burst {burst})"),
            Self::Bytes {
                bytes_per_sec,
                burst_bytes,
            } => write!(
                f,
                "{} (burst {burst_bytes} bytes)",
                bits_per_sec(bytes_per_sec)
            ),
        }
    }
}

/// A bandwidth in bits per second, in the largest SI unit that keeps it whole or to three
/// decimals: `8 kbit/s`, `1.5 Mbit/s`.
pub fn bits_per_sec(bytes_per_sec: u64) -> String {
    let bits = bytes_per_sec as f64 * 8.0;
    let (v, unit) = [
        (1e12, "Tbit/s"),
        (1e9, "Gbit/s"),
        (1e6, "Mbit/s"),
        (1e3, "kbit/s"),
    ]
    .into_iter()
    .find(|(scale, _)| bits >= *scale)
    .map_or((bits, "bit/s"), |(scale, u)| (bits / scale, u));
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s} {unit}")
}

/// A bandwidth as `tc` writes one, in bits per second: a number and `bit`, `kbit`, `mbit`,
/// `gbit` or `tbit` (SI: 1kbit is 1,000 bit/s; `/s` may follow). The unit is required: a
/// bare number could be bits or bytes. Returns bytes per second (rounded down).
pub fn parse_bandwidth(s: &str) -> Result<u64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix("/s").unwrap_or(&t);
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let scale = match unit.trim() {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "tbit" => 1e12,
        "" => bail!("{s:?}: give the bandwidth's unit, e.g. 500kbit, 10mbit, 1gbit"),
        u => bail!("{s:?}: unknown unit {u:?} (bit, kbit, mbit, gbit or tbit per second)"),
    };
    let v: f64 = num
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v > 0.0)
        .with_context(|| format!("{s:?}: not a bandwidth (e.g. 500kbit, 10mbit, 1gbit)"))?;
    Ok((v * scale / 8.0) as u64)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportInfo {
    pub source: String,
    pub count: usize,
    pub loaded_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    pub version: u32,
    /// Generation (1 or 2) of the kernel entries in force.
    pub generation: u8,
    pub bans: Vec<BanEntry>,
    pub allows: Vec<AllowEntry>,
    #[serde(default)]
    pub import: Option<ImportInfo>,
    /// Per-source rate limits (absent in files written before they existed).
    #[serde(default)]
    pub limits: Vec<LimitEntry>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            version: STATE_VERSION,
            generation: 1,
            bans: Vec::new(),
            allows: Vec::new(),
            import: None,
            limits: Vec::new(),
        }
    }
}

impl State {
    /// Bans still in force at `now_ms` (unix milliseconds).
    pub fn live_bans(&self, now_ms: u64) -> impl Iterator<Item = &BanEntry> {
        self.bans
            .iter()
            .filter(move |b| b.expires_ms.is_none_or(|e| e > now_ms))
    }

    /// Rate limits still in force at `now_ms`.
    pub fn live_limits(&self, now_ms: u64) -> impl Iterator<Item = &LimitEntry> {
        self.limits
            .iter()
            .filter(move |l| l.expires_ms.is_none_or(|e| e > now_ms))
    }

    /// The earliest expiry among the bans and limits, if any (unix milliseconds).
    pub fn next_expiry(&self) -> Option<u64> {
        self.bans
            .iter()
            .filter_map(|b| b.expires_ms)
            .chain(self.limits.iter().filter_map(|l| l.expires_ms))
            .min()
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `2026-11-24T09:10:00Z` (UTC), for the audit log and listings; from unix milliseconds.
pub fn rfc3339(unix_ms: u64) -> String {
    let unix = unix_ms / 1000;
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// The state directory: state file, audit log, lock.
pub struct Store {
    dir: PathBuf,
}

/// Held while a change is made; released on drop (or when the process dies).
pub struct Lock {
    _file: File,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// The previous version of the state file, kept by `save` (there once the list has been
    /// saved twice).
    fn backup_path(&self) -> PathBuf {
        self.dir.join(format!("{STATE_FILE}.bak"))
    }

    pub fn audit_path(&self) -> PathBuf {
        self.dir.join(AUDIT_FILE)
    }

    /// Creates the state directory if it is missing (owner-only, as the files in it:
    /// `crate::files`).
    fn make_dir(&self) -> Result<()> {
        crate::files::private_dir(&self.dir)
            .with_context(|| format!("creating the state directory {}", self.dir.display()))
    }

    /// Takes the exclusive lock that serialises every change (CLI and daemon).
    pub fn lock(&self) -> Result<Lock> {
        self.make_dir()?;
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on an owned descriptor; blocks until the other holder is done.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", path.display()));
        }
        Ok(Lock { _file: file })
    }

    /// Reads the state; a missing file is an empty list. A corrupt or unknown-version file is
    /// an error that says how to recover: never silently an empty list.
    pub fn load(&self) -> Result<State> {
        let path = self.state_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let bak = self.backup_path();
        let recover = if bak.exists() {
            format!(
                "fix it, restore {} (the previous version), or move it away to start with an \
                 empty drop list",
                bak.display()
            )
        } else {
            "fix it, or move it away to start with an empty drop list (there is no previous \
             version to restore)"
                .to_string()
        };
        // The version first, skipping the rest (no allocation), then the state straight from
        // the text: every CLI command loads this file, and through a serde_json::Value
        // `netmon list ADDR` on 100,000 entries (16 MB) took 0.16 s and 121 MB, now 0.07 s
        // and 30 MB.
        #[derive(Deserialize)]
        struct Versioned {
            version: Option<serde_json::Value>,
        }
        let corrupt = |e: serde_json::Error| {
            anyhow::anyhow!(
                "drop-list state file {} is corrupt ({e}): {recover}",
                path.display()
            )
        };
        let v: Versioned = serde_json::from_str(&text).map_err(corrupt)?;
        match v.version.as_ref().and_then(|v| v.as_u64()) {
            Some(n) if n == u64::from(STATE_VERSION) => {}
            Some(n) => bail!(
                "drop-list state file {} has format version {n}; this netmon reads version \
                 {STATE_VERSION}: use a matching netmon, or {recover}",
                path.display()
            ),
            None => bail!(
                "drop-list state file {} has no format version: {recover}",
                path.display()
            ),
        }
        let state: State = serde_json::from_str(&text).map_err(corrupt)?;
        if !matches!(state.generation, 1 | 2) {
            bail!(
                "drop-list state file {} names generation {}, expected 1 or 2: {recover}",
                path.display(),
                state.generation
            );
        }
        Ok(state)
    }

    /// Writes the state atomically: a reader sees the old file or the new one, never a mix,
    /// and a crash leaves one of them whole.
    pub fn save(&self, state: &State) -> Result<()> {
        self.make_dir()?;
        let path = self.state_path();
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(state).context("serialising the drop list")?;
        let written = (|| {
            let mut f = crate::files::create(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            // The new version keeps the mode of the one it replaces (0600 for the first).
            if let Some(mode) = crate::files::mode_of(&path) {
                f.set_permissions(mode)
                    .with_context(|| format!("setting the mode of {}", tmp.display()))?;
            }
            f.write_all(&json)
                .and_then(|()| f.sync_all())
                .with_context(|| format!("writing {}", tmp.display()))
        })();
        if written.is_err() {
            // A partial file (a full disk) would only take room.
            let _ = fs::remove_file(&tmp);
        }
        written?;
        if path.exists() {
            let bak = self.backup_path();
            fs::copy(&path, &bak).with_context(|| format!("backing up to {}", bak.display()))?;
        }
        fs::rename(&tmp, &path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", self.dir.display()))?;
        Ok(())
    }

    /// Appends one line to the audit log.
    pub fn audit(&self, record: &AuditRecord) -> Result<()> {
        let path = self.audit_path();
        self.make_dir()?;
        let mut f = crate::files::append(&path)
            .with_context(|| format!("opening the audit log {}", path.display()))?;
        let mut line = serde_json::to_vec(record).context("serialising an audit record")?;
        line.push(b'\n');
        f.write_all(&line)
            .and_then(|()| f.sync_data())
            .with_context(|| format!("appending to {}", path.display()))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditRecord {
    pub time: String,
    pub uid: u32,
    /// `ban`, `auto-ban`, `unban`, `allow`, `disallow`, `import`, `expire`, `kill`, `limit`,
    /// `auto-limit`, `unlimit`.
    pub action: String,
    pub entry: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

impl AuditRecord {
    pub fn new(action: &str, entry: impl ToString, reason: &str) -> Self {
        Self {
            time: rfc3339(now_ms()),
            uid: current_uid(),
            action: action.to_string(),
            entry: entry.to_string(),
            reason: reason.to_string(),
            count: None,
            expires: None,
        }
    }
}

pub fn current_uid() -> u32 {
    // SAFETY: no preconditions. Under sudo, SUDO_UID names the person behind it.
    let uid = unsafe { libc::getuid() };
    std::env::var("SUDO_UID")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|_| uid == 0)
        .unwrap_or(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state directory that does not exist yet, inside a scratch directory removed when
    /// the test ends.
    fn tmpdir(tag: &str) -> (crate::test_support::TempDir, PathBuf) {
        let t = crate::test_support::TempDir::new(&format!("state-{tag}"));
        let d = t.0.join("state");
        (t, d)
    }

    fn ban(net: &str, expires: Option<u64>) -> BanEntry {
        BanEntry {
            net: net.parse().unwrap(),
            kind: Kind::Manual,
            reason: "test".into(),
            uid: 0,
            added_ms: 1,
            expires_ms: expires,
        }
    }

    #[test]
    fn rates_parse_show_and_keep_the_state_files_of_packet_limits() {
        assert_eq!(parse_bandwidth("8kbit").unwrap(), 1_000);
        assert_eq!(parse_bandwidth(" 10Mbit/s ").unwrap(), 1_250_000);
        assert_eq!(parse_bandwidth("2.5gbit").unwrap(), 312_500_000);
        assert_eq!(parse_bandwidth("1tbit").unwrap(), 125_000_000_000);
        assert_eq!(parse_bandwidth("800bit").unwrap(), 100);
        for (bad, why) in [
            ("1000", "give the bandwidth's unit"),
            ("1mb", "unknown unit \"mb\""),
            ("mbit", "not a bandwidth"),
            ("-1mbit", "not a bandwidth"),
            ("0kbit", "not a bandwidth"),
            ("1.2.3mbit", "not a bandwidth"),
        ] {
            let e = format!("{:#}", parse_bandwidth(bad).unwrap_err());
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(Rate::bandwidth(999, None).is_err());
        assert!(Rate::bandwidth(Rate::MAX_BYTES_PER_SEC + 1, None).is_err());
        assert!(Rate::bandwidth(1_000, Some(1_513)).is_err());
        // The default burst: 100 ms of the rate, at least 16 KiB.
        assert_eq!(
            Rate::bandwidth(1_250_000, None).unwrap(),
            Rate::Bytes {
                bytes_per_sec: 1_250_000,
                burst_bytes: 125_000
            }
        );
        assert_eq!(
            Rate::bandwidth(1_000, None).unwrap(),
            Rate::Bytes {
                bytes_per_sec: 1_000,
                burst_bytes: 16_384
            }
        );
        assert!(Rate::packets(0, 1).is_err() && Rate::packets(1, 0).is_err());
        assert_eq!(
            Rate::Packets { pps: 1, burst: 5 }.to_string(),
            "1/s (burst 5)"
        );
        assert_eq!(
            Rate::bandwidth(187_500, Some(2_000)).unwrap().to_string(),
            "1.5 Mbit/s (burst 2000 bytes)"
        );
        assert_eq!(bits_per_sec(1_000), "8 kbit/s");
        assert_eq!(bits_per_sec(100), "800 bit/s");
        assert_eq!(bits_per_sec(125_000_000_000), "1 Tbit/s");

        // A limit as versions before bandwidth limits wrote it reads as a packet limit, and
        // each kind is written back in its own fields.
        let old = r#"{"net":"198.51.100.7","pps":5,"burst":10,"kind":"auto","reason":"r","uid":0,"added_ms":1}"#;
        let l: LimitEntry = serde_json::from_str(old).unwrap();
        assert_eq!(l.rate, Rate::Packets { pps: 5, burst: 10 });
        assert_eq!(
            serde_json::to_string(&l).unwrap(),
            old.replace('}', r#","expires_ms":null}"#)
        );
        let bw = LimitEntry {
            rate: Rate::bandwidth(125_000, Some(20_000)).unwrap(),
            ..l
        };
        let text = serde_json::to_string(&bw).unwrap();
        assert!(
            text.contains(r#""bytes_per_sec":125000,"burst_bytes":20000"#) && !text.contains("pps"),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<LimitEntry>(&text).unwrap(), bw);
    }

    #[test]
    fn round_trip_and_backup() {
        let (_tmp, dir) = tmpdir("rt");
        let store = Store::new(&dir);
        assert_eq!(
            store.load().unwrap(),
            State::default(),
            "missing file: empty"
        );
        let mut s = State::default();
        s.bans.push(ban("203.0.113.7", None));
        store.save(&s).unwrap();
        assert_eq!(store.load().unwrap(), s);
        s.bans.push(ban("198.51.100.0/24", Some(99)));
        store.save(&s).unwrap();
        assert_eq!(store.load().unwrap(), s);
        let bak: State =
            serde_json::from_str(&fs::read_to_string(dir.join("droplist.json.bak")).unwrap())
                .unwrap();
        assert_eq!(bak.bans.len(), 1, "the previous version is kept");
        assert!(!dir.join("droplist.json.tmp").exists());

        // Owner-only (crate::files), and a mode the operator set is kept by the rewrite.
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!((mode(&dir), mode(&store.state_path())), (0o700, 0o600));
        fs::set_permissions(store.state_path(), fs::Permissions::from_mode(0o640)).unwrap();
        store.save(&s).unwrap();
        assert_eq!(mode(&store.state_path()), 0o640);
        store
            .audit(&AuditRecord::new("ban", "203.0.113.7", "x"))
            .unwrap();
        assert_eq!(mode(&store.audit_path()), 0o600);
    }

    #[test]
    fn corrupt_and_future_files_are_refused_with_a_way_out() {
        let (_tmp, dir) = tmpdir("bad");
        fs::create_dir_all(&dir).unwrap();
        let store = Store::new(&dir);
        fs::write(store.state_path(), "{\"version\": 1, \"bans\": [").unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(
            e.contains("is corrupt") && e.contains("no previous version") && !e.contains(".bak"),
            "{e}"
        );
        // Once a previous version exists, the error names it.
        fs::write(dir.join("droplist.json.bak"), "{}").unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(
            e.contains("is corrupt") && e.contains("droplist.json.bak"),
            "{e}"
        );
        fs::write(
            store.state_path(),
            "{\"version\": 7, \"generation\": 1, \"bans\": [], \"allows\": []}",
        )
        .unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(
            e.contains("format version 7") && e.contains("reads version 1"),
            "{e}"
        );
        fs::write(
            store.state_path(),
            "{\"version\": 1, \"generation\": 1, \"bans\": [{\"net\": \"10.0.0.1/8\", \"kind\": \"manual\", \"uid\": 0, \"added_ms\": 0}], \"allows\": []}",
        )
        .unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(e.contains("host bits"), "{e}");
    }

    #[test]
    fn audit_lines_append() {
        let (_tmp, dir) = tmpdir("audit");
        let store = Store::new(&dir);
        fs::create_dir_all(&dir).unwrap();
        store
            .audit(&AuditRecord::new("ban", "203.0.113.7", "x"))
            .unwrap();
        store
            .audit(&AuditRecord::new("unban", "203.0.113.7", ""))
            .unwrap();
        let text = fs::read_to_string(store.audit_path()).unwrap();
        let lines: Vec<AuditRecord> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].action, "ban");
        assert_eq!(lines[1].entry, "203.0.113.7");
    }

    #[test]
    fn expiry_and_time_format() {
        let mut s = State::default();
        s.bans.push(ban("192.0.2.1", Some(100)));
        s.bans.push(ban("192.0.2.2", None));
        s.bans.push(ban("192.0.2.3", Some(50)));
        assert_eq!(s.next_expiry(), Some(50));
        assert_eq!(s.live_bans(60).count(), 2);
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_511_400_000), "2026-11-24T09:10:00Z");
        assert_eq!(rfc3339(951_782_400_999), "2000-02-29T00:00:00Z");
    }
}
