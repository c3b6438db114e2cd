//! cgroup v2 ids, as the kernel hooks record a socket owner's (`bpf_get_current_cgroup_id`),
//! to the cgroup's path in the hierarchy: the systemd unit, container or pod a process runs
//! in (`/system.slice/nginx.service`, `/system.slice/docker-<id>.scope`,
//! `/kubepods.slice/...`), which says more on a shared server than the command name alone.
//!
//! A cgroup's id is its directory's kernfs node id, and kernfs gives out file handles made
//! of that id: `open_by_handle_at` on the hierarchy's root opens the directory from the id
//! alone, and `/proc/self/fd` names it. Without `CAP_DAC_READ_SEARCH` (which that call needs)
//! the hierarchy is walked instead, matching directory inode numbers (the same ids on 64-bit
//! hosts), at most once per `WALK_EVERY`.

use std::{
    collections::HashMap,
    fs::File,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

/// `FILEID_KERNFS`: the handle type of a kernfs node (cgroupfs), whose handle is the node's
/// 64-bit id.
const FILEID_KERNFS: i32 = 0xfe;

/// A cgroup not found is looked for again after this long (the walk may have run before it
/// was made).
const RETRY_AFTER: Duration = Duration::from_secs(10);
/// The hierarchy is walked at most this often.
const WALK_EVERY: Duration = Duration::from_secs(10);
/// Paths kept at most; past it the cache starts again (ids are never reused, so a cache of a
/// host that makes and removes cgroups all day would otherwise only grow).
const MAX_KEPT: usize = 65_536;
/// Directories a walk reads at most.
const MAX_WALK: usize = 200_000;

/// `struct file_handle` with the 8 bytes of a kernfs handle.
#[repr(C)]
struct KernfsHandle {
    handle_bytes: u32,
    handle_type: i32,
    id: u64,
}

/// What an id resolved to: its path, or when it was last looked for in vain.
enum Known {
    Path(Arc<str>),
    Missing(Instant),
}

/// Names cgroups by id, keeping what it found.
pub struct Resolver {
    /// The hierarchy's root, opened, and its path as `/proc/self/fd` gives it (the prefix
    /// taken off every path found).
    root: Option<(File, String)>,
    known: HashMap<u64, Known>,
    /// Whether `open_by_handle_at` works here; false after it failed for want of privilege
    /// or of support: the walk then.
    by_handle: bool,
    last_walk: Option<Instant>,
}

impl Resolver {
    /// Names cgroups of the hierarchy whose root `root` is open (None: of no hierarchy, so
    /// every lookup fails).
    pub fn new(root: Option<File>) -> Self {
        let root = root.and_then(|f| {
            let prefix = fd_path(&f)?;
            Some((f, prefix))
        });
        Self {
            root,
            known: HashMap::new(),
            by_handle: true,
            last_walk: None,
        }
    }

    /// The path of cgroup `id` below the hierarchy's root (`/` for the root itself); None
    /// for 0 (no cgroup recorded), a cgroup removed before it was looked for, or no
    /// hierarchy.
    pub fn path(&mut self, id: u64) -> Option<Arc<str>> {
        if id == 0 {
            return None;
        }
        match self.known.get(&id) {
            Some(Known::Path(p)) => return Some(p.clone()),
            Some(Known::Missing(at)) if at.elapsed() < RETRY_AFTER => return None,
            _ => {}
        }
        let found = self.look_up(id);
        if self.known.len() >= MAX_KEPT {
            self.known.clear();
        }
        let k = match &found {
            Some(p) => Known::Path(p.clone()),
            None => Known::Missing(Instant::now()),
        };
        self.known.insert(id, k);
        found
    }

    fn look_up(&mut self, id: u64) -> Option<Arc<str>> {
        let (root, prefix) = self.root.as_ref()?;
        if self.by_handle {
            match open_by_id(root, id) {
                Ok(dir) => return below(prefix, &fd_path(&dir)?),
                // Gone (or never a cgroup of this hierarchy).
                Err(e) if e.raw_os_error() == Some(libc::ESTALE) => return None,
                Err(e) => {
                    tracing::info!("naming cgroups by handle: {e}; walking the hierarchy instead");
                    self.by_handle = false;
                }
            }
        }
        if self.last_walk.is_some_and(|t| t.elapsed() < WALK_EVERY) {
            return None;
        }
        self.last_walk = Some(Instant::now());
        // Through the root's descriptor: a root mounted for a moment and detached (see
        // `load::cgroup2_root`) has no path of its own.
        let base = format!("/proc/self/fd/{}", self.root.as_ref()?.0.as_raw_fd());
        let mut found = None;
        let known = &mut self.known;
        walk(Path::new(&base), &mut |ino, path| {
            let Some(p) = below(&base, &path.to_string_lossy()) else {
                return;
            };
            if ino == id {
                found = Some(p.clone());
            }
            if known.len() < MAX_KEPT {
                known.insert(ino, Known::Path(p));
            }
        });
        found
    }
}

/// Opens the directory of cgroup `id` from its kernfs handle.
fn open_by_id(root: &File, id: u64) -> std::io::Result<OwnedFd> {
    let mut h = KernfsHandle {
        handle_bytes: 8,
        handle_type: FILEID_KERNFS,
        id,
    };
    // SAFETY: `h` is a `struct file_handle` with `handle_bytes` bytes of handle after its
    // header, live for the call.
    let fd = unsafe {
        libc::open_by_handle_at(
            root.as_raw_fd(),
            (&raw mut h).cast::<libc::file_handle>(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor just opened, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The path an open file descriptor stands for.
fn fd_path(f: &impl std::os::fd::AsRawFd) -> Option<String> {
    let p = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).ok()?;
    Some(p.to_string_lossy().into_owned())
}

/// `path` below the root at `prefix`, starting with `/`; None when it is not below it.
fn below(prefix: &str, path: &str) -> Option<Arc<str>> {
    let rest = path.strip_prefix(prefix.trim_end_matches('/'))?;
    if rest.is_empty() {
        return Some("/".into());
    }
    rest.starts_with('/').then(|| rest.into())
}

/// Calls `f` with the inode number and path of `dir` and of every directory below it
/// (depth first, at most `MAX_WALK`); unreadable directories are skipped.
fn walk(dir: &Path, f: &mut impl FnMut(u64, &Path)) {
    use std::os::unix::fs::MetadataExt as _;
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0;
    while let Some(d) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&d) else {
            continue;
        };
        f(meta.ino(), &d);
        seen += 1;
        if seen >= MAX_WALK {
            return;
        }
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
}

/// The daemon's resolver, on the cgroup v2 hierarchy it attaches its cgroup hooks to
/// (opened on first use).
fn shared() -> &'static Mutex<Resolver> {
    static RESOLVER: OnceLock<Mutex<Resolver>> = OnceLock::new();
    RESOLVER.get_or_init(|| {
        let root = crate::load::cgroup2_root()
            .map_err(|e| {
                tracing::warn!("cgroup paths unavailable, cgroup labels read \"unknown\": {e:#}")
            })
            .ok();
        Mutex::new(Resolver::new(root))
    })
}

/// The path of cgroup `id` (see `Resolver::path`), through the daemon's resolver.
pub fn path(id: u64) -> Option<Arc<str>> {
    if id == 0 {
        return None;
    }
    shared().lock().expect("lock not poisoned").path(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_taken_below_the_root() {
        assert_eq!(
            below("/sys/fs/cgroup", "/sys/fs/cgroup").as_deref(),
            Some("/")
        );
        assert_eq!(
            below("/sys/fs/cgroup", "/sys/fs/cgroup/system.slice/a.service").as_deref(),
            Some("/system.slice/a.service")
        );
        // A detached mount's root reads as "/".
        assert_eq!(below("/", "/user.slice").as_deref(), Some("/user.slice"));
        assert_eq!(below("/", "/").as_deref(), Some("/"));
        assert_eq!(below("/sys/fs/cgroup", "/sys/fs/cgroupx/a"), None);
        assert_eq!(below("/sys/fs/cgroup", "/elsewhere"), None);
    }

    /// A cgroup made here is named by its id, through its handle and through the walk, and
    /// one removed is not.
    #[test]
    #[ignore = "privileged: needs root and a cgroup v2 hierarchy; run by `cargo xtask test`"]
    fn a_cgroup_is_named_by_its_id() {
        use std::os::unix::fs::MetadataExt as _;
        let root = crate::load::cgroup2_root().expect("a cgroup v2 hierarchy");
        let base = format!("/proc/self/fd/{}", root.as_raw_fd());
        let leaf = format!("netmon-unit-{}", std::process::id());
        let dir = Path::new(&base).join(&leaf);
        std::fs::create_dir(&dir).unwrap();
        let id = std::fs::metadata(&dir).unwrap().ino();
        let want = format!("/{leaf}");
        let mut by_handle = Resolver::new(root.try_clone().ok());
        let mut by_walk = Resolver::new(root.try_clone().ok());
        by_walk.by_handle = false;
        let named = [by_handle.path(id), by_walk.path(id)];
        // The root's own id.
        let root_id = root.metadata().unwrap().ino();
        let root_named = by_handle.path(root_id);
        std::fs::remove_dir(&dir).unwrap();
        assert_eq!(named[0].as_deref(), Some(want.as_str()), "by handle");
        assert!(by_handle.by_handle, "open_by_handle_at works as root");
        assert_eq!(named[1].as_deref(), Some(want.as_str()), "by walk");
        assert_eq!(root_named.as_deref(), Some("/"));
        // Kept once named; a fresh resolver finds nothing of a removed cgroup.
        assert_eq!(by_handle.path(id).as_deref(), Some(want.as_str()));
        assert_eq!(Resolver::new(Some(root)).path(id), None);
    }

    #[test]
    fn no_hierarchy_names_nothing() {
        let mut r = Resolver::new(None);
        assert_eq!(r.path(0), None);
        assert_eq!(r.path(12345), None);
    }
}
