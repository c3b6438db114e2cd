//! Daemon settings: defaults, then the TOML file (`--config`), then command-line flags.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde::Deserialize;

use crate::load::MapSizes;

/// The API's default address; the README names it.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9743";
pub const DEFAULT_RUN_DIR: &str = "/run/netmon";
/// bpffs directory of the pinned drop-list maps and program links.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/netmon";
/// Drop-list state file and audit log.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/netmon";

/// `--config FILE`. Unknown keys are errors, so a typo never silently falls back to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub interfaces: Option<Vec<String>>,
    pub listen: Option<String>,
    pub interval: Option<String>,
    pub idle_timeout: Option<String>,
    pub flow_map_size: Option<u32>,
    pub socket_map_size: Option<u32>,
    pub port_map_size: Option<u32>,
    pub run_dir: Option<PathBuf>,
    pub pin_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    /// `auto`, `driver` or `skb`.
    pub xdp_attach: Option<String>,
    /// `auto`, `tcx` or `clsact`.
    pub tc_attach: Option<String>,
    /// `per-cpu` or `lru`: where the programs count flows.
    pub flow_table: Option<String>,
    /// `auto` or `per-send`: how UDP senders are attributed.
    pub udp_hook: Option<String>,
    /// Command names (and as many cgroup paths) with a Prometheus series of their own; the
    /// rest are `process="other"` (`cgroup="other"`).
    pub process_top_k: Option<usize>,
    /// A command name's series is removed after this long without traffic, e.g. `10m`.
    pub process_series_ttl: Option<String>,
    /// The threat configuration file (scoring, detection, custom rules).
    pub threat_config: Option<PathBuf>,
    /// `off` or `prefix`: how the HTTP API shows remote addresses.
    pub anonymize: Option<String>,
    /// A file holding the token every API and /metrics request must bring as
    /// `Authorization: Bearer <token>`.
    pub api_token_file: Option<PathBuf>,
    /// HTTPS: the certificate (PEM, chain after it) and its private key.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl FileConfig {
    pub fn parse(text: &str, path: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| anyhow::anyhow!("config file {path}: {e}"))
    }

    pub fn read(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }
}

/// Resolved settings for `netmon run`.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Empty: every up, non-loopback interface.
    pub interfaces: Vec<String>,
    pub listen: SocketAddr,
    pub interval: Duration,
    pub idle_timeout: Duration,
    pub sizes: MapSizes,
    pub run_dir: PathBuf,
    pub pin_dir: PathBuf,
    pub state_dir: PathBuf,
    pub xdp_attach: crate::load::XdpAttach,
    pub tc_mode: crate::load::TcMode,
    pub udp_hook: crate::load::UdpHook,
    pub flow_table: crate::load::FlowTable,
    pub process_series: crate::metrics::SeriesConfig,
    pub threat: crate::classify::config::ThreatConfig,
    /// How the HTTP API shows remote addresses.
    pub anonymize: crate::anon::Anonymize,
    /// The bearer token the API asks of every request but /healthz; None: no check.
    pub api_token: Option<String>,
    /// HTTPS for the API and /metrics; None: plain HTTP.
    pub tls: Option<std::sync::Arc<crate::tls::CertFiles>>,
}

/// The HTTPS settings from a certificate and a key file: both or neither.
pub fn tls_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<std::sync::Arc<crate::tls::CertFiles>>> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(c), Some(k)) => crate::tls::CertFiles::load(&c, &k).map(Some),
        (Some(_), None) => bail!("--tls-cert needs --tls-key (the certificate's private key)"),
        (None, Some(_)) => bail!("--tls-key needs --tls-cert (the certificate it goes with)"),
    }
}

/// The shortest token `--api-token-file` takes: 16 bytes, so a guess is hopeless.
pub const MIN_TOKEN_LEN: usize = 16;

/// The API token in `path`: its first line, surrounding whitespace removed. An unreadable
/// file, or a token shorter than MIN_TOKEN_LEN or with whitespace inside, is an error that
/// names the file.
pub fn read_token(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the API token file {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.len() < MIN_TOKEN_LEN || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!(
            "the API token file {} must hold one token of at least {MIN_TOKEN_LEN} printable \
             characters without spaces (e.g. `openssl rand -hex 32 > {}`)",
            path.display(),
            path.display()
        );
    }
    Ok(token.to_string())
}

/// `500ms`, `1s`, `2m`, `1h`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .with_context(|| format!("bad duration `{s}`: expected e.g. 500ms, 1s, 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => bail!("bad duration unit in `{s}`: use ms, s, m, h or d"),
    };
    if !(secs.is_finite() && secs > 0.0) {
        bail!("duration `{s}` must be positive");
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn parse_listen(s: &str) -> Result<SocketAddr> {
    s.parse().with_context(|| {
        format!("bad listen address `{s}`: expected IP:PORT, e.g. {DEFAULT_LISTEN}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert!(parse_duration("0s").is_err());
        assert!(
            parse_duration("1y")
                .unwrap_err()
                .to_string()
                .contains("unit")
        );
        assert!(parse_duration("abc").is_err());
    }

    #[test]
    fn config_file_errors_name_file_and_line() {
        let ok =
            FileConfig::parse("interfaces = [\"eth0\"]\ninterval = \"2s\"\n", "x.toml").unwrap();
        assert_eq!(ok.interfaces.unwrap(), vec!["eth0"]);
        let err = FileConfig::parse(
            "interval = \"1s\"\nintervall = \"2s\"\n",
            "/etc/netmon.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/etc/netmon.toml"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("intervall"), "{err}");
    }

    /// The example in README.md's "Using it" parses, key for key, and its UDP hook choice is
    /// one the loader takes.
    #[test]
    fn the_readme_example_config_parses() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("```toml\ninterfaces = ")
            .expect("README has the example config");
        let body = &readme[start + "```toml\n".len()..];
        let example = &body[..body.find("```").expect("the example ends")];
        let cfg = FileConfig::parse(example, "README.md").unwrap();
        assert_eq!(cfg.interfaces.unwrap(), vec!["eth0", "eth1"]);
        let hook: crate::load::UdpHook = cfg.udp_hook.unwrap().parse().unwrap();
        assert_eq!(hook, crate::load::UdpHook::Auto);
        let anon: crate::anon::Anonymize = cfg.anonymize.unwrap().parse().unwrap();
        assert_eq!(anon, crate::anon::Anonymize::Off);
        let err = "each-send".parse::<crate::load::UdpHook>().unwrap_err();
        assert!(err.to_string().contains("`each-send`"), "{err}");
    }

    #[test]
    fn api_tokens_are_read_from_the_first_line_and_checked() {
        let tmp = crate::test_support::TempDir::new("token-test");
        let dir = &tmp.0;
        let file = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let good = "0123456789abcdef0123";
        assert_eq!(
            read_token(&file("ok", &format!("  {good}\n"))).unwrap(),
            good
        );
        for (name, text) in [
            ("short", "abc\n"),
            ("empty", ""),
            ("space", "0123456789 abcdef01\n"),
        ] {
            let e = read_token(&file(name, text)).unwrap_err().to_string();
            assert!(e.contains(name) && e.contains("at least 16"), "{e}");
        }
        let e = format!("{:#}", read_token(&dir.join("missing")).unwrap_err());
        assert!(e.contains("missing") && e.contains("No such file"), "{e}");
    }

    #[test]
    fn tls_files_come_in_pairs_and_errors_name_them() {
        let e = tls_files(Some("/x/cert.pem".into()), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--tls-key"), "{e}");
        let e = tls_files(None, Some("/x/key.pem".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--tls-cert"), "{e}");
        assert!(tls_files(None, None).unwrap().is_none());
        let e = format!(
            "{:#}",
            tls_files(
                Some("/nonexistent/cert.pem".into()),
                Some("/x/key.pem".into())
            )
            .unwrap_err()
        );
        assert!(e.contains("/nonexistent/cert.pem"), "{e}");
        let tmp = crate::test_support::TempDir::new("tls-test");
        let empty = tmp.0.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = format!(
            "{:#}",
            tls_files(Some(empty.clone()), Some(empty)).unwrap_err()
        );
        assert!(
            e.contains("empty.pem") && e.contains("no certificate"),
            "{e}"
        );
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen("127.0.0.1:0").unwrap().port(), 0);
        assert!(parse_listen("localhost").is_err());
    }
}
