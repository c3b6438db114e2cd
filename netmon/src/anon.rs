//! Anonymized remote addresses for what the HTTP API hands out (`--anonymize prefix`): the
//! connection table, the remotes and the alerts show a remote address cut to its network,
//! an IPv4 address to its /24 and an IPv6 one to its /48 (the usual truncation for
//! analytics under GDPR), so that dashboards and scripts that read the API see where
//! traffic goes without who it is. Everything inside the daemon keeps the full addresses:
//! detection, scores, the drop list and the automatic response work as without it, and the
//! forensic event log, which incident response needs, keeps them too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::bail;

/// How the API shows remote addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Anonymize {
    /// As they are.
    #[default]
    Off,
    /// IPv4 to its /24, IPv6 to its /48 (the rest zero).
    Prefix,
}

impl std::str::FromStr for Anonymize {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "off" => Ok(Self::Off),
            "prefix" => Ok(Self::Prefix),
            other => bail!("expected off or prefix, got {other:?}"),
        }
    }
}

impl Anonymize {
    /// The longest prefix of a family's addresses the API shows (`None`: the whole
    /// address): a query may not ask about more of an address than that, or it could tell
    /// an individual address from its answers.
    pub fn shown_prefix(self, v4: bool) -> Option<u8> {
        match self {
            Self::Off => None,
            Self::Prefix => Some(if v4 { 24 } else { 48 }),
        }
    }

    /// `ip` as the API shows it.
    pub fn ip(self, ip: IpAddr) -> IpAddr {
        match (self, ip) {
            (Self::Off, ip) => ip,
            (Self::Prefix, IpAddr::V4(v4)) => {
                let [a, b, c, _] = v4.octets();
                IpAddr::V4(Ipv4Addr::new(a, b, c, 0))
            }
            (Self::Prefix, IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => self.ip(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0))
                }
            },
        }
    }

    /// An address as the API writes it (`ip`, `ip:port`, `[ipv6]:port`), anonymized in the
    /// same form; text that is none of those is returned as it is.
    pub fn address(self, text: &str) -> String {
        if self == Self::Off {
            return text.to_string();
        }
        if let Ok(sa) = text.parse::<SocketAddr>() {
            return SocketAddr::new(self.ip(sa.ip()), sa.port()).to_string();
        }
        match text.parse::<IpAddr>() {
            Ok(ip) => self.ip(ip).to_string(),
            Err(_) => text.to_string(),
        }
    }

    /// `text` (an alert's or a reason's detail) with every mention of `ip` anonymized.
    pub fn text(self, text: &str, ip: IpAddr) -> String {
        if self == Self::Off {
            return text.to_string();
        }
        text.replace(&ip.to_string(), &self.ip(ip).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_cut_to_their_network() {
        let p = Anonymize::Prefix;
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(p.ip(ip("203.0.113.77")), ip("203.0.113.0"));
        assert_eq!(p.ip(ip("2001:db8:aa:bb::1")), ip("2001:db8:aa::"));
        assert_eq!(p.ip(ip("::ffff:203.0.113.77")), ip("203.0.113.0"));
        assert_eq!(Anonymize::Off.ip(ip("203.0.113.77")), ip("203.0.113.77"));
        assert_eq!(p.address("203.0.113.77:443"), "203.0.113.0:443");
        assert_eq!(p.address("[2001:db8:aa:bb::1]:22"), "[2001:db8:aa::]:22");
        assert_eq!(p.address("2001:db8:aa:bb::1"), "2001:db8:aa::");
        assert_eq!(p.address("not an address"), "not an address");
        assert_eq!(
            p.text("203.0.113.77: 200 ports tried", ip("203.0.113.77")),
            "203.0.113.0: 200 ports tried"
        );
        assert_eq!("prefix".parse::<Anonymize>().unwrap(), Anonymize::Prefix);
        let e = "hash".parse::<Anonymize>().unwrap_err().to_string();
        assert!(e.contains("off or prefix") && e.contains("hash"), "{e}");
    }
}
