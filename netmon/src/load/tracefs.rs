//! Tracepoint record layouts from tracefs `format` files, and the tracefs mount itself.

use std::{collections::HashMap, path::PathBuf};

use anyhow::{Context as _, Result, bail};

/// Where tracefs is mounted: `/sys/kernel/tracing`, or the old debugfs location.
pub fn tracefs_root() -> Option<PathBuf> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("events").is_dir())
}

/// Field name -> (offset, size) from a tracepoint `format` file.
pub fn parse_format(text: &str) -> HashMap<String, (u32, u32)> {
    let mut fields = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut parts = rest.split(';').map(str::trim);
        let Some(decl) = parts.next() else { continue };
        let name = decl
            .split_whitespace()
            .last()
            .unwrap_or("")
            .split('[')
            .next()
            .unwrap_or("")
            .to_string();
        let mut offset = None;
        let mut size = None;
        for p in parts {
            if let Some(v) = p.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = p.strip_prefix("size:") {
                size = v.parse().ok();
            }
        }
        if let (Some(o), Some(s)) = (offset, size) {
            fields.insert(name, (o, s));
        }
    }
    fields
}

/// The layout of one tracepoint, read from the running kernel.
pub struct Format {
    pub event: String,
    fields: HashMap<String, (u32, u32)>,
}

impl Format {
    pub fn read(category: &str, name: &str) -> Result<Self> {
        let root = tracefs_root().context(
            "tracefs is not mounted: mount it with `mount -t tracefs tracefs /sys/kernel/tracing`",
        )?;
        let path = root.join("events").join(category).join(name).join("format");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (no such tracepoint?)", path.display()))?;
        Ok(Self {
            event: format!("{category}:{name}"),
            fields: parse_format(&text),
        })
    }

    /// Offset of `field`, checking its size.
    pub fn offset(&self, field: &str, size: u32) -> Result<u32> {
        match self.fields.get(field) {
            Some(&(o, s)) if s == size => Ok(o),
            Some(&(_, s)) => bail!(
                "tracepoint {} field `{field}` has size {s}, expected {size}",
                self.event
            ),
            None => bail!("tracepoint {} has no field `{field}`", self.event),
        }
    }
}

/// Mounts tracefs on /sys/kernel/tracing when no tracefs is visible. Needed where it is not
/// mounted at boot, and under `ip netns exec`, which remounts /sys in a private mount
/// namespace without it.
pub fn ensure_mounted() -> Result<PathBuf> {
    if let Some(p) = tracefs_root() {
        return Ok(p);
    }
    let target = "/sys/kernel/tracing";
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (src, tgt, fstype) = (c("tracefs"), c(target), c("tracefs"));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| {
            format!("tracefs is not mounted and mounting it on {target} failed; mount it with `mount -t tracefs tracefs {target}`")
        });
    }
    Ok(PathBuf::from(target))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INET_SOCK_SET_STATE: &str = "name: inet_sock_set_state
ID: 1404
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;
";

    #[test]
    fn parses_fields_and_arrays() {
        let f = parse_format(INET_SOCK_SET_STATE);
        assert_eq!(f["skaddr"], (8, 8));
        assert_eq!(f["protocol"], (30, 2));
        assert_eq!(f["saddr_v6"], (40, 16));
        assert_eq!(f["common_pid"], (4, 4));
        let fmt = Format {
            event: "sock:inet_sock_set_state".into(),
            fields: f,
        };
        assert_eq!(fmt.offset("daddr", 4).unwrap(), 36);
        let err = fmt.offset("daddr", 8).unwrap_err().to_string();
        assert!(err.contains("size 4, expected 8"), "{err}");
        assert!(fmt.offset("nope", 4).is_err());
    }
}
