//! Alert sinks, each on its own thread behind a bounded queue: a webhook (HTTP POST of the
//! event as JSON, retried with exponential backoff), syslog (RFC 5424 over UDP, TCP with
//! octet-counting framing per RFC 6587, TLS per RFC 5425, or a unix socket such as /dev/log)
//! and email (SMTP,
//! RFC 5321: plain to a local relay, or over STARTTLS or implicit TLS with AUTH PLAIN) and text
//! messages (an SMS gateway with Twilio's Messages API: a form POST per recipient). A full
//! queue drops the event and counts it; nothing here ever waits on the drain loop's thread.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{TcpStream, ToSocketAddrs as _, UdpSocket},
    os::unix::net::{UnixDatagram, UnixStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use super::notify::Event;
use crate::{
    classify::{
        config::{
            AlertsConfig, EmailConfig, EmailTls, SmsConfig, SyslogConfig, SyslogTarget,
            WebhookConfig,
        },
        score::Level,
    },
    metrics::Metrics,
};

/// Events queued per sink before new ones are dropped.
const QUEUE: usize = 256;

/// Sleeps `d` in small steps, returning early (false) when `stop` is set.
fn sleep_unless(stop: &AtomicBool, d: Duration) -> bool {
    let step = Duration::from_millis(50);
    let mut left = d;
    while !left.is_zero() {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
    !stop.load(Ordering::Relaxed)
}

/// Runs `send` until it succeeds or `retries` more attempts failed, waiting 1 s, 2 s, 4 s ...
/// (at most 60 s) in between.
fn with_retries(
    stop: &AtomicBool,
    retries: u32,
    mut send: impl FnMut() -> Result<()>,
) -> Result<()> {
    let mut wait = Duration::from_secs(1);
    let mut attempt = 0;
    loop {
        match send() {
            Ok(()) => return Ok(()),
            Err(e) if attempt >= retries => return Err(e),
            Err(_) => {
                attempt += 1;
                if !sleep_unless(stop, wait) {
                    bail!("stopped while retrying");
                }
                wait = (wait * 2).min(Duration::from_secs(60));
            }
        }
    }
}

trait Sink: Send {
    fn name(&self) -> &'static str;
    /// The least severity this sink is told of (the sinks' common minimum is applied before).
    fn min_severity(&self) -> Level {
        Level::Low
    }
    fn wants(&self, ev: &Event) -> bool {
        ev.severity >= self.min_severity()
    }
    fn deliver(&mut self, ev: &Event, stop: &AtomicBool) -> Result<()>;
}

/// An HTTP client whose every request, connection included, ends within `timeout`.
fn http_agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .build()
        .new_agent()
}

struct Webhook {
    cfg: WebhookConfig,
    agent: ureq::Agent,
    /// The `Authorization` header's value, read from `authorization_file` at start.
    authorization: Option<String>,
}

impl Webhook {
    fn new(cfg: WebhookConfig) -> Result<Self> {
        let agent = http_agent(cfg.timeout);
        let authorization = cfg
            .authorization_file
            .as_deref()
            .map(|p| read_secret(p, "webhook authorization"))
            .transpose()?;
        Ok(Self {
            cfg,
            agent,
            authorization,
        })
    }
}

impl Sink for Webhook {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn deliver(&mut self, ev: &Event, stop: &AtomicBool) -> Result<()> {
        let body = serde_json::to_vec(ev).expect("events serialize");
        with_retries(stop, self.cfg.retries, || {
            let mut req = self
                .agent
                .post(&self.cfg.url)
                .header("Content-Type", "application/json")
                .header("User-Agent", concat!("netmon/", env!("CARGO_PKG_VERSION")));
            if let Some(a) = &self.authorization {
                req = req.header("Authorization", a);
            }
            req.send(&body[..])
                .map(|_| ())
                .with_context(|| format!("POST {}", self.cfg.url))
        })
    }
}

/// RFC 5424 severity for an event: high -> 2 (critical), medium -> 4 (warning),
/// low -> 5 (notice).
fn syslog_severity(l: Level) -> u8 {
    match l {
        Level::High => 2,
        Level::Medium => 4,
        Level::Low => 5,
    }
}

/// An SD-PARAM value with `"`, `\` and `]` escaped (RFC 5424 section 6.3.3).
fn sd_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

/// One RFC 5424 message: `<PRI>1 TIMESTAMP HOST APP PROCID MSGID [SD] MSG`. The structured
/// data uses the documentation enterprise number 32473 (RFC 5612).
pub fn rfc5424(ev: &Event, facility: u8, app: &str) -> String {
    let pri = u16::from(facility) * 8 + u16::from(syslog_severity(ev.severity));
    let ts = {
        let base = crate::act::state::rfc3339(ev.time_ms);
        // rfc3339() gives whole seconds; RFC 5424 allows milliseconds.
        format!("{}.{:03}Z", base.trim_end_matches('Z'), ev.time_ms % 1000)
    };
    let mut sd = format!(
        "[netmon@32473 event=\"{}\" kind=\"{}\" subject=\"{}\" severity=\"{}\"",
        sd_escape(&ev.event),
        sd_escape(&ev.kind()),
        sd_escape(&ev.subject()),
        ev.severity
    );
    if let Some(a) = &ev.alert {
        sd.push_str(&format!(" score=\"{}\" id=\"{}\"", a["score"], a["id"]));
    }
    if let Some(r) = &ev.action {
        sd.push_str(&format!(" result=\"{}\"", sd_escape(&r.result)));
    }
    sd.push(']');
    let host: String = ev
        .host
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    format!(
        "<{pri}>1 {ts} {} {app} {} {} {sd} {}",
        if host.is_empty() { "-" } else { &host },
        std::process::id(),
        ev.event,
        ev.summary()
    )
}

enum SyslogConn {
    None,
    Udp(UdpSocket),
    Tcp(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    UnixDgram(UnixDatagram),
    UnixStream(UnixStream),
}

struct Syslog {
    cfg: SyslogConfig,
    conn: SyslogConn,
    /// The trust anchors for a `tls://` server's certificate.
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// A TCP connection to `addr` for syslog, with 5-s timeouts.
fn syslog_tcp(addr: &str, scheme: &str) -> Result<TcpStream> {
    let sa = addr
        .to_socket_addrs()
        .with_context(|| format!("resolving syslog address {addr}"))?
        .next()
        .with_context(|| format!("syslog address {addr} resolves to nothing"))?;
    let s = TcpStream::connect_timeout(&sa, Duration::from_secs(5))
        .with_context(|| format!("connecting to syslog at {scheme}://{addr}"))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

impl Syslog {
    /// The sink for `cfg`; for a `tls://` address the trust anchors are read now, so that a
    /// missing or bad file stops the daemon's start with an error that names it.
    fn new(cfg: &SyslogConfig) -> Result<Self> {
        let tls = match cfg.target {
            SyslogTarget::Tls(_) => {
                let ca = cfg
                    .ca_file
                    .clone()
                    .unwrap_or_else(|| SYSTEM_CA_BUNDLE.into());
                Some(crate::tls::client_config(&ca).with_context(|| {
                    format!(
                        "alerts.syslog: the certificates to trust for the syslog server \
                         (ca_file, default {SYSTEM_CA_BUNDLE})"
                    )
                })?)
            }
            _ => None,
        };
        Ok(Self {
            cfg: cfg.clone(),
            conn: SyslogConn::None,
            tls,
        })
    }

    fn connect(&mut self) -> Result<()> {
        self.conn = match &self.cfg.target {
            SyslogTarget::Udp(a) => {
                let sa = a
                    .to_socket_addrs()
                    .with_context(|| format!("resolving syslog address {a}"))?
                    .next()
                    .with_context(|| format!("syslog address {a} resolves to nothing"))?;
                let bind = if sa.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
                let s = UdpSocket::bind(bind)?;
                s.connect(sa)?;
                SyslogConn::Udp(s)
            }
            SyslogTarget::Tcp(a) => SyslogConn::Tcp(syslog_tcp(a, "tcp")?),
            SyslogTarget::Tls(a) => {
                let config = self.tls.clone().expect("TLS settings read with the config");
                let mut s = crate::tls::client_stream(
                    config,
                    crate::tls::host_of(a),
                    syslog_tcp(a, "tls")?,
                )?;
                // The handshake now, so that a server the sink does not trust is an error
                // here, before any message is written.
                while s.conn.is_handshaking() {
                    s.conn
                        .complete_io(&mut s.sock)
                        .with_context(|| format!("the TLS handshake with syslog at tls://{a}"))?;
                }
                SyslogConn::Tls(Box::new(s))
            }
            SyslogTarget::Unix(p) => {
                let d = UnixDatagram::unbound()?;
                match d.connect(p) {
                    Ok(()) => SyslogConn::UnixDgram(d),
                    // A stream socket (some syslog daemons listen that way).
                    Err(_) => SyslogConn::UnixStream(
                        UnixStream::connect(p)
                            .with_context(|| format!("connecting to syslog at {}", p.display()))?,
                    ),
                }
            }
        };
        Ok(())
    }

    fn send_once(&mut self, msg: &str) -> Result<()> {
        if matches!(self.conn, SyslogConn::None) {
            self.connect()?;
        }
        let r = match &mut self.conn {
            SyslogConn::Udp(s) => s.send(msg.as_bytes()).map(|_| ()),
            SyslogConn::UnixDgram(s) => s.send(msg.as_bytes()).map(|_| ()),
            // Octet counting (RFC 6587 3.4.1): "LEN SP MSG".
            SyslogConn::Tcp(s) => s.write_all(format!("{} {msg}", msg.len()).as_bytes()),
            // RFC 5425: the same octet counting, inside TLS.
            SyslogConn::Tls(s) => s
                .write_all(format!("{} {msg}", msg.len()).as_bytes())
                .and_then(|()| s.flush()),
            SyslogConn::UnixStream(s) => s.write_all(format!("{msg}\n").as_bytes()),
            SyslogConn::None => unreachable!("connected above"),
        };
        if let Err(e) = r {
            self.conn = SyslogConn::None;
            return Err(e).context("sending to syslog");
        }
        Ok(())
    }
}

impl Drop for Syslog {
    /// Ends a TLS session cleanly: close_notify, then whatever the server sent (its session
    /// tickets, which nothing reads) drained until it closes (at most 1 s). Closed with that
    /// data unread, the socket would reset the connection, and a server that had not yet
    /// read the last messages could lose them.
    fn drop(&mut self) {
        if let SyslogConn::Tls(s) = &mut self.conn {
            s.conn.send_close_notify();
            let _ = s.conn.complete_io(&mut s.sock);
            let _ = s.sock.shutdown(std::net::Shutdown::Write);
            let _ = s.sock.set_read_timeout(Some(Duration::from_secs(1)));
            let mut buf = [0u8; 4096];
            while matches!(std::io::Read::read(&mut s.sock, &mut buf), Ok(1..)) {}
        }
    }
}

impl Sink for Syslog {
    fn name(&self) -> &'static str {
        "syslog"
    }

    fn deliver(&mut self, ev: &Event, stop: &AtomicBool) -> Result<()> {
        let msg = rfc5424(ev, self.cfg.facility, &self.cfg.app_name);
        with_retries(stop, 3, || self.send_once(&msg))
    }
}

struct Email {
    cfg: EmailConfig,
    host: String,
    /// The trust anchors for the server's certificate, with `tls` set.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The password for AUTH, with `username` set.
    password: Option<String>,
}

/// The secret in `path` (`what`: the SMTP password, the SMS gateway's token): its first line,
/// without the line end (spaces are the secret's). An unreadable or empty file is an error
/// that names it.
fn read_secret(path: &std::path::Path, what: &str) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the {what} file {}", path.display()))?;
    let first = text.lines().next().unwrap_or("");
    if first.is_empty() {
        bail!(
            "the {what} file {} has no {what} on its first line",
            path.display()
        );
    }
    Ok(first.to_string())
}

/// Where Debian, Ubuntu and their kin keep the system's trusted certificates (package
/// ca-certificates).
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

impl Email {
    /// The sink for `cfg`: the trust anchors and password read now, so that a missing or
    /// bad file stops the daemon's start with an error that names it.
    fn new(cfg: &EmailConfig, host: &str) -> Result<Self> {
        let tls = match cfg.tls {
            EmailTls::None => None,
            EmailTls::Starttls | EmailTls::Implicit => {
                let ca = cfg
                    .ca_file
                    .clone()
                    .unwrap_or_else(|| SYSTEM_CA_BUNDLE.into());
                Some(crate::tls::client_config(&ca).with_context(|| {
                    format!(
                        "alerts.email: the certificates to trust for the SMTP server (ca_file, \
                         default {SYSTEM_CA_BUNDLE})"
                    )
                })?)
            }
        };
        let password = cfg
            .password_file
            .as_deref()
            .map(|p| read_secret(p, "SMTP password"))
            .transpose()?;
        Ok(Self {
            cfg: cfg.clone(),
            host: host.to_string(),
            tls,
            password,
        })
    }
}

/// Reads one SMTP reply (possibly multi-line) and checks its code class; returns the text of
/// its lines (after the code).
fn smtp_reply<S: std::io::Read>(
    r: &mut BufReader<S>,
    want: char,
    what: &str,
) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)
            .with_context(|| format!("reading the SMTP server's reply to {what}"))?
            == 0
        {
            bail!("the SMTP server closed the connection after {what}");
        }
        if line.len() < 4 || !line.is_char_boundary(4) {
            bail!("malformed SMTP reply to {what}: {line:?}");
        }
        lines.push(line[4..].trim_end().to_string());
        if line.as_bytes()[3] == b'-' {
            continue;
        }
        if !line.starts_with(want) {
            bail!("the SMTP server refused {what}: {}", line.trim_end());
        }
        return Ok(lines);
    }
}

/// Sends one SMTP command line and reads its reply.
fn smtp_command<S: std::io::Read + std::io::Write>(
    r: &mut BufReader<S>,
    line: &str,
    want: char,
    what: &str,
) -> Result<Vec<String>> {
    write!(r.get_mut(), "{line}\r\n")?;
    r.get_mut().flush()?;
    smtp_reply(r, want, what)
}

/// Whether an EHLO reply's lines name the extension `ext` (its first word).
fn offers(ehlo: &[String], ext: &str) -> bool {
    ehlo.iter().skip(1).any(|l| {
        l.split_whitespace()
            .next()
            .is_some_and(|k| k.eq_ignore_ascii_case(ext))
    })
}

impl Email {
    fn send_once(&self, ev: &Event) -> Result<()> {
        let server = &self.cfg.server;
        let sa = server
            .to_socket_addrs()
            .with_context(|| format!("resolving the SMTP server {server}"))?
            .next()
            .with_context(|| format!("{server} resolves to nothing"))?;
        let s = TcpStream::connect_timeout(&sa, self.cfg.timeout)
            .with_context(|| format!("connecting to the SMTP server {server}"))?;
        s.set_read_timeout(Some(self.cfg.timeout))?;
        s.set_write_timeout(Some(self.cfg.timeout))?;
        let tls = |tcp| {
            let config = self.tls.clone().expect("TLS settings read with the config");
            crate::tls::client_stream(config, crate::tls::host_of(server), tcp)
        };
        let result = match self.cfg.tls {
            EmailTls::None => self.session(BufReader::new(s), true, ev),
            EmailTls::Implicit => self.session(BufReader::new(tls(s)?), true, ev),
            EmailTls::Starttls => {
                let mut r = BufReader::new(s);
                smtp_reply(&mut r, '2', "the greeting")?;
                let ehlo = smtp_command(&mut r, &format!("EHLO {}", self.host), '2', "EHLO")?;
                if !offers(&ehlo, "STARTTLS") {
                    bail!(
                        "the SMTP server {server} does not offer STARTTLS (alerts.email.tls = \
                         \"starttls\"): nothing was sent"
                    );
                }
                smtp_command(&mut r, "STARTTLS", '2', "STARTTLS")?;
                // Anything read past the reply came before TLS, from anyone on the path
                // (RFC 3207 section 5): it must not be taken as the server's.
                if !r.buffer().is_empty() {
                    bail!("the SMTP server {server} sent more after agreeing to STARTTLS");
                }
                self.session(BufReader::new(tls(r.into_inner())?), false, ev)
            }
        };
        result.with_context(|| match self.cfg.tls {
            EmailTls::None => format!("the SMTP session with {server}"),
            // The certificate must name the server's host and chain to one in ca_file.
            _ => format!("the SMTP session with {server} over TLS"),
        })
    }

    /// The session from the greeting (`greeting`: not yet read) to QUIT, on a stream that
    /// is already TLS where the config asks for it.
    fn session<S: std::io::Read + std::io::Write>(
        &self,
        mut r: BufReader<S>,
        greeting: bool,
        ev: &Event,
    ) -> Result<()> {
        if greeting {
            smtp_reply(&mut r, '2', "the greeting")?;
        }
        let ehlo = smtp_command(&mut r, &format!("EHLO {}", self.host), '2', "EHLO")?;
        if let (Some(user), Some(password)) = (&self.cfg.username, &self.password) {
            if !offers(&ehlo, "AUTH") {
                bail!("the SMTP server does not offer AUTH, and alerts.email names a username");
            }
            // AUTH PLAIN (RFC 4616): authorization identity (empty), user, password.
            let token = base64_encode(format!("\0{user}\0{password}").as_bytes());
            smtp_command(
                &mut r,
                &format!("AUTH PLAIN {token}"),
                '2',
                &format!("AUTH PLAIN as {user}"),
            )?;
        }
        smtp_command(
            &mut r,
            &format!("MAIL FROM:<{}>", self.cfg.from),
            '2',
            "MAIL FROM",
        )?;
        for to in &self.cfg.to {
            smtp_command(
                &mut r,
                &format!("RCPT TO:<{to}>"),
                '2',
                &format!("RCPT TO {to}"),
            )?;
        }
        smtp_command(&mut r, "DATA", '3', "DATA")?;
        let subject: String = format!("[netmon {}] {}", self.host, ev.summary())
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect();
        let body = serde_json::to_string_pretty(ev).expect("events serialize");
        let mut msg = format!(
            "From: {}\r\nTo: {}\r\nSubject: {subject}\r\nDate: {}\r\nMessage-ID: <netmon-{}-{}@{}>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{}\r\n\r\n",
            self.cfg.from,
            self.cfg.to.join(", "),
            rfc2822(ev.time_ms),
            ev.time_ms,
            std::process::id(),
            self.host,
            ev.summary(),
        );
        for line in body.lines() {
            // Dot-stuffing (RFC 5321 4.5.2).
            if line.starts_with('.') {
                msg.push('.');
            }
            msg.push_str(line);
            msg.push_str("\r\n");
        }
        msg.push('.');
        smtp_command(&mut r, &msg, '2', "the message")?;
        let _ = write!(r.get_mut(), "QUIT\r\n").and_then(|()| r.get_mut().flush());
        Ok(())
    }
}

/// Standard base64 with padding (RFC 4648 section 4).
fn base64_encode(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `Tue, 01 Dec 2026 07:09:00 +0000` from unix milliseconds.
fn rfc2822(ms: u64) -> String {
    let t = crate::act::state::rfc3339(ms); // 2026-12-01T07:09:00Z
    let days = (ms / 1000 / 86_400) as i64;
    let dow = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, m, d, hms) = (&t[0..4], &t[5..7], &t[8..10], &t[11..19]);
    let mi: usize = m.parse().unwrap_or(1);
    format!("{dow}, {d} {} {y} {hms} +0000", months[mi.clamp(1, 12) - 1])
}

impl Sink for Email {
    fn name(&self) -> &'static str {
        "email"
    }

    fn min_severity(&self) -> Level {
        self.cfg.min_severity
    }

    fn deliver(&mut self, ev: &Event, stop: &AtomicBool) -> Result<()> {
        with_retries(stop, 3, || self.send_once(ev))
    }
}

/// Text messages through an SMS gateway (`SmsConfig`).
struct Sms {
    cfg: SmsConfig,
    /// The `Authorization` header: basic, the account and the token.
    auth: String,
    host: String,
    agent: ureq::Agent,
}

/// The most of an event's text a message carries: two SMS segments of 160 GSM characters.
const SMS_MAX_CHARS: usize = 320;

impl Sms {
    fn new(cfg: &SmsConfig, host: &str) -> Result<Self> {
        let token = read_secret(&cfg.token_file, "SMS token")?;
        let auth = format!(
            "Basic {}",
            base64_encode(format!("{}:{token}", cfg.account).as_bytes())
        );
        let agent = http_agent(cfg.timeout);
        Ok(Self {
            cfg: cfg.clone(),
            auth,
            host: host.to_string(),
            agent,
        })
    }

    /// The message: the host and the event's summary, cut to `SMS_MAX_CHARS` characters.
    fn text(&self, ev: &Event) -> String {
        let full = format!("netmon {}: {}", self.host, ev.summary());
        if full.chars().count() <= SMS_MAX_CHARS {
            return full;
        }
        let mut cut: String = full.chars().take(SMS_MAX_CHARS - 1).collect();
        cut.push('…');
        cut
    }
}

impl Sink for Sms {
    fn name(&self) -> &'static str {
        "sms"
    }

    fn min_severity(&self) -> Level {
        self.cfg.min_severity
    }

    /// One message per recipient, each retried on its own; an error names the recipients
    /// that did not get it (the others did).
    fn deliver(&mut self, ev: &Event, stop: &AtomicBool) -> Result<()> {
        let text = self.text(ev);
        let mut failed = Vec::new();
        for to in &self.cfg.to {
            let sent = with_retries(stop, self.cfg.retries, || {
                self.agent
                    .post(&self.cfg.url)
                    .header("Authorization", &self.auth)
                    .header("User-Agent", concat!("netmon/", env!("CARGO_PKG_VERSION")))
                    .send_form([
                        ("To", to.as_str()),
                        ("From", &self.cfg.from),
                        ("Body", &text),
                    ])
                    .map(|_| ())
                    .with_context(|| format!("POST {}", self.cfg.url))
            });
            if let Err(e) = sent {
                failed.push(format!("{to} ({e:#})"));
            }
        }
        if !failed.is_empty() {
            bail!("SMS not sent to {}", failed.join(", "));
        }
        Ok(())
    }
}

struct Handle {
    name: &'static str,
    tx: SyncSender<Event>,
    thread: std::thread::JoinHandle<()>,
}

/// The running sinks.
pub struct Sinks {
    handles: Vec<Handle>,
    stop: Arc<AtomicBool>,
}

fn run_sink(
    mut sink: Box<dyn Sink>,
    rx: Receiver<Event>,
    shared: Arc<crate::api::Shared>,
    stop: Arc<AtomicBool>,
) {
    let mut last_error: Option<String> = None;
    while let Ok(ev) = rx.recv() {
        if !sink.wants(&ev) {
            continue;
        }
        let r = sink.deliver(&ev, &stop);
        let result = match &r {
            Ok(()) => {
                if last_error.take().is_some() {
                    tracing::info!("alert sink {} delivers again", sink.name());
                }
                "sent"
            }
            Err(e) => {
                let msg = format!("{e:#}");
                if last_error.as_deref() != Some(msg.as_str()) {
                    tracing::warn!("alert sink {}: {msg}", sink.name());
                    last_error = Some(msg);
                }
                "failed"
            }
        };
        shared
            .metrics
            .notifications
            .with_label_values(&[sink.name(), result])
            .inc();
    }
}

impl Sinks {
    /// Starts a thread per configured sink; they count into `shared.metrics`.
    pub fn start(cfg: &AlertsConfig, host: &str, shared: Arc<crate::api::Shared>) -> Result<Self> {
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        if let Some(w) = &cfg.webhook {
            sinks.push(Box::new(Webhook::new(w.clone())?));
        }
        if let Some(s) = &cfg.syslog {
            sinks.push(Box::new(Syslog::new(s)?));
        }
        if let Some(e) = &cfg.email {
            sinks.push(Box::new(Email::new(e, host)?));
        }
        if let Some(m) = &cfg.sms {
            sinks.push(Box::new(Sms::new(m, host)?));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        for sink in sinks {
            let name = sink.name();
            for result in ["sent", "failed", "dropped", "suppressed"] {
                shared
                    .metrics
                    .notifications
                    .with_label_values(&[name, result]);
            }
            let (tx, rx) = sync_channel(QUEUE);
            let (sh, st) = (shared.clone(), stop.clone());
            let thread = std::thread::Builder::new()
                .name(format!("netmon-{name}"))
                .spawn(move || run_sink(sink, rx, sh, st))
                .with_context(|| format!("starting the {name} alert sink"))?;
            handles.push(Handle { name, tx, thread });
        }
        Ok(Self { handles, stop })
    }

    /// Queues `ev` for every sink; a sink whose queue is full loses it (counted).
    pub fn send(&self, ev: &Event, metrics: &Metrics) {
        for h in &self.handles {
            match h.tx.try_send(ev.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    metrics
                        .notifications
                        .with_label_values(&[h.name, "dropped"])
                        .inc();
                }
            }
        }
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.handles.iter().map(|h| h.name).collect()
    }

    /// Stops retrying, lets each sink finish what it is sending (bounded by its timeout),
    /// and joins the threads.
    pub fn stop(self, grace: Duration) {
        let deadline = std::time::Instant::now() + grace;
        let threads: Vec<_> = self
            .handles
            .into_iter()
            .map(|h| {
                drop(h.tx);
                h.thread
            })
            .collect();
        // Queued events get until the deadline, then retries stop.
        while std::time::Instant::now() < deadline && threads.iter().any(|t| !t.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop.store(true, Ordering::Relaxed);
        for t in threads {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::act::notify::ActionRecord;

    #[test]
    fn rfc5424_shape() {
        let ev = Event::action(
            ActionRecord {
                action: "ban".into(),
                remote: "198.18.0.2".parse().unwrap(),
                result: "done".into(),
                detail: "banned for 600 s".into(),
                alert_id: 7,
                alert_kind: "port_scan".into(),
                ttl_seconds: Some(600),
            },
            Level::High,
            "host-1",
        );
        let m = rfc5424(&ev, 4, "netmon");
        // facility 4 (auth) * 8 + severity 2 (critical) = 34.
        assert!(m.starts_with("<34>1 "), "{m}");
        let parts: Vec<&str> = m.splitn(7, ' ').collect();
        assert!(parts[1].ends_with('Z') && parts[1].contains('.'), "{m}");
        assert_eq!(
            (parts[2], parts[3], parts[5]),
            ("host-1", "netmon", "action")
        );
        assert!(
            m.contains("[netmon@32473 event=\"action\" kind=\"ban\" subject=\"198.18.0.2\""),
            "{m}"
        );
        assert!(m.ends_with("ban 198.18.0.2 done: banned for 600 s (port_scan alert #7)"));
        assert_eq!(sd_escape(r#"a"b]c\"#), r#"a\"b\]c\\"#);
    }

    /// One HTTP request as a test server read it.
    struct Request {
        /// `METHOD PATH`.
        line: String,
        /// Names in lower case.
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Request {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// Accepts one connection on `l`, reads its request, answers `status` (no body).
    fn http_exchange(l: &std::net::TcpListener, status: &str) -> Request {
        let (s, _) = l.accept().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut first = String::new();
        r.read_line(&mut first).unwrap();
        let line = first.split(' ').take(2).collect::<Vec<_>>().join(" ");
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            if h == "\r\n" {
                break;
            }
            let (n, v) = h.split_once(':').unwrap();
            headers.push((n.to_ascii_lowercase(), v.trim().to_string()));
        }
        let len = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0; len];
        std::io::Read::read_exact(&mut r, &mut body).unwrap();
        let mut s = s;
        write!(
            s,
            "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        Request {
            line,
            headers,
            body,
        }
    }

    /// An `application/x-www-form-urlencoded` body, decoded.
    fn form(body: &[u8]) -> Vec<(String, String)> {
        let dec = |s: &str| {
            let b = s.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < b.len() {
                match b[i] {
                    b'+' => out.push(b' '),
                    b'%' => {
                        out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                        i += 2;
                    }
                    c => out.push(c),
                }
                i += 1;
            }
            String::from_utf8(out).unwrap()
        };
        std::str::from_utf8(body)
            .unwrap()
            .split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (dec(k), dec(v))
            })
            .collect()
    }

    /// A real HTTP server on loopback as the gateway: one form POST per recipient with the
    /// account's basic authentication, a recipient whose first attempt fails retried, the
    /// text cut to two segments; a gateway that is gone names every recipient missed.
    #[test]
    fn sms_posts_a_form_per_recipient_with_basic_auth() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let path = "/2010-04-01/Accounts/AC0123/Messages.json";
        let url = format!("http://{}{path}", l.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            ["201 Created", "500 Oops", "201 Created"].map(|status| http_exchange(&l, status))
        });
        let tmp = crate::test_support::TempDir::new("sms");
        let token_file = tmp.0.join("token");
        std::fs::write(&token_file, "s3cret tok\nignored\n").unwrap();
        let cfg = SmsConfig {
            url,
            account: "AC0123".into(),
            token_file,
            from: "+15550100000".into(),
            to: vec!["+15550100001".into(), "+15550100002".into()],
            min_severity: Level::Medium,
            timeout: Duration::from_secs(5),
            retries: 1,
        };
        let mut sms = Sms::new(&cfg, "gw1").unwrap();
        let ev = alert_event();
        assert!(sms.wants(&ev));
        sms.deliver(&ev, &AtomicBool::new(false)).unwrap();
        let reqs = server.join().unwrap();
        let auth = format!("Basic {}", base64_encode(b"AC0123:s3cret tok"));
        let text = format!("netmon gw1: {}", ev.summary());
        assert!(
            text.contains("port_scan") && text.contains("30 ports tried"),
            "{text}"
        );
        for (r, to) in reqs
            .iter()
            .zip(["+15550100001", "+15550100002", "+15550100002"])
        {
            assert_eq!(r.line, format!("POST {path}"));
            assert_eq!(r.header("authorization"), Some(auth.as_str()));
            assert_eq!(
                r.header("content-type"),
                Some("application/x-www-form-urlencoded")
            );
            assert_eq!(
                form(&r.body),
                [("To", to), ("From", "+15550100000"), ("Body", &text)]
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            );
        }
        // A low alert is below this sink's min_severity; a long detail is cut.
        let mut low = ev.clone();
        low.severity = Level::Low;
        assert!(!sms.wants(&low));
        let long = crate::classify::Alert {
            detail: "x".repeat(1000),
            ..alert()
        };
        let cut = sms.text(&Event::alert(&long, "h"));
        assert_eq!(cut.chars().count(), SMS_MAX_CHARS);
        assert!(
            cut.starts_with("netmon gw1: ") && cut.ends_with('…'),
            "{cut}"
        );
        // The gateway gone: both recipients named.
        let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        sms.cfg.url = format!("http://{}{path}", gone.local_addr().unwrap());
        sms.cfg.retries = 0;
        drop(gone);
        let e = format!(
            "{:#}",
            sms.deliver(&ev, &AtomicBool::new(false)).unwrap_err()
        );
        assert!(
            e.starts_with("SMS not sent to +15550100001 (") && e.contains(", +15550100002 ("),
            "{e}"
        );
    }

    fn alert() -> crate::classify::Alert {
        crate::classify::Alert {
            id: 9,
            time_ms: 1_796_108_940_123,
            kind: "port_scan".into(),
            severity: Level::Medium,
            remote: Some("198.18.0.2".parse().unwrap()),
            score: 30,
            reasons: vec![],
            detail: "198.18.0.2: 30 ports tried".into(),
        }
    }

    fn alert_event() -> Event {
        Event::alert(&alert(), "h")
    }

    /// Real listeners on loopback and in a temporary directory: TCP gets octet-counted
    /// frames (RFC 6587), a unix datagram socket one message per datagram; a listener that
    /// goes away and comes back is reconnected to.
    #[test]
    fn syslog_over_tcp_and_unix_sockets() {
        let stop = AtomicBool::new(false);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let mut sink = Syslog::new(&SyslogConfig {
            target: SyslogTarget::Tcp(addr),
            facility: 1,
            app_name: "netmon".into(),
            ca_file: None,
        })
        .unwrap();
        let ev = alert_event();
        sink.deliver(&ev, &stop).unwrap();
        sink.deliver(&ev, &stop).unwrap();
        drop(sink);
        let (mut s, _) = l.accept().unwrap();
        let mut got = String::new();
        std::io::Read::read_to_string(&mut s, &mut got).unwrap();
        let msg = rfc5424(&ev, 1, "netmon");
        assert_eq!(got, format!("{} {msg}{} {msg}", msg.len(), msg.len()));
        // facility 1 (user) * 8 + warning (4).
        assert!(
            msg.starts_with("<12>1 2026-12-01T07:09:00.123Z h netmon "),
            "{msg}"
        );

        let tmp = crate::test_support::TempDir::new("syslog");
        let dir = &tmp.0;
        let path = dir.join("log.sock");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        let mut sink = Syslog::new(&SyslogConfig {
            target: SyslogTarget::Unix(path.clone()),
            facility: 4,
            app_name: "netmon".into(),
            ca_file: None,
        })
        .unwrap();
        sink.deliver(&ev, &stop).unwrap();
        let mut buf = [0u8; 2048];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], rfc5424(&ev, 4, "netmon").as_bytes());
    }

    /// OpenSSL's s_server as a syslog server over TLS (RFC 5425): the sink's frames arrive
    /// octet-counted in the session, over a certificate from `ca_file`; a server whose
    /// certificate the sink does not trust gets no session, and the error says why.
    #[test]
    fn syslog_over_tls_to_openssl_s_server() {
        use std::{
            io::Read as _,
            process::{Command, Stdio},
            sync::Mutex,
        };
        let tmp = crate::test_support::TempDir::new("syslog-tls");
        let dir = tmp.0.clone();
        for name in ["syslog", "other"] {
            crate::test_support::self_signed(&dir, name);
        }
        // On a port of the kernel's choosing, which it names ("ACCEPT 127.0.0.1:PORT"); its
        // stdin stays open (EOF would end it); what it receives goes to its stdout.
        // Killed when the test ends, passed or not.
        struct Server(std::process::Child);
        impl Drop for Server {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let mut server = Command::new("openssl")
            .args(["s_server", "-accept", "127.0.0.1:0"])
            .arg("-cert")
            .arg(dir.join("syslog.crt"))
            .arg("-key")
            .arg(dir.join("syslog.key"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map(Server)
            .expect("openssl (cargo xtask test installs it)");
        let out = Arc::new(Mutex::new(String::new()));
        let reader = {
            let (mut stdout, out) = (server.0.stdout.take().unwrap(), out.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stdout.read(&mut buf) {
                    out.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            })
        };
        let wait = |what: &str, pred: &dyn Fn(&str) -> bool| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !pred(&out.lock().unwrap()) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{what}: {}",
                    out.lock().unwrap()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        wait("s_server listening", &|o| o.contains("ACCEPT 127.0.0.1:"));
        let port: u16 = {
            let o = out.lock().unwrap();
            let at = o.find("ACCEPT 127.0.0.1:").unwrap() + "ACCEPT 127.0.0.1:".len();
            o[at..].lines().next().unwrap().trim().parse().unwrap()
        };
        let cfg = |ca: &str| SyslogConfig {
            target: SyslogTarget::Tls(format!("127.0.0.1:{port}")),
            facility: 4,
            app_name: "netmon".into(),
            ca_file: Some(dir.join(ca)),
        };
        let stop = AtomicBool::new(false);
        let ev = alert_event();
        let msg = rfc5424(&ev, 4, "netmon");
        let frame = format!("{} {msg}", msg.len());

        // Not trusted: no session, nothing sent.
        let mut untrusted = Syslog::new(&cfg("other.crt")).unwrap();
        let e = format!("{:#}", untrusted.send_once(&msg).unwrap_err());
        assert!(
            e.contains("TLS handshake with syslog at tls://127.0.0.1:")
                && e.contains("invalid peer certificate"),
            "{e}"
        );
        drop(untrusted);

        let mut sink = Syslog::new(&cfg("syslog.crt")).unwrap();
        sink.deliver(&ev, &stop).unwrap();
        sink.deliver(&ev, &stop).unwrap();
        drop(sink);
        wait("both frames", &|o| o.contains(&format!("{frame}{frame}")));
        drop(server);
        reader.join().unwrap();

        // A trust file that is not there stops the sink's start, naming it.
        let e = format!("{:#}", Syslog::new(&cfg("missing.crt")).err().unwrap());
        assert!(e.contains("missing.crt"), "{e}");
    }

    /// A webhook endpoint that fails twice and then accepts gets the event on the third
    /// attempt (after 1 s and 2 s of backoff); one that never accepts fails after the retries.
    #[test]
    fn webhook_retries_with_backoff() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            let mut bodies = Vec::new();
            for i in 0..3 {
                let status = if i < 2 { "503 Busy" } else { "204 No Content" };
                let req = http_exchange(&l, status);
                assert_eq!(req.header("authorization"), Some("Splunk 0f1e-2d3c"));
                bodies.push((std::time::Instant::now(), req.body));
            }
            bodies
        });
        let stop = AtomicBool::new(false);
        let tmp = crate::test_support::TempDir::new("webhook");
        let auth_file = tmp.0.join("auth");
        std::fs::write(&auth_file, "Splunk 0f1e-2d3c\n").unwrap();
        let mut hook = Webhook::new(WebhookConfig {
            url,
            timeout: Duration::from_secs(5),
            retries: 2,
            authorization_file: Some(auth_file),
        })
        .unwrap();
        let ev = alert_event();
        let t0 = std::time::Instant::now();
        hook.deliver(&ev, &stop).unwrap();
        let bodies = server.join().unwrap();
        assert!(
            t0.elapsed() >= Duration::from_secs(3),
            "1 s + 2 s of backoff"
        );
        let v: serde_json::Value = serde_json::from_slice(&bodies[2].1).unwrap();
        assert_eq!(v["alert"]["id"], 9);
        // Nobody listening: the first attempt and the retry fail, and it says where.
        let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", gone.local_addr().unwrap());
        drop(gone);
        let mut hook = Webhook::new(WebhookConfig {
            url: url.clone(),
            timeout: Duration::from_secs(1),
            retries: 1,
            authorization_file: None,
        })
        .unwrap();
        let e = hook.deliver(&ev, &stop).unwrap_err();
        assert!(format!("{e:#}").contains(&url), "{e:#}");
    }

    #[test]
    fn rfc2822_dates() {
        // 2026-12-01T07:09:00Z was a Tuesday.
        assert_eq!(
            rfc2822(1_796_108_940_000),
            "Tue, 01 Dec 2026 07:09:00 +0000"
        );
    }

    /// aiosmtpd (Debian's python3-aiosmtpd, which `cargo xtask test` installs) on loopback
    /// with the certificate `cert`, requiring AUTH as `user`/`password` and storing what it
    /// accepts in the Maildir `maildir`. `mode`: "starttls" (required before anything),
    /// "tls" (implicit TLS) or "plain" (no STARTTLS offered).
    const SMTP_SERVER: &str = r#"
import sys, ssl
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import AuthResult, LoginPassword
mode, port, cert, key, user, password, maildir = sys.argv[1:8]
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
def auth(server, session, envelope, mechanism, data):
    ok = (isinstance(data, LoginPassword) and data.login == user.encode()
          and data.password == password.encode())
    return AuthResult(success=ok, handled=False)
kw = dict(hostname="127.0.0.1", port=int(port), authenticator=auth, auth_required=True)
if mode == "starttls":
    c = Controller(Mailbox(maildir), tls_context=ctx, require_starttls=True, **kw)
elif mode == "tls":
    c = Controller(Mailbox(maildir), ssl_context=ctx, auth_require_tls=False, **kw)
else:
    c = Controller(Mailbox(maildir), auth_require_tls=False, **kw)
c.start()
print("ready", flush=True)
sys.stdin.read()
c.stop()
"#;

    struct Smtp {
        child: std::process::Child,
        port: u16,
    }

    impl Drop for Smtp {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn smtp_server(mode: &str, dir: &std::path::Path, maildir: &std::path::Path) -> Smtp {
        use std::process::{Command, Stdio};
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new("/usr/bin/python3")
            .args(["-c", SMTP_SERVER, mode, &port.to_string()])
            .arg(dir.join("smtp.crt"))
            .arg(dir.join("smtp.key"))
            .args(["netmon", "s3cret pass"])
            .arg(maildir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with aiosmtpd (Debian package python3-aiosmtpd)");
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        let server = Smtp { child, port };
        assert_eq!(ready.trim(), "ready", "the SMTP server did not start");
        server
    }

    /// Messages the server stored.
    fn mails(maildir: &std::path::Path) -> Vec<String> {
        std::fs::read_dir(maildir.join("new"))
            .map(|d| {
                d.flatten()
                    .map(|e| std::fs::read_to_string(e.path()).unwrap())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The email sink against a real SMTP server: STARTTLS and implicit TLS with AUTH PLAIN
    /// deliver (the server refuses mail before TLS and without AUTH), a wrong password, a
    /// server without STARTTLS and a certificate the sink does not trust deliver nothing
    /// and say why, and a missing password file stops the sink's start naming it.
    #[test]
    fn email_over_starttls_and_tls_with_auth() {
        let tmp = crate::test_support::TempDir::new("smtp");
        let dir = tmp.0.clone();
        for name in ["smtp", "other"] {
            crate::test_support::self_signed(&dir, name);
        }
        let password_file = dir.join("password");
        std::fs::write(&password_file, "s3cret pass\n").unwrap();
        let config = |port: u16, tls: EmailTls| EmailConfig {
            server: format!("127.0.0.1:{port}"),
            from: "netmon@example.test".into(),
            to: vec!["ops@example.test".into()],
            min_severity: Level::Low,
            timeout: Duration::from_secs(5),
            tls,
            ca_file: Some(dir.join("smtp.crt")),
            username: Some("netmon".into()),
            password_file: Some(password_file.clone()),
        };
        let ev = alert_event();

        for (mode, tls) in [
            ("starttls", EmailTls::Starttls),
            ("tls", EmailTls::Implicit),
        ] {
            let maildir = dir.join(format!("mail-{mode}"));
            let server = smtp_server(mode, &dir, &maildir);
            let sink = Email::new(&config(server.port, tls), "h").unwrap();
            sink.send_once(&ev)
                .unwrap_or_else(|e| panic!("{mode}: {e:#}"));
            let got = mails(&maildir);
            assert_eq!(got.len(), 1, "{mode}: {got:?}");
            assert!(
                got[0].contains("Subject: [netmon h] "),
                "{mode}: {}",
                got[0]
            );
            assert!(
                got[0].contains("198.18.0.2: 30 ports tried"),
                "{mode}: {}",
                got[0]
            );

            // A wrong password: refused at AUTH, nothing stored.
            let wrong = dir.join("wrong");
            std::fs::write(&wrong, "not it\n").unwrap();
            let mut cfg = config(server.port, tls);
            cfg.password_file = Some(wrong);
            let err = format!(
                "{:#}",
                Email::new(&cfg, "h").unwrap().send_once(&ev).unwrap_err()
            );
            assert!(
                err.contains("refused AUTH PLAIN as netmon"),
                "{mode}: {err}"
            );

            // A certificate the sink does not trust: no session, nothing stored.
            let mut cfg = config(server.port, tls);
            cfg.ca_file = Some(dir.join("other.crt"));
            let err = format!(
                "{:#}",
                Email::new(&cfg, "h").unwrap().send_once(&ev).unwrap_err()
            );
            assert!(err.contains("invalid peer certificate"), "{mode}: {err}");
            assert_eq!(mails(&maildir).len(), 1, "{mode}");
        }

        // A server that does not offer STARTTLS gets nothing, not even the envelope.
        let maildir = dir.join("mail-plain");
        let server = smtp_server("plain", &dir, &maildir);
        let sink = Email::new(&config(server.port, EmailTls::Starttls), "h").unwrap();
        let err = format!("{:#}", sink.send_once(&ev).unwrap_err());
        assert!(err.contains("does not offer STARTTLS"), "{err}");
        assert!(mails(&maildir).is_empty());

        // A password file that is not there: the sink does not start, and says which file.
        let mut cfg = config(server.port, EmailTls::Starttls);
        cfg.password_file = Some(dir.join("missing"));
        let err = format!("{:#}", Email::new(&cfg, "h").err().unwrap());
        assert!(err.contains("missing"), "{err}");
    }

    #[test]
    fn base64_is_rfc_4648s() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
        }
        // RFC 4616's example credentials.
        assert_eq!(
            base64_encode(b"\0tim\0tanstaaftanstaaf"),
            "AHRpbQB0YW5zdGFhZnRhbnN0YWFm"
        );
    }
}
