//! Files that hold addresses and what was done about them (the drop list and its backup, the
//! audit log, the forensic event log, exports) are created readable and writable by their
//! owner alone (0600), and the directories netmon creates for them searchable by their owner
//! alone (0700), whatever the umask. A file that already exists keeps its mode, and a file
//! netmon replaces (the drop list's atomic rewrite, a rotated event log) takes the mode of
//! the one it replaces: an operator who opened the event log to a log shipper's group keeps
//! that.

use std::{
    fs::{DirBuilder, File, OpenOptions, Permissions},
    io,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::Path,
};

/// The mode of a file netmon creates (before any umask, which can only narrow it).
pub const FILE_MODE: u32 = 0o600;
/// The mode of a directory netmon creates.
pub const DIR_MODE: u32 = 0o700;

/// Creates `dir` and its missing parents (each 0700); an existing directory is left as it is.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Opens `path` for appending, created 0600 if missing.
pub fn append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Creates (or truncates) `path` for writing, created 0600 if missing.
pub fn create(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)
}

/// The permissions of `path` if it exists: what a file replacing it should keep.
pub fn mode_of(path: &Path) -> Option<Permissions> {
    std::fs::metadata(path).ok().map(|m| m.permissions())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::test_support::TempDir;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn created_owner_only_whatever_the_umask_and_existing_modes_kept() {
        // The usual umask, which leaves a plain create 0644 and a directory 0755.
        // SAFETY: umask only sets the process's file-creation mask.
        unsafe { libc::umask(0o022) };
        let t = TempDir::new("files");
        let dir = t.0.join("a/b");
        private_dir(&dir).unwrap();
        assert_eq!((mode(&t.0.join("a")), mode(&dir)), (0o700, 0o700));
        let (log, out) = (dir.join("events.jsonl"), dir.join("export.csv"));
        drop(append(&log).unwrap());
        drop(create(&out).unwrap());
        assert_eq!((mode(&log), mode(&out)), (0o600, 0o600));
        let plain = dir.join("plain");
        drop(File::create(&plain).unwrap());
        assert_eq!(mode(&plain), 0o644, "the umask is not what this test sets");

        // An operator's mode on an existing file or directory stays.
        std::fs::set_permissions(&log, Permissions::from_mode(0o640)).unwrap();
        std::fs::set_permissions(&dir, Permissions::from_mode(0o750)).unwrap();
        drop(append(&log).unwrap());
        private_dir(&dir).unwrap();
        assert_eq!((mode(&log), mode(&dir)), (0o640, 0o750));
        assert_eq!(mode_of(&log).unwrap().mode() & 0o777, 0o640);
        assert!(mode_of(&dir.join("missing")).is_none());
    }
}
