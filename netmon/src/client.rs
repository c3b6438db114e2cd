//! A minimal blocking HTTP/1.0 GET, for the CLI commands that ask a running daemon
//! (`netmon flows`, `netmon status`). No TLS: the API listens on loopback by default.

use std::{
    io::{Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

/// Returns (status code, body).
pub fn get(addr: &str, path: &str) -> Result<(u16, String)> {
    let sa = addr
        .to_socket_addrs()
        .with_context(|| format!("bad address `{addr}`"))?
        .next()
        .with_context(|| format!("`{addr}` resolves to nothing"))?;
    let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(3)).with_context(|| {
        format!("cannot reach netmon at {addr}: is `netmon run` running (and --api right)?")
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)
        .with_context(|| format!("reading the response from {addr}"))?;
    let text = String::from_utf8_lossy(&resp);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("malformed HTTP response from {addr}");
    };
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status code in the response from {addr}"))?;
    Ok((code, body.to_string()))
}

/// GET a JSON document, failing on non-200.
pub fn get_json(addr: &str, path: &str) -> Result<serde_json::Value> {
    let (code, body) = get(addr, path)?;
    if code != 200 {
        bail!("netmon at {addr} answered {code} for {path}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("parsing the JSON of {path}"))
}
