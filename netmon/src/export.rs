//! `netmon export`: flows and events for forensics, as JSON or CSV. Events come from the
//! forensic event log files (so they can be exported with the daemon stopped); flows from the
//! running daemon's connection table, when it answers.

use std::{io::Write, path::Path};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::act::notify::EventLog;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
}

impl std::str::FromStr for Format {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            _ => bail!("--format `{s}`: expected json or csv"),
        }
    }
}

/// Unix milliseconds of `--since`: a duration ago (`90s`, `2h`), an RFC 3339 UTC time
/// (`2026-12-01T07:00:00Z`), or unix seconds.
pub fn parse_since(s: &str, now_ms: u64) -> Result<u64> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(secs * 1000);
    }
    if let Some(ms) = parse_rfc3339(s) {
        return Ok(ms);
    }
    match crate::config::parse_duration(s) {
        Ok(d) => Ok(now_ms.saturating_sub(d.as_millis() as u64)),
        Err(_) => bail!(
            "--since `{s}`: expected a duration ago (e.g. 30m, 2h), a UTC time like \
             2026-12-01T07:00:00Z, or unix seconds"
        ),
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fff]Z` to unix milliseconds.
fn parse_rfc3339(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = s.split_once(['T', ' '])?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let ms: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let total = ((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000 + ms).max(0);
    Some(total as u64)
}

/// The events of the log files at `log` (and its rotated files) since `since_ms`, oldest
/// first; lines that are not JSON are counted, not fatal.
pub fn read_events(log: &Path, since_ms: u64) -> Result<(Vec<Value>, usize)> {
    let mut out = Vec::new();
    let mut bad = 0;
    let files = EventLog::files(log, 16);
    if files.is_empty() {
        bail!(
            "no event log at {} (is this the daemon's state directory, or its \
             alerts.log setting? give --log PATH)",
            log.display()
        );
    }
    for f in files {
        let text = std::fs::read_to_string(&f)
            .with_context(|| format!("reading the event log {}", f.display()))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<Value>(line) {
                Ok(v) if v["time_ms"].as_u64().is_some_and(|t| t >= since_ms) => out.push(v),
                Ok(_) => {}
                Err(_) => bad += 1,
            }
        }
    }
    Ok((out, bad))
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

const CSV_COLUMNS: [&str; 17] = [
    "record",
    "time",
    "kind",
    "severity",
    "subject",
    "local",
    "remote",
    "proto",
    "state",
    "pid",
    "process",
    "bytes_sent",
    "bytes_recv",
    "packets_sent",
    "packets_recv",
    "score",
    "detail",
];

fn s(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(x) => x.clone(),
        other => other.to_string(),
    }
}

/// Writes flows and events in `format`.
pub fn write(
    out: &mut dyn Write,
    format: Format,
    flows: &[Value],
    events: &[Value],
    since_ms: u64,
    now_ms: u64,
) -> Result<()> {
    match format {
        Format::Json => {
            let doc = json!({
                "exported_at": crate::act::state::rfc3339(now_ms),
                "since": crate::act::state::rfc3339(since_ms),
                "flows": flows,
                "events": events,
            });
            serde_json::to_writer_pretty(&mut *out, &doc)?;
            writeln!(out)?;
        }
        Format::Csv => {
            writeln!(out, "{}", CSV_COLUMNS.join(","))?;
            let now = crate::act::state::rfc3339(now_ms);
            for f in flows {
                let row = [
                    "flow".to_string(),
                    now.clone(),
                    s(&f["type"]),
                    s(&f["risk"]["level"]),
                    s(&f["remote_address"]),
                    s(&f["local_address"]),
                    s(&f["remote_address"]),
                    s(&f["type"]),
                    s(&f["status"]),
                    s(&f["pid"]),
                    s(&f["process"]),
                    s(&f["bytes_sent"]),
                    s(&f["bytes_recv"]),
                    s(&f["packets_sent"]),
                    s(&f["packets_recv"]),
                    s(&f["risk"]["score"]),
                    f["risk"]["reasons"]
                        .as_array()
                        .map(|r| {
                            r.iter()
                                .map(|x| s(&x["detail"]))
                                .collect::<Vec<_>>()
                                .join("; ")
                        })
                        .unwrap_or_default(),
                ];
                let row: Vec<String> = row.iter().map(|x| csv_field(x)).collect();
                writeln!(out, "{}", row.join(","))?;
            }
            for e in events {
                let (kind, subject, score, detail) = if e["alert"].is_object() {
                    let a = &e["alert"];
                    let subject = if a["remote"].is_null() {
                        s(&a["reasons"][0]["kind"])
                    } else {
                        s(&a["remote"])
                    };
                    (s(&a["kind"]), subject, s(&a["score"]), s(&a["detail"]))
                } else {
                    let r = &e["action"];
                    (
                        format!("{}:{}", s(&r["action"]), s(&r["result"])),
                        s(&r["remote"]),
                        String::new(),
                        s(&r["detail"]),
                    )
                };
                let mut row = vec![String::new(); CSV_COLUMNS.len()];
                row[0] = s(&e["event"]);
                row[1] = s(&e["time"]);
                row[2] = kind;
                row[3] = s(&e["severity"]);
                row[4] = subject.clone();
                row[6] = subject;
                row[15] = score;
                row[16] = detail;
                let row: Vec<String> = row.iter().map(|x| csv_field(x)).collect();
                writeln!(out, "{}", row.join(","))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_forms() {
        let now = 1_796_108_940_000;
        assert_eq!(parse_since("2026-12-01T07:09:00Z", 0).unwrap(), now);
        assert_eq!(
            parse_since("2026-12-01T07:09:00.250Z", 0).unwrap(),
            now + 250
        );
        assert_eq!(parse_since("1796108940", 0).unwrap(), now);
        assert_eq!(parse_since("1h", now).unwrap(), now - 3_600_000);
        assert!(
            parse_since("yesterday", now)
                .unwrap_err()
                .to_string()
                .contains("--since")
        );
        // rfc3339 and its inverse agree.
        for ms in [0u64, 951_782_400_000, now, 4_102_444_799_000] {
            let t = crate::act::state::rfc3339(ms);
            assert_eq!(parse_rfc3339(&t), Some(ms), "{t}");
        }
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        let flows = vec![json!({
            "type": "TCP", "local_address": "198.18.0.1:22", "remote_address": "198.18.0.2:40000",
            "status": "ESTABLISHED", "pid": 42, "process": "sshd", "bytes_sent": 10,
            "bytes_recv": 20, "packets_sent": 1, "packets_recv": 2,
            "risk": {"level": "high", "score": 70, "reasons": [
                {"detail": "a, b"}, {"detail": "say \"hi\""}]}
        })];
        let events = vec![json!({
            "time_ms": 1, "time": "1970-01-01T00:00:00Z", "event": "action", "severity": "high",
            "action": {"action": "ban", "result": "done", "remote": "198.18.0.2",
                       "detail": "banned"}
        })];
        let mut out = Vec::new();
        write(&mut out, Format::Csv, &flows, &events, 0, 0).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0].split(',').count(), 17);
        assert!(
            lines[1].ends_with(",70,\"a, b; say \"\"hi\"\"\""),
            "{}",
            lines[1]
        );
        assert!(lines[2].starts_with("action,1970-01-01T00:00:00Z,ban:done,high,198.18.0.2,"));
    }
}
