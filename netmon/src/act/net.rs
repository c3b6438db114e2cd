//! Addresses and prefixes for the drop list: strict parsing with errors that say what is
//! wrong and what was probably meant, list-file formats, and the safety checks that keep an
//! operator from banning the whole Internet, loopback, or this host.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use thiserror::Error;

/// An IPv4 or IPv6 network: an address with no host bits set, and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NetError {
    #[error(
        "`{0}` is not an IP address or CIDR (expected e.g. 203.0.113.7, 198.51.100.0/24, 2001:db8::/32)"
    )]
    Malformed(String),
    #[error("`{input}`: prefix length {prefix} is out of range for {family} (0-{max})")]
    PrefixRange {
        input: String,
        prefix: String,
        family: &'static str,
        max: u8,
    },
    #[error("`{input}` has host bits set: the network is {network}")]
    HostBits { input: String, network: String },
}

impl Net {
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, NetError> {
        let max = max_prefix(addr);
        if prefix > max {
            return Err(NetError::PrefixRange {
                input: format!("{addr}/{prefix}"),
                prefix: prefix.to_string(),
                family: family_name(addr),
                max,
            });
        }
        let masked = mask(addr, prefix);
        if masked != addr {
            return Err(NetError::HostBits {
                input: format!("{addr}/{prefix}"),
                network: Net {
                    addr: masked,
                    prefix,
                }
                .to_string(),
            });
        }
        Ok(Self { addr, prefix })
    }

    /// The single-address network of `ip` (/32 or /128).
    pub fn host(ip: IpAddr) -> Self {
        Self {
            addr: ip,
            prefix: max_prefix(ip),
        }
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn is_v4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// A single address (/32 or /128): goes to the exact-match hash map.
    pub fn is_host(&self) -> bool {
        self.prefix == max_prefix(self.addr)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }

    /// True when the two networks share any address.
    pub fn overlaps(&self, other: &Net) -> bool {
        self.contains(other.addr) || other.contains(self.addr)
    }

    /// Address bytes: 4 for IPv4, 16 for IPv6.
    pub fn octets(&self) -> Vec<u8> {
        match self.addr {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }
}

fn max_prefix(a: IpAddr) -> u8 {
    if a.is_ipv4() { 32 } else { 128 }
}

fn family_name(a: IpAddr) -> &'static str {
    if a.is_ipv4() { "IPv4" } else { "IPv6" }
}

fn mask(a: IpAddr, prefix: u8) -> IpAddr {
    match a {
        IpAddr::V4(v) => {
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix as u32)
            };
            IpAddr::V4(Ipv4Addr::from(u32::from(v) & m))
        }
        IpAddr::V6(v) => {
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix as u32)
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(v) & m))
        }
    }
}

impl FromStr for Net {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let malformed = || NetError::Malformed(s.to_string());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| malformed())?;
        // An IPv4-mapped IPv6 address is the IPv4 address: one entry, one map.
        let (addr, mapped) = match addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), true),
                None => (addr, false),
            },
            v4 => (v4, false),
        };
        let prefix = match prefix {
            None => max_prefix(addr),
            Some(p) => {
                let n: u8 = p.parse().map_err(|_| NetError::PrefixRange {
                    input: s.to_string(),
                    prefix: p.to_string(),
                    family: family_name(addr),
                    max: max_prefix(addr),
                })?;
                let n = if mapped { n.saturating_sub(96) } else { n };
                if n > max_prefix(addr) {
                    return Err(NetError::PrefixRange {
                        input: s.to_string(),
                        prefix: p.to_string(),
                        family: family_name(addr),
                        max: max_prefix(addr),
                    });
                }
                n
            }
        };
        Net::new(addr, prefix).map_err(|e| match e {
            NetError::HostBits { network, .. } => NetError::HostBits {
                input: s.to_string(),
                network,
            },
            other => other,
        })
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_host() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

impl serde::Serialize for Net {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Net {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{file} line {line}: {error}")]
pub struct ListError {
    pub file: String,
    pub line: usize,
    pub error: NetError,
}

/// Parses a list file: plain lists (one IP or CIDR per line), FireHOL `.netset` and
/// Spamhaus DROP/EDROP (`203.0.113.0/24 ; SBL123`). `#` and `;` start comments; blank lines
/// are skipped; only the first field of a line is read. Any bad line fails the whole file.
pub fn parse_list(text: &str, file: &str) -> Result<Vec<Net>, ListError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let content = line.split(['#', ';']).next().unwrap_or("").trim();
        let Some(field) = content.split_whitespace().next() else {
            continue;
        };
        out.push(field.parse::<Net>().map_err(|error| ListError {
            file: file.to_string(),
            line: i + 1,
            error,
        })?);
    }
    Ok(out)
}

/// Why a ban would be self-harm; refused unless `--force`.
pub fn danger(net: &Net, own_addrs: &[IpAddr]) -> Option<String> {
    if net.prefix() == 0 {
        return Some(format!(
            "{net} covers every {} address",
            family_name(net.addr())
        ));
    }
    let loopback = [
        Net {
            addr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)),
            prefix: 8,
        },
        Net {
            addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
            prefix: 128,
        },
    ];
    if let Some(l) = loopback.iter().find(|l| l.overlaps(net)) {
        return Some(format!("{net} overlaps loopback ({l})"));
    }
    if let Some(a) = own_addrs.iter().find(|a| net.contains(**a)) {
        return Some(format!("{net} covers {a}, an address of this host"));
    }
    None
}

/// Addresses of this host's interfaces (in this network namespace).
pub fn own_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below; we only read sockaddrs by family.
    unsafe {
        if libc::getifaddrs(&mut ifap) != 0 {
            return out;
        }
        let mut p = ifap;
        while !p.is_null() {
            let sa = (*p).ifa_addr;
            if !sa.is_null() {
                match (*sa).sa_family as i32 {
                    libc::AF_INET => {
                        let sin = &*(sa as *const libc::sockaddr_in);
                        out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            sin.sin_addr.s_addr,
                        ))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(sa as *const libc::sockaddr_in6);
                        out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(ifap);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Net {
        s.parse().unwrap()
    }

    #[test]
    fn parses_addresses_and_prefixes() {
        assert_eq!(n("203.0.113.7").to_string(), "203.0.113.7");
        assert!(n("203.0.113.7").is_host());
        assert_eq!(n("198.51.100.0/24").to_string(), "198.51.100.0/24");
        assert_eq!(n("2001:db8::/32").to_string(), "2001:db8::/32");
        assert!(n("2001:db8::1").is_host());
        assert_eq!(n(" 10.0.0.0/8 ").prefix(), 8);
        assert_eq!(n("::ffff:192.0.2.1").to_string(), "192.0.2.1");
        assert_eq!(n("::ffff:192.0.2.0/120").to_string(), "192.0.2.0/24");
    }

    #[test]
    fn errors_name_the_problem() {
        let e = "1.2.3".parse::<Net>().unwrap_err();
        assert_eq!(e, NetError::Malformed("1.2.3".into()));
        assert!(e.to_string().contains("not an IP address or CIDR"));
        let e = "10.0.0.1/8".parse::<Net>().unwrap_err().to_string();
        assert_eq!(
            e,
            "`10.0.0.1/8` has host bits set: the network is 10.0.0.0/8"
        );
        let e = "10.0.0.0/33".parse::<Net>().unwrap_err().to_string();
        assert!(
            e.contains("prefix length 33 is out of range for IPv4 (0-32)"),
            "{e}"
        );
        let e = "2001:db8::/129".parse::<Net>().unwrap_err().to_string();
        assert!(e.contains("IPv6 (0-128)"), "{e}");
        assert!("10.0.0.0/x".parse::<Net>().is_err());
        assert!("".parse::<Net>().is_err());
    }

    #[test]
    fn containment_and_overlap() {
        assert!(n("198.51.100.0/24").contains("198.51.100.77".parse().unwrap()));
        assert!(!n("198.51.100.0/24").contains("198.51.101.1".parse().unwrap()));
        assert!(!n("198.51.100.0/24").contains("::1".parse().unwrap()));
        assert!(n("10.0.0.0/8").overlaps(&n("10.1.0.0/16")));
        assert!(n("10.1.0.0/16").overlaps(&n("10.0.0.0/8")));
        assert!(!n("10.0.0.0/8").overlaps(&n("11.0.0.0/8")));
    }

    #[test]
    fn list_formats() {
        let text = "# FireHOL netset\n203.0.113.0/24\n\n; Spamhaus\n198.51.100.0/24 ; SBL123\n2001:db8::/32\t# v6\n192.0.2.9\n";
        let l = parse_list(text, "f").unwrap();
        assert_eq!(
            l.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            [
                "203.0.113.0/24",
                "198.51.100.0/24",
                "2001:db8::/32",
                "192.0.2.9"
            ]
        );
        let e = parse_list("1.2.3.4\nbogus\n", "/tmp/x.txt").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(
            e.to_string().starts_with("/tmp/x.txt line 2: `bogus`"),
            "{e}"
        );
        let e = parse_list("10.0.0.1/8\n", "y").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("10.0.0.0/8"), "{e}");
    }

    #[test]
    fn dangerous_bans() {
        let own: Vec<IpAddr> = vec!["192.0.2.10".parse().unwrap()];
        assert!(
            danger(&n("0.0.0.0/0"), &own)
                .unwrap()
                .contains("every IPv4")
        );
        assert!(danger(&n("::/0"), &own).unwrap().contains("every IPv6"));
        assert!(danger(&n("127.0.0.1"), &own).unwrap().contains("loopback"));
        assert!(danger(&n("64.0.0.0/2"), &own).unwrap().contains("loopback"));
        assert!(danger(&n("::1"), &own).unwrap().contains("loopback"));
        assert!(
            danger(&n("192.0.2.0/24"), &own)
                .unwrap()
                .contains("192.0.2.10")
        );
        assert_eq!(danger(&n("198.51.100.0/24"), &own), None);
    }
}
