//! Hand-built packets for BPF_PROG_TEST_RUN: Ethernet with optional VLAN tags, IPv4 with
//! options and fragment fields, IPv6 with extension headers, TCP/UDP/ICMP. Checksums are
//! left zero: the programs under test never verify them.

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

/// Ethernet header, then one 4-byte tag per TPID in `vlans`, then `ethertype`.
pub fn eth(vlans: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    for (i, tpid) in vlans.iter().enumerate() {
        p.extend_from_slice(&tpid.to_be_bytes());
        p.extend_from_slice(&(100 + i as u16).to_be_bytes());
    }
    p.extend_from_slice(&ethertype.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

pub struct V4 {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub proto: u8,
    /// Option bytes (a multiple of 4, at most 40).
    pub options: usize,
    /// Flags and fragment offset, as the 16-bit header field.
    pub frag: u16,
    /// Overrides the IHL nibble (for malformed headers).
    pub ihl: Option<u8>,
    pub version: u8,
}

impl Default for V4 {
    fn default() -> Self {
        Self {
            src: [198, 18, 0, 2],
            dst: [198, 18, 0, 1],
            proto: 6,
            options: 0,
            frag: 0,
            ihl: None,
            version: 4,
        }
    }
}

pub fn ipv4(h: V4, payload: &[u8]) -> Vec<u8> {
    let hlen = 20 + h.options;
    let ihl = h.ihl.unwrap_or((hlen / 4) as u8);
    let mut p = vec![(h.version << 4) | ihl, 0];
    p.extend_from_slice(&((hlen + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0x12, 0x34]);
    p.extend_from_slice(&h.frag.to_be_bytes());
    p.extend_from_slice(&[64, h.proto, 0, 0]);
    p.extend_from_slice(&h.src);
    p.extend_from_slice(&h.dst);
    // NOP options (type 1), then end-of-list would be 0; all NOPs is valid.
    p.extend(std::iter::repeat_n(1u8, h.options));
    p.extend_from_slice(payload);
    p
}

/// An Ethernet frame carrying an IPv4 datagram from `src` to `dst` with a UDP segment (as
/// `udp` builds it): the packet the drop-list tests and the benchmarks send most.
pub fn udp4_frame(src: [u8; 4], dst: [u8; 4], segment: &[u8]) -> Vec<u8> {
    udp4_frame_with(
        V4 {
            src,
            dst,
            ..V4::default()
        },
        segment,
    )
}

/// An untagged Ethernet frame of an IPv4 datagram with header fields `h` (its protocol set
/// to UDP) and a UDP segment.
pub fn udp4_frame_with(h: V4, segment: &[u8]) -> Vec<u8> {
    eth(&[], ETH_P_IP, &ipv4(V4 { proto: 17, ..h }, segment))
}

pub const V6_SRC: [u8; 16] = [0xfd, 0, 0x6e, 0x6d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
pub const V6_DST: [u8; 16] = [0xfd, 0, 0x6e, 0x6d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// IPv6 header with `next` as the first next-header value; `payload` holds any extension
/// headers and the transport header.
pub fn ipv6(next: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.extend_from_slice(&[next, 64]);
    p.extend_from_slice(&V6_SRC);
    p.extend_from_slice(&V6_DST);
    p.extend_from_slice(payload);
    p
}

/// A generic extension header (hop-by-hop, routing, destination options) of `8 * (1 + len)`
/// bytes.
pub fn ext(next: u8, len: u8) -> Vec<u8> {
    let mut h = vec![next, len];
    h.resize(8 * (1 + len as usize), 0);
    h
}

/// IPv6 fragment header; `offset` in 8-byte units, `more` = M flag.
pub fn frag6(next: u8, offset: u16, more: bool) -> Vec<u8> {
    let field = (offset << 3) | u16::from(more);
    let mut h = vec![next, 0];
    h.extend_from_slice(&field.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 7]);
    h
}

/// Authentication header with `words` 32-bit words of ICV after the fixed 12 bytes.
pub fn ah(next: u8, words: u8) -> Vec<u8> {
    let len = 1 + words; // (total / 4) - 2, total = 12 + 4 * words
    let mut h = vec![next, len, 0, 0];
    h.resize(12 + 4 * words as usize, 0);
    h
}

pub fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    p.extend_from_slice(payload);
    p
}

pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&dport.to_be_bytes());
    p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

pub fn icmp(kind: u8, code: u8) -> Vec<u8> {
    vec![kind, code, 0, 0, 0, 1, 0, 1]
}
