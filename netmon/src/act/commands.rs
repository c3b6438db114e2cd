//! Drop-list operations, as the CLI and the daemon perform them. Each takes the state lock,
//! checks everything before changing anything, writes the kernel maps, then the state file,
//! then the audit log. A refused change leaves the list exactly as it was.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::{
    droplist::{DropMaps, flags_for},
    net::{Net, danger, own_addresses, parse_list},
    state::{
        AllowEntry, AuditRecord, BanEntry, ImportInfo, Kind, LimitEntry, Rate, State, Store,
        current_uid, now_ms, rfc3339,
    },
};

/// Where the drop list lives: pinned maps and the state directory.
#[derive(Debug, Clone)]
pub struct DropList {
    pub pin_dir: PathBuf,
    pub store_dir: PathBuf,
}

/// Options of a ban.
#[derive(Debug, Clone, Default)]
pub struct BanOptions {
    pub ttl: Option<Duration>,
    pub reason: String,
    /// Allow bans that cover everything, loopback or this host.
    pub force: bool,
    /// `Manual` for the CLI, `Auto` for the response policy.
    pub kind: Kind,
}

/// One row of `netmon list`.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    /// `ban` or `allow`.
    pub list: &'static str,
    pub entry: String,
    pub family: &'static str,
    pub prefix: u8,
    /// `manual`, `import`, `auto` (bans only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    pub reason: String,
    pub uid: u32,
    pub added: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_hit: Option<String>,
    /// Rate limits only: `pps` and `burst`, or `bytes_per_sec` and `burst_bytes`.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
}

fn family(n: &Net) -> &'static str {
    if n.is_v4() { "ipv4" } else { "ipv6" }
}

impl DropList {
    pub fn new(pin_dir: impl Into<PathBuf>, store_dir: impl Into<PathBuf>) -> Self {
        Self {
            pin_dir: pin_dir.into(),
            store_dir: store_dir.into(),
        }
    }

    /// Whether a loaded program enforces this drop list (`droplist::enforced`).
    pub fn enforced(&self) -> Option<bool> {
        super::droplist::enforced(&self.pin_dir)
    }

    fn store(&self) -> Store {
        Store::new(&self.store_dir)
    }

    /// Saves `new`, the state after a change already made in `maps`. Where the save fails
    /// (a full disk), the kernel's drop list is put back as `old`, still the state file's,
    /// says: what drops is always what `netmon list` shows and `netmon unban` can lift.
    fn commit(store: &Store, maps: &mut DropMaps, old: &State, new: &State) -> Result<()> {
        let Err(e) = store.save(new) else {
            return Ok(());
        };
        Err(match maps.sync(old) {
            Ok(()) => e.context(
                "nothing changed: the state file could not be saved, so the kernel's drop list \
                 was put back as the file has it",
            ),
            Err(undo) => e.context(format!(
                "the state file could not be saved, and putting the kernel's drop list back \
                 as the file has it failed too ({undo:#}); `netmon run` does at its start"
            )),
        })
    }

    /// Appends `rec` to the audit log, after the change it records was made and saved.
    fn record(store: &Store, rec: &AuditRecord) -> Result<()> {
        store
            .audit(rec)
            .context("the change is made and saved, but the audit log could not record it")
    }

    fn check_danger(nets: &[Net], force: bool) -> Result<()> {
        if force {
            return Ok(());
        }
        let own = own_addresses();
        let bad: Vec<String> = nets.iter().filter_map(|n| danger(n, &own)).collect();
        if let Some(first) = bad.first() {
            bail!(
                "refusing to ban: {first}{}; add --force if you really mean it",
                if bad.len() > 1 {
                    format!(" (and {} more)", bad.len() - 1)
                } else {
                    String::new()
                }
            );
        }
        Ok(())
    }

    pub fn ban(&self, net: Net, opts: &BanOptions) -> Result<BanEntry> {
        Self::check_danger(&[net], opts.force)?;
        let store = self.store();
        let _lock = store.lock()?;
        let mut state = store.load()?;
        let now = now_ms();
        let entry = BanEntry {
            net,
            kind: opts.kind,
            reason: opts.reason.clone(),
            uid: current_uid(),
            added_ms: now,
            expires_ms: opts.ttl.map(|t| now + t.as_millis() as u64),
        };
        let mut maps = DropMaps::open(&self.pin_dir)?;
        let old = state.clone();
        let existing = state.bans.iter().position(|b| b.net == net);
        if existing.is_none() {
            maps.check_capacity(std::slice::from_ref(&entry), &state.bans)?;
        }
        maps.write_ban(state.generation, 3 - state.generation, &entry)?;
        match existing {
            Some(i) => state.bans[i] = entry.clone(),
            None => state.bans.push(entry.clone()),
        }
        maps.set_flags(flags_for(&state, now))?;
        maps.set_generation(state.generation)?;
        Self::commit(&store, &mut maps, &old, &state)?;
        let action = if opts.kind == Kind::Auto {
            "auto-ban"
        } else {
            "ban"
        };
        let mut rec = AuditRecord::new(action, net, &opts.reason);
        rec.expires = entry.expires_ms.map(rfc3339);
        Self::record(&store, &rec)?;
        Ok(entry)
    }

    /// Limits what `net` (a single address) sends to `rate`, in the kernel (ingress).
    pub fn limit(&self, net: Net, rate: Rate, opts: &BanOptions) -> Result<LimitEntry> {
        if !net.is_host() {
            bail!("{net}: rate limits are per source address; give a single address, not a prefix");
        }
        Self::check_danger(&[net], opts.force)?;
        let store = self.store();
        let _lock = store.lock()?;
        let mut state = store.load()?;
        let now = now_ms();
        let entry = LimitEntry {
            net,
            rate,
            kind: opts.kind,
            reason: opts.reason.clone(),
            uid: current_uid(),
            added_ms: now,
            expires_ms: opts.ttl.map(|t| now + t.as_millis() as u64),
        };
        let mut maps = DropMaps::open(&self.pin_dir)?;
        let old = state.clone();
        maps.write_limit(&entry)?;
        match state.limits.iter().position(|l| l.net == net) {
            Some(i) => state.limits[i] = entry.clone(),
            None => state.limits.push(entry.clone()),
        }
        maps.set_flags(flags_for(&state, now))?;
        Self::commit(&store, &mut maps, &old, &state)?;
        let action = if opts.kind == Kind::Auto {
            "auto-limit"
        } else {
            "limit"
        };
        let mut rec = AuditRecord::new(action, net, &format!("{rate}; {}", opts.reason));
        rec.expires = entry.expires_ms.map(rfc3339);
        Self::record(&store, &rec)?;
        Ok(entry)
    }

    pub fn unlimit(&self, net: Net) -> Result<()> {
        let store = self.store();
        let _lock = store.lock()?;
        let mut state = store.load()?;
        let Some(i) = state.limits.iter().position(|l| l.net == net) else {
            bail!("{net} has no rate limit (see `netmon list`)");
        };
        let mut maps = DropMaps::open(&self.pin_dir)?;
        let old = state.clone();
        let removed = state.limits.remove(i);
        maps.set_flags(flags_for(&state, now_ms()))?;
        maps.remove_limit(&net)?;
        Self::commit(&store, &mut maps, &old, &state)?;
        Self::record(&store, &AuditRecord::new("unlimit", net, &removed.reason))
    }

    pub fn unban(&self, net: Net) -> Result<()> {
        let store = self.store();
        let _lock = store.lock()?;
        let mut state = store.load()?;
        let Some(i) = state.bans.iter().position(|b| b.net == net) else {
            bail!("{net} is not banned (see `netmon list`)");
        };
        let mut maps = DropMaps::open(&self.pin_dir)?;
        let old = state.clone();
        maps.remove_ban(state.generation, &net)?;
        let removed = state.bans.remove(i);
        maps.set_flags(flags_for(&state, now_ms()))?;
        Self::commit(&store, &mut maps, &old, &state)?;
        Self::record(&store, &AuditRecord::new("unban", net, &removed.reason))
    }

    pub fn allow(&self, net: Net, reason: &str) -> Result<()> {
        let store = self.store();
        let _lock = store.lock()?;
        let mut state = store.load()?;
        let mut maps = DropMaps::open(&self.pin_dir)?;
        let old = state.clone();
        maps.write_allow(&net)?;
        let entry = AllowEntry {
            net,
            reason: reason.to_string(),
            uid: current_uid(),
            added_ms: now_ms(),
        };
        match state.allows.iter().position(|a| a.net == net) {
            Some(i) => state.allows[i] = entry,
            None => state.allows.push(entry),
        }
        maps.set_flags(flags_for(&state, now_ms()))?;
        Self::commit(&store, &mut maps, &old, &state)?;
        Self::record(&store, &AuditRecord::new("allow", net, reason))
    }

    pub fn disallow(&self, net: Net) -> Result<()> {
        let store = self.store();
        let _lock = store.lock()?;
        let mut state = store.load()?;
        let Some(i) = state.allows.iter().position(|a| a.net == net) else {
            bail!("{net} is not on the allow list (see `netmon list`)");
        };
        let mut maps = DropMaps::open(&self.pin_dir)?;
        let old = state.clone();
        state.allows.remove(i);
        maps.set_flags(flags_for(&state, now_ms()))?;
        maps.remove_allow(&net)?;
        Self::commit(&store, &mut maps, &old, &state)?;
        Self::record(&store, &AuditRecord::new("disallow", net, ""))
    }

    /// Replaces the imported set with the entries of `path`, atomically in the kernel.
    /// Returns how many entries the list held, and where the single-address bans now in force
    /// (the list's and the manual ones) are in the kernel (`DropMaps::exact_placement`).
    pub fn import(&self, path: &Path, opts: &BanOptions) -> Result<(usize, [usize; 3])> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the list {}", path.display()))?;
        let mut nets = parse_list(&text, &path.display().to_string())?;
        nets.sort();
        nets.dedup();
        Self::check_danger(&nets, opts.force)?;
        let store = self.store();
        let _lock = store.lock()?;
        let old = store.load()?;
        let now = now_ms();
        let uid = current_uid();
        let mut new = old.clone();
        new.bans.retain(|b| b.kind != Kind::Import);
        let manual: std::collections::HashSet<Net> = new.bans.iter().map(|b| b.net).collect();
        let count = nets.len();
        new.bans.extend(
            nets.into_iter()
                .filter(|n| !manual.contains(n))
                .map(|net| BanEntry {
                    net,
                    kind: Kind::Import,
                    reason: opts.reason.clone(),
                    uid,
                    added_ms: now,
                    expires_ms: opts.ttl.map(|t| now + t.as_millis() as u64),
                }),
        );
        new.import = Some(ImportInfo {
            source: path.display().to_string(),
            count,
            loaded_ms: now,
        });
        let mut maps = DropMaps::open(&self.pin_dir)?;
        // The old set stays in force while the new one is written next to it.
        maps.check_capacity(&new.bans, &old.bans)?;
        maps.swap(&old, &mut new)?;
        Self::commit(&store, &mut maps, &old, &new)?;
        let mut rec = AuditRecord::new("import", path.display(), &opts.reason);
        rec.count = Some(count);
        Self::record(&store, &rec)?;
        Ok((count, maps.exact_placement()))
    }

    /// Every entry with its kernel hit counters; with `only`, the entries that share an
    /// address with it (the kernel counters are read for those alone).
    pub fn list(&self, only: Option<&Net>) -> Result<Vec<Listed>> {
        let wanted = |n: &Net| only.is_none_or(|o| o.overlaps(n));
        let state = self.store().load()?;
        let mut maps = DropMaps::open(&self.pin_dir)?;
        let now_mono = crate::drain::monotonic_ns();
        let now = now_ms();
        let mono_to_wall = |ns: u64| now.saturating_sub(now_mono.saturating_sub(ns) / 1_000_000);
        let mut out = Vec::new();
        for b in state.bans.iter().filter(|b| wanted(&b.net)) {
            let v = maps.hits(state.generation, &b.net)?.unwrap_or_default();
            out.push(Listed {
                list: "ban",
                entry: b.net.to_string(),
                family: family(&b.net),
                prefix: b.net.prefix(),
                kind: Some(b.kind),
                reason: b.reason.clone(),
                uid: b.uid,
                added: rfc3339(b.added_ms),
                expires: b.expires_ms.map(rfc3339),
                dropped_packets: v.packets,
                dropped_bytes: v.bytes,
                last_hit: (v.last_hit_ns != 0).then(|| rfc3339(mono_to_wall(v.last_hit_ns))),
                rate: None,
            });
        }
        for l in state.limits.iter().filter(|l| wanted(&l.net)) {
            let v = maps.limit_hits(&l.net).unwrap_or_default();
            out.push(Listed {
                list: "limit",
                entry: l.net.to_string(),
                family: family(&l.net),
                prefix: l.net.prefix(),
                kind: Some(l.kind),
                reason: l.reason.clone(),
                uid: l.uid,
                added: rfc3339(l.added_ms),
                expires: l.expires_ms.map(rfc3339),
                dropped_packets: v.packets,
                dropped_bytes: v.bytes,
                last_hit: (v.last_hit_ns != 0).then(|| rfc3339(mono_to_wall(v.last_hit_ns))),
                rate: Some(l.rate),
            });
        }
        for a in state.allows.iter().filter(|a| wanted(&a.net)) {
            out.push(Listed {
                list: "allow",
                entry: a.net.to_string(),
                family: family(&a.net),
                prefix: a.net.prefix(),
                kind: None,
                reason: a.reason.clone(),
                uid: a.uid,
                added: rfc3339(a.added_ms),
                expires: None,
                dropped_packets: 0,
                dropped_bytes: 0,
                last_hit: None,
                rate: None,
            });
        }
        Ok(out)
    }

    /// Removes bans whose TTL has passed (the kernel already ignores them); returns them.
    pub fn expire(&self, maps: &mut DropMaps) -> Result<Vec<Net>> {
        let store = self.store();
        let _lock = store.lock()?;
        let mut state = store.load()?;
        let now = now_ms();
        let (gone, kept): (Vec<BanEntry>, Vec<BanEntry>) = state
            .bans
            .drain(..)
            .partition(|b| b.expires_ms.is_some_and(|e| e <= now));
        state.bans = kept;
        let (gone_limits, kept_limits): (Vec<LimitEntry>, Vec<LimitEntry>) = state
            .limits
            .drain(..)
            .partition(|l| l.expires_ms.is_some_and(|e| e <= now));
        state.limits = kept_limits;
        if gone.is_empty() && gone_limits.is_empty() {
            return Ok(Vec::new());
        }
        maps.set_flags(flags_for(&state, now) | flags_for_bans(&gone))?;
        maps.remove_bans(state.generation, gone.iter().map(|b| &b.net))?;
        // Expired limits no longer act in the kernel: remove them after the flags say so.
        maps.set_flags(flags_for(&state, now))?;
        for l in &gone_limits {
            maps.remove_limit(&l.net)?;
        }
        store.save(&state)?;
        for b in &gone {
            store.audit(&AuditRecord::new("expire", b.net, &b.reason))?;
        }
        for l in &gone_limits {
            store.audit(&AuditRecord::new("expire-limit", l.net, &l.reason))?;
        }
        Ok(gone
            .into_iter()
            .map(|b| b.net)
            .chain(gone_limits.into_iter().map(|l| l.net))
            .collect())
    }

    /// At daemon start, before any program is attached: read the state (refusing to go on
    /// with a corrupt one), drop what expired while it was down, and make the kernel maps
    /// equal to it.
    pub fn apply_on_start(&self, maps: &mut DropMaps) -> Result<State> {
        let store = self.store();
        let _lock = store.lock()?;
        let state = store
            .load()
            .context("refusing to start without the drop list")?;
        maps.sync(&state)?;
        Ok(state)
    }

    /// Appends a record to the audit log (for actions outside the drop list: `kill`).
    pub fn audit(&self, rec: &AuditRecord) -> Result<()> {
        self.store().audit(rec)
    }

    pub fn load_state(&self) -> Result<State> {
        self.store().load()
    }

    pub fn state_path(&self) -> PathBuf {
        self.store().state_path()
    }
}

fn flags_for_bans(bans: &[BanEntry]) -> u64 {
    let s = State {
        bans: bans
            .iter()
            .cloned()
            .map(|mut b| {
                b.expires_ms = None;
                b
            })
            .collect(),
        ..State::default()
    };
    flags_for(&s, 0)
}

/// The addresses this host would refuse to ban without `--force` (for messages and tests).
pub fn own_addrs() -> Vec<IpAddr> {
    own_addresses()
}
