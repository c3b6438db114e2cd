//! Packet parsing shared by the XDP (ingress) and TC (egress) programs.
//!
//! Everything is bounds-checked against `end` before it is read, in the form the verifier
//! understands (`data + off + size > end`), and every loop has a constant bound. A packet
//! that cannot be fully parsed is never dropped: the parser says how far it got, and the
//! caller records what it knows and bumps the matching counter.

use core::mem::size_of;

use netmon_common::{
    FLOW_FLAG_NO_PORTS, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, counter, v4_mapped,
};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
/// 802.1ad QinQ: an outer S-tag and an inner C-tag.
const MAX_VLAN_TAGS: usize = 2;
/// Hop-by-hop, routing, fragment, destination options, AH, mobility...: a real packet has a
/// handful; anything longer is recorded without ports and counted.
const MAX_IPV6_EXT: usize = 8;
const IPV6_HLEN: usize = 40;
const IPV4_MIN_HLEN: usize = 20;

/// No counter to bump.
pub const NOTE_NONE: u32 = u32::MAX;

/// A packet's bytes: `[data, end)`.
pub struct Packet {
    pub data: usize,
    pub end: usize,
}

impl Packet {
    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Option<T> {
        if self.data + off + size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: the range [data+off, data+off+size) was checked to lie inside the packet.
        Some(unsafe { core::ptr::read_unaligned((self.data + off) as *const T) })
    }
}

/// What the parser learnt about a packet, in wire orientation (source/destination).
pub struct Parsed {
    pub family: u8,
    pub proto: u8,
    /// `FLOW_FLAG_*`.
    pub flags: u8,
    pub tcp_flags: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// ICMP/ICMPv6 `type << 8 | code`.
    pub icmp: u16,
    /// A counter the caller bumps although the packet was recorded (fragment, truncated L4...).
    pub note: u32,
}

impl Parsed {
    #[inline(always)]
    pub const fn new() -> Self {
        Self {
            family: 0,
            proto: 0,
            flags: 0,
            tcp_flags: 0,
            src: [0; 16],
            dst: [0; 16],
            sport: 0,
            dport: 0,
            icmp: 0,
            note: NOTE_NONE,
        }
    }

    #[inline(always)]
    fn no_ports(&mut self, note: u32) {
        self.flags |= FLOW_FLAG_NO_PORTS;
        self.note = note;
    }
}

/// Parses Ethernet (with up to two VLAN tags), IPv4/IPv6 and the transport header.
/// `Err(counter)`: no flow can be recorded (not IP, or the IP header itself is unusable).
#[inline(always)]
pub fn parse(p: &Packet, out: &mut Parsed) -> Result<(), u32> {
    let mut ethertype = u16::from_be(p.load::<u16>(12).ok_or(counter::TRUNCATED_L3)?);
    let mut off = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        // The tag is TCI (2 bytes) then the encapsulated ethertype (2 bytes).
        ethertype = u16::from_be(p.load::<u16>(off + 2).ok_or(counter::TRUNCATED_L3)?);
        off += 4;
    }
    match ethertype {
        ETH_P_IP => parse_ipv4(p, off, out),
        ETH_P_IPV6 => parse_ipv6(p, off, out),
        ETH_P_8021Q | ETH_P_8021AD => Err(counter::VLAN_LIMIT),
        _ => Err(counter::NON_IP),
    }
}

#[inline(always)]
fn parse_ipv4(p: &Packet, off: usize, out: &mut Parsed) -> Result<(), u32> {
    // The fixed 20-byte header in one constant-size check. (A check against the variable IHL
    // first would let LLVM drop the constant ones, and the verifier cannot carry a range
    // learnt on a variable-offset pointer back to the packet's base pointer.)
    let h: [u8; IPV4_MIN_HLEN] = p.load(off).ok_or(counter::TRUNCATED_L3)?;
    if h[0] >> 4 != 4 {
        return Err(counter::BAD_L3_HEADER);
    }
    // IHL counts 32-bit words; options make it up to 60 bytes (RFC 791).
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    if ihl < IPV4_MIN_HLEN {
        return Err(counter::BAD_L3_HEADER);
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    let proto = h[9];
    out.family = 4;
    out.proto = proto;
    out.src = v4_mapped([h[12], h[13], h[14], h[15]]);
    out.dst = v4_mapped([h[16], h[17], h[18], h[19]]);
    // A non-zero fragment offset means no transport header in this packet (RFC 791).
    if frag & 0x1fff != 0 {
        out.no_ports(counter::FRAGMENT);
        return Ok(());
    }
    // Options that run past the packet's end leave no room for a transport header; the
    // transport parser's own bounds check reports that as truncated.
    parse_l4(p, off + ihl, proto, out);
    Ok(())
}

#[inline(always)]
fn parse_ipv6(p: &Packet, off: usize, out: &mut Parsed) -> Result<(), u32> {
    // The whole fixed header is checked first, for the same reason as in parse_ipv4.
    if p.data + off + IPV6_HLEN > p.end {
        return Err(counter::TRUNCATED_L3);
    }
    let head: [u8; 8] = p.load(off).ok_or(counter::TRUNCATED_L3)?;
    if head[0] >> 4 != 6 {
        return Err(counter::BAD_L3_HEADER);
    }
    let mut next = head[6];
    out.src = p.load(off + 8).ok_or(counter::TRUNCATED_L3)?;
    out.dst = p.load(off + 24).ok_or(counter::TRUNCATED_L3)?;
    out.family = 6;
    let mut l4 = off + IPV6_HLEN;
    // Extension headers (RFC 8200 section 4): a bounded walk.
    for _ in 0..MAX_IPV6_EXT {
        match next {
            // Hop-by-hop, routing, destination options, mobility, HIP, shim6:
            // length in 8-octet units, not counting the first 8.
            0 | 43 | 60 | 135 | 139 | 140 => {
                let Some(h) = p.load::<[u8; 2]>(l4) else {
                    out.proto = next;
                    out.no_ports(counter::TRUNCATED_L4);
                    return Ok(());
                };
                next = h[0];
                l4 += (h[1] as usize + 1) * 8;
            }
            // Fragment header: 8 bytes; offset in the top 13 bits of bytes 2-3.
            44 => {
                let Some(h) = p.load::<[u8; 4]>(l4) else {
                    out.proto = next;
                    out.no_ports(counter::TRUNCATED_L4);
                    return Ok(());
                };
                next = h[0];
                l4 += 8;
                if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                    out.proto = next;
                    out.no_ports(counter::FRAGMENT);
                    return Ok(());
                }
            }
            // Authentication header: length in 4-octet units, minus 2 (RFC 4302).
            51 => {
                let Some(h) = p.load::<[u8; 2]>(l4) else {
                    out.proto = next;
                    out.no_ports(counter::TRUNCATED_L4);
                    return Ok(());
                };
                next = h[0];
                l4 += (h[1] as usize + 2) * 4;
            }
            _ => {
                parse_l4(p, l4, next, out);
                return Ok(());
            }
        }
    }
    out.proto = next;
    out.no_ports(counter::IPV6_EXT_LIMIT);
    Ok(())
}

#[inline(always)]
fn parse_l4(p: &Packet, l4: usize, proto: u8, out: &mut Parsed) {
    out.proto = proto;
    match proto {
        IPPROTO_TCP => match p.load::<[u8; 14]>(l4) {
            Some(h) => {
                out.sport = u16::from_be_bytes([h[0], h[1]]);
                out.dport = u16::from_be_bytes([h[2], h[3]]);
                out.tcp_flags = h[13];
            }
            None => out.no_ports(counter::TRUNCATED_L4),
        },
        IPPROTO_UDP => match p.load::<[u8; 4]>(l4) {
            Some(h) => {
                out.sport = u16::from_be_bytes([h[0], h[1]]);
                out.dport = u16::from_be_bytes([h[2], h[3]]);
            }
            None => out.no_ports(counter::TRUNCATED_L4),
        },
        IPPROTO_ICMP | IPPROTO_ICMPV6 => match p.load::<[u8; 2]>(l4) {
            Some(h) => out.icmp = u16::from_be_bytes([h[0], h[1]]),
            None => out.no_ports(counter::TRUNCATED_L4),
        },
        _ => out.no_ports(counter::OTHER_L4),
    }
}
