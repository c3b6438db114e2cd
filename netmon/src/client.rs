//! A minimal blocking HTTP/1.0 GET, for the CLI commands that ask a running daemon
//! (`netmon flows`, `netmon status`), with the daemon's bearer token when it asks for one,
//! over TLS when the daemon serves HTTPS (`--api-ca`).

use std::{
    io::{Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

/// A running daemon's API: its address, the token it asks for, if any, and for HTTPS the
/// TLS settings that trust its certificate.
#[derive(Clone, Default)]
pub struct Api {
    pub addr: String,
    pub token: Option<String>,
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl Api {
    /// Returns (status code, body).
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        let addr = self.addr.as_str();
        let sa = addr
            .to_socket_addrs()
            .with_context(|| format!("bad address `{addr}`"))?
            .next()
            .with_context(|| format!("`{addr}` resolves to nothing"))?;
        let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(3)).with_context(|| {
            format!("cannot reach netmon at {addr}: is `netmon run` running (and --api right)?")
        })?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let auth = self
            .token
            .as_deref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
        let resp = match self.tls.clone() {
            Some(config) => {
                crate::tls::exchange(config, crate::tls::host_of(addr), s, req.as_bytes())?
            }
            None => {
                s.write_all(req.as_bytes())?;
                let mut resp = Vec::new();
                s.read_to_end(&mut resp)
                    .with_context(|| format!("reading the response from {addr}"))?;
                resp
            }
        };
        let text = String::from_utf8_lossy(&resp);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            bail!(
                "malformed HTTP response from {addr} (a daemon that serves HTTPS, `--tls-cert`, \
                 wants --api-ca)"
            );
        };
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("no status code in the response from {addr}"))?;
        Ok((code, body.to_string()))
    }

    /// GET a JSON document, failing on non-200 (and saying what to do about a 401).
    pub fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        let (code, body) = self.get(path)?;
        let addr = &self.addr;
        match code {
            200 => {
                serde_json::from_str(&body).with_context(|| format!("parsing the JSON of {path}"))
            }
            401 if self.token.is_none() => bail!(
                "netmon at {addr} asks for a token: give the file the daemon reads with \
                 --api-token-file (or set NETMON_API_TOKEN_FILE)"
            ),
            401 => {
                bail!("netmon at {addr} refused the token (not the one its --api-token-file holds)")
            }
            _ => bail!("netmon at {addr} answered {code} for {path}: {body}"),
        }
    }
}

/// Where the CLI finds the daemon's API, from `--api`: `ADDR:PORT` (`[V6]:PORT`), or a URL
/// of it as the daemon's log prints it (`http://ADDR:PORT`, `https://ADDR:PORT`, a trailing
/// `/` allowed). Returns the address and whether the URL said HTTPS (`None`: no scheme).
pub fn parse_api(s: &str) -> Result<(String, Option<bool>)> {
    let lower = s.to_ascii_lowercase();
    let (rest, https) = if lower.starts_with("http://") {
        (&s["http://".len()..], Some(false))
    } else if lower.starts_with("https://") {
        (&s["https://".len()..], Some(true))
    } else {
        (s, None)
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let example = crate::config::DEFAULT_LISTEN;
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) || rest.contains(char::is_whitespace)
    {
        bail!(
            "bad API address `{s}`: give the daemon's ADDR:PORT (its --listen) or \
             http(s)://ADDR:PORT, e.g. {example}"
        );
    }
    let host_port = rest
        .rsplit_once(':')
        .filter(|(h, p)| {
            let bracketed = h.starts_with('[') && h.ends_with(']') && h.len() > 2;
            (bracketed || (!h.is_empty() && !h.contains(':'))) && p.parse::<u16>().is_ok()
        })
        .is_some();
    if !host_port {
        bail!(
            "bad API address `{s}`: no port (an IPv6 address goes in brackets, [::1]:9743); \
             the daemon listens on {example} unless --listen says otherwise"
        );
    }
    Ok((rest.to_string(), https))
}

/// `s` as a URL query value: every byte but the unreserved ones (RFC 3986 section 2.3)
/// percent-encoded.
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_api_address_may_be_a_url() {
        let ok = |s: &str| super::parse_api(s).unwrap();
        let plain = |a: &str| (a.to_string(), None);
        assert_eq!(ok("127.0.0.1:9743"), plain("127.0.0.1:9743"));
        assert_eq!(ok("[::1]:9743"), plain("[::1]:9743"));
        assert_eq!(ok("localhost:9743"), plain("localhost:9743"));
        assert_eq!(
            ok("http://127.0.0.1:9911/"),
            ("127.0.0.1:9911".to_string(), Some(false))
        );
        assert_eq!(
            ok("HTTPS://[2001:db8::1]:443"),
            ("[2001:db8::1]:443".to_string(), Some(true))
        );
        for (bad, says) in [
            ("127.0.0.1", "no port"),
            ("http://127.0.0.1", "no port"),
            ("::1", "no port"),
            ("::1:9743", "no port"),
            ("127.0.0.1:99999", "no port"),
            (
                "http://127.0.0.1:9743/metrics",
                "give the daemon's ADDR:PORT",
            ),
            ("http://user@127.0.0.1:9743", "give the daemon's ADDR:PORT"),
            ("ftp://127.0.0.1:9743", "give the daemon's ADDR:PORT"),
            ("", "give the daemon's ADDR:PORT"),
        ] {
            let e = super::parse_api(bad).unwrap_err().to_string();
            assert!(
                e.contains(says) && e.contains(&format!("`{bad}`")),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn query_values_are_escaped() {
        assert_eq!(super::query_escape("10.0.0.0/8"), "10.0.0.0%2F8");
        assert_eq!(super::query_escape("fe80::1"), "fe80%3A%3A1");
        assert_eq!(
            super::query_escape("kworker/0:1 x&y=é"),
            "kworker%2F0%3A1%20x%26y%3D%C3%A9"
        );
    }
}
