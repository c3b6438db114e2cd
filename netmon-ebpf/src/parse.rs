//! Packet parsing shared by the XDP (ingress) and TC (egress) programs.
//!
//! Everything is bounds-checked against `end` before it is read, in the form the verifier
//! understands (`data + off + size > end`), and every loop has a constant bound. A packet
//! that cannot be fully parsed is never dropped: the parser says how far it got, and the
//! caller records what it knows and bumps the matching counter.
//!
//! Header fields are read as aligned 32-bit words, not byte by byte: the IP header follows
//! 14 bytes of Ethernet (plus 4 per VLAN tag), and the kernel lays packets out with
//! NET_IP_ALIGN so that it is 4-byte aligned; the verifier's alignment rules (strict on
//! architectures without efficient unaligned access) assume exactly that. Words hold the
//! wire bytes in memory order: addresses are `[u32; 4]` of network-order bytes.

use core::mem::size_of;

use netmon_common::{
    FLOW_FLAG_NO_PORTS, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, counter,
};

#[cfg(target_endian = "big")]
compile_error!("the parser's word arithmetic assumes a little-endian BPF target (bpfel)");

/// An address as four words of network-order bytes.
pub type Addr = [u32; 4];

/// `::ffff:a.b.c.d` from the IPv4 address word.
#[inline(always)]
const fn v4_mapped_words(v4: u32) -> Addr {
    [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), v4]
}

/// The 16 bytes of an address.
#[inline(always)]
pub const fn addr_bytes(a: Addr) -> [u8; 16] {
    // SAFETY: [u32; 4] and [u8; 16] have the same size; every bit pattern is valid.
    unsafe { core::mem::transmute::<Addr, [u8; 16]>(a) }
}

/// Byte `i` (0 = first on the wire) of a word.
#[inline(always)]
const fn byte(w: u32, i: u32) -> u8 {
    (w >> (8 * i)) as u8
}

/// The big-endian 16-bit field in bytes `2h, 2h+1` of a word.
#[inline(always)]
const fn be16(w: u32, h: u32) -> u16 {
    u16::from_be((w >> (16 * h)) as u16)
}

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

    /// `N` words at `off`, one load each. `off` is a header boundary at or after the IP
    /// header, 4-byte aligned under NET_IP_ALIGN (see the module comment).
    #[inline(always)]
    fn words<const N: usize>(&self, off: usize) -> Option<[u32; N]> {
        if self.data + off + 4 * N > self.end {
            return None;
        }
        let mut out = [0u32; N];
        let mut i = 0;
        while i < N {
            // SAFETY: inside the packet (checked above); aligned as the kernel lays headers
            // out, and the BPF ISA has no alignment faults where the kernel allows the load.
            out[i] = unsafe { core::ptr::read_volatile((self.data + off + 4 * i) as *const u32) };
            i += 1;
        }
        Some(out)
    }
}

/// What the parser learnt about a packet, in wire orientation (source/destination). Whole
/// 64-bit words without padding, 8-byte aligned (`reset`, `parse_fast` write it as words).
#[repr(C, align(8))]
pub struct Parsed {
    pub family: u8,
    pub proto: u8,
    /// `FLOW_FLAG_*`.
    pub flags: u8,
    pub tcp_flags: u8,
    pub src: Addr,
    pub dst: Addr,
    pub sport: u16,
    pub dport: u16,
    /// ICMP/ICMPv6 `type << 8 | code`.
    pub icmp: u16,
    /// Zero; makes the padding a field (`reset` writes whole words).
    pad: u16,
    /// A counter the caller bumps although the packet was recorded (fragment, truncated L4...).
    pub note: u32,
}

const PARSED_WORDS: usize = size_of::<Parsed>() / 8;
const _: () = assert!(
    size_of::<Parsed>() == 8 * PARSED_WORDS,
    "whole 64-bit words"
);
/// `Parsed::new()` as 64-bit words (it has no padding: a transmute of padding would not
/// compile).
const NEW_WORDS: [u64; PARSED_WORDS] =
    // SAFETY: a Parsed is PARSED_WORDS words without padding, every bit pattern a u64.
    unsafe { core::mem::transmute::<Parsed, [u64; PARSED_WORDS]>(Parsed::new()) };

impl Parsed {
    #[inline(always)]
    pub const fn new() -> Self {
        Self {
            family: 0,
            proto: 0,
            flags: 0,
            tcp_flags: 0,
            src: [0; 4],
            dst: [0; 4],
            sport: 0,
            dport: 0,
            icmp: 0,
            pad: 0,
            note: NOTE_NONE,
        }
    }

    /// Makes `*p` a `Parsed::new()`, one volatile store per 64-bit word. A plain store of a
    /// whole struct behind a pointer becomes a memset call, a BPF-to-BPF call the packet
    /// programs do not make.
    ///
    /// # Safety
    /// `p` is valid for writes and 8-byte aligned.
    #[inline(always)]
    pub unsafe fn reset(p: *mut Parsed) {
        let w = p.cast::<u64>();
        let mut i = 0;
        while i < PARSED_WORDS {
            // SAFETY: word `i` of the struct, per the caller's promise.
            unsafe { core::ptr::write_volatile(w.add(i), NEW_WORDS[i]) };
            i += 1;
        }
    }

    #[inline(always)]
    fn no_ports(&mut self, note: u32) {
        self.flags |= FLOW_FLAG_NO_PORTS;
        self.note = note;
    }
}

/// The common frame parsed in one pass, straight into `*out` as its PARSED_WORDS words:
/// untagged Ethernet, then IPv4 without options and not a fragment, or IPv6 without
/// extension headers, then a TCP or UDP header whose fields `parse` reads, all inside the
/// packet. True when it was that frame and `*out` holds what `parse` would have written;
/// false, with `*out` untouched, for every other frame, which `parse` then takes from the
/// start. The general parser resets the struct, then stores field by field as it learns
/// them, and branches on VLAN tags, options, fragments, extension headers and protocols
/// without ports; here one bounds check covers the headers, and the parse is six stores.
///
/// # Safety
/// `out` is valid for writes and 8-byte aligned.
#[inline(always)]
pub unsafe fn parse_fast(p: &Packet, out: *mut Parsed) -> bool {
    let Some(ethertype) = p.load::<u16>(12) else {
        return false;
    };
    let w = out.cast::<u64>();
    // Word 5 (ICMP, pad, note) as `Parsed::new()` has it: a frame with ports has no note.
    let word5 = NEW_WORDS[5];
    if ethertype == ETH_P_IP.to_be() {
        // The fixed header and the transport header's ports word, in one bounds check.
        let Some(h) = p.words::<{ (IPV4_MIN_HLEN + 4) / 4 }>(ETH_HLEN) else {
            return false;
        };
        // Version 4, IHL 5; no fragment offset (RFC 791; the flags may be anything).
        if byte(h[0], 0) != 0x45 || h[1] & 0xff1f_0000 != 0 {
            return false;
        }
        let proto = byte(h[2], 1);
        let Some(tcp_flags) = l4_flags(p, proto, ETH_HLEN + IPV4_MIN_HLEN) else {
            return false;
        };
        let mapped = u64::from(v4_mapped_words(0)[2]);
        // SAFETY: the caller's promise; the words of a Parsed in its field order (family,
        // proto, flags, tcp_flags, src[0]; src[1], src[2]; src[3], dst[0]; dst[1], dst[2];
        // dst[3], sport, dport; icmp, pad, note), which tests/tests/packets.rs checks with
        // frames of both parsers run through the programs.
        unsafe {
            core::ptr::write_volatile(w, 4 | u64::from(proto) << 8 | u64::from(tcp_flags) << 24);
            core::ptr::write_volatile(w.add(1), mapped << 32);
            core::ptr::write_volatile(w.add(2), u64::from(h[3]));
            core::ptr::write_volatile(w.add(3), mapped << 32);
            core::ptr::write_volatile(w.add(4), u64::from(h[4]) | ports_word(h[5]));
            core::ptr::write_volatile(w.add(5), word5);
        }
        true
    } else if ethertype == ETH_P_IPV6.to_be() {
        let Some(h) = p.words::<{ (IPV6_HLEN + 4) / 4 }>(ETH_HLEN) else {
            return false;
        };
        let proto = byte(h[1], 2);
        if byte(h[0], 0) >> 4 != 6 {
            return false;
        }
        let Some(tcp_flags) = l4_flags(p, proto, ETH_HLEN + IPV6_HLEN) else {
            return false;
        };
        // SAFETY: as above.
        unsafe {
            core::ptr::write_volatile(
                w,
                6 | u64::from(proto) << 8 | u64::from(tcp_flags) << 24 | u64::from(h[2]) << 32,
            );
            core::ptr::write_volatile(w.add(1), u64::from(h[3]) | u64::from(h[4]) << 32);
            core::ptr::write_volatile(w.add(2), u64::from(h[5]) | u64::from(h[6]) << 32);
            core::ptr::write_volatile(w.add(3), u64::from(h[7]) | u64::from(h[8]) << 32);
            core::ptr::write_volatile(w.add(4), u64::from(h[9]) | ports_word(h[10]));
            core::ptr::write_volatile(w.add(5), word5);
        }
        true
    } else {
        false
    }
}

/// For `parse_fast`: the TCP flags (0 for UDP) of the header at `l4`, whose ports word the
/// caller has read; None for another protocol, or a TCP header cut before its flags.
#[inline(always)]
fn l4_flags(p: &Packet, proto: u8, l4: usize) -> Option<u8> {
    match proto {
        IPPROTO_UDP => Some(0),
        // The flags (byte 13) read alone, not the four words up to them; the header must
        // reach byte 16, as `parse_l4` asks.
        IPPROTO_TCP => p.load::<[u8; 4]>(l4 + 12).map(|w| w[1]),
        _ => None,
    }
}

/// Word 4's upper half in `parse_fast`: the source port (bytes 4-5 of the word) and the
/// destination port (6-7), each in host order as `Parsed` keeps them, from the transport
/// header's first word.
#[inline(always)]
fn ports_word(w: u32) -> u64 {
    u64::from(be16(w, 0)) << 32 | u64::from(be16(w, 1)) << 48
}

/// Where the transport header starts, once the network layer is parsed.
struct L4At {
    off: usize,
    proto: u8,
}

/// Parses Ethernet (with up to two VLAN tags), IPv4/IPv6 and the transport header.
/// `Err(counter)`: no flow can be recorded (not IP, or the IP header itself is unusable).
#[inline(always)]
pub fn parse(p: &Packet, out: &mut Parsed) -> Result<(), u32> {
    if let Some(l4) = parse_l3(p, out)? {
        parse_l4(p, l4.off, l4.proto, out);
    }
    Ok(())
}

/// Parses up to and including the network layer (addresses, IPv6 extension headers).
/// `Ok(None)`: no transport header to read (fragment, truncated chain), already noted in
/// `out`.
#[inline(always)]
fn parse_l3(p: &Packet, out: &mut Parsed) -> Result<Option<L4At>, u32> {
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
fn parse_ipv4(p: &Packet, off: usize, out: &mut Parsed) -> Result<Option<L4At>, u32> {
    // The fixed 20-byte header in one constant-size check. (A check against the variable IHL
    // first would let LLVM drop the constant ones, and the verifier cannot carry a range
    // learnt on a variable-offset pointer back to the packet's base pointer.)
    let h: [u32; IPV4_MIN_HLEN / 4] = p.words(off).ok_or(counter::TRUNCATED_L3)?;
    let vihl = byte(h[0], 0);
    if vihl >> 4 != 4 {
        return Err(counter::BAD_L3_HEADER);
    }
    // IHL counts 32-bit words; options make it up to 60 bytes (RFC 791).
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if ihl < IPV4_MIN_HLEN {
        return Err(counter::BAD_L3_HEADER);
    }
    let frag = be16(h[1], 1);
    let proto = byte(h[2], 1);
    out.family = 4;
    out.proto = proto;
    out.src = v4_mapped_words(h[3]);
    out.dst = v4_mapped_words(h[4]);
    // A non-zero fragment offset means no transport header in this packet (RFC 791).
    if frag & 0x1fff != 0 {
        out.no_ports(counter::FRAGMENT);
        return Ok(None);
    }
    // Options that run past the packet's end leave no room for a transport header; the
    // transport parser's own bounds check reports that as truncated.
    Ok(Some(L4At {
        off: off + ihl,
        proto,
    }))
}

#[inline(always)]
fn parse_ipv6(p: &Packet, off: usize, out: &mut Parsed) -> Result<Option<L4At>, u32> {
    // The whole fixed header is checked first, for the same reason as in parse_ipv4.
    let h: [u32; IPV6_HLEN / 4] = p.words(off).ok_or(counter::TRUNCATED_L3)?;
    if byte(h[0], 0) >> 4 != 6 {
        return Err(counter::BAD_L3_HEADER);
    }
    let mut next = byte(h[1], 2);
    out.src = [h[2], h[3], h[4], h[5]];
    out.dst = [h[6], h[7], h[8], h[9]];
    out.family = 6;
    let mut l4 = off + IPV6_HLEN;
    // Extension headers (RFC 8200 section 4): a bounded walk, one header per step. Each step
    // branches on the header type only to leave the walk; the header's length comes from
    // branch-free arithmetic on two 0/1 flags computed before that branch. So the verifier
    // reaches the next step in one state whatever the header was, and checks the walk's
    // steps once each: with a branch per header kind its state (the offset's range and known
    // bits differ per kind) multiplied by three at every step, and the rest of the program
    // was checked once per combination (netmon_xdp: ~227,000 instructions processed).
    // The steps are written out, not looped: whether LLVM unrolls a loop is its own cost
    // model's choice, and as a loop the verifier checked the walk's exits once per
    // iteration (netmon_xdp: ~92,000 instructions processed as a loop, ~72,000 written out).
    macro_rules! steps {
        ($($step:literal)*) => {
            const _: () = assert!([$($step),*].len() == MAX_IPV6_EXT, "one step per header");
            $(
                let _step: u8 = $step;
                if let Some(end) = ipv6_ext_step(p, &mut next, &mut l4, out) {
                    return Ok(end);
                }
            )*
        };
    }
    steps!(1 2 3 4 5 6 7 8);
    out.proto = next;
    out.no_ports(counter::IPV6_EXT_LIMIT);
    Ok(None)
}

/// One step of the extension-header walk at `l4`, whose type is `next`: `Some` ends the
/// walk (`Some(None)`: no transport header to read, already noted in `out`), `None`
/// continues it with `next` and `l4` moved past this header.
#[inline(always)]
fn ipv6_ext_step(
    p: &Packet,
    next: &mut u8,
    l4: &mut usize,
    out: &mut Parsed,
) -> Option<Option<L4At>> {
    let is_ah = eq_flag(*next, 51);
    let is_frag = eq_flag(*next, 44);
    if !matches!(*next, 0 | 43 | 44 | 51 | 60 | 135 | 139 | 140) {
        return Some(Some(L4At {
            off: *l4,
            proto: *next,
        }));
    }
    let Some(h) = p.load::<[u8; 4]>(*l4) else {
        out.proto = *next;
        out.no_ports(counter::TRUNCATED_L4);
        return Some(None);
    };
    *next = h[0];
    // Hop-by-hop, routing, destination options, mobility, HIP, shim6: (len + 1) * 8
    // octets. Authentication header: (len + 2) * 4 (RFC 4302). Fragment: 8, its offset in
    // the top 13 bits of bytes 2-3. Each length is masked by its kind's flag (all ones or
    // zero, exactly one kind matches) and the three added: only AND, ADD, SUB and constant
    // shifts, the operations whose bounds every supported verifier keeps with a
    // non-constant operand (Linux 6.1's forgets everything about a product, or an OR, of
    // two unknown values).
    let m_ah = 0u64.wrapping_sub(is_ah);
    let m_frag = 0u64.wrapping_sub(is_frag);
    let m_generic = (is_ah + is_frag).wrapping_sub(1);
    let h1 = h[1] as u64;
    let len = (((h1 + 1) << 3) & m_generic) + (((h1 + 2) << 2) & m_ah) + (8 & m_frag);
    *l4 += len as usize;
    let frag_offset = u16::from_be_bytes([h[2], h[3]]) & 0xfff8;
    if frag_offset as u64 & m_frag != 0 {
        out.proto = *next;
        out.no_ports(counter::FRAGMENT);
        return Some(None);
    }
    None
}

/// 1 when `a == b`, else 0, computed without a jump: `((a ^ b) - 1) >> 63`, as instructions
/// the compiler cannot turn back into a comparison (the BPF backend lowers every comparison
/// to a jump, and a jump on `a` would give the verifier one state per outcome).
#[inline(always)]
fn eq_flag(a: u8, b: u8) -> u64 {
    #[cfg(target_arch = "bpf")]
    {
        let r: u64;
        // SAFETY: register arithmetic only.
        unsafe {
            core::arch::asm!(
                "{r} = {a}",
                "{r} ^= {b}",
                "{r} += -1",
                "{r} >>= 63",
                r = out(reg) r,
                a = in(reg) a as u64,
                b = in(reg) b as u64,
                options(nostack)
            );
        }
        r
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        u64::from(a == b)
    }
}

#[inline(always)]
fn parse_l4(p: &Packet, l4: usize, proto: u8, out: &mut Parsed) {
    out.proto = proto;
    match proto {
        // Ports, sequence, acknowledgement, then offset/flags: byte 13 is the flags.
        IPPROTO_TCP => match p.words::<4>(l4) {
            Some(h) => {
                out.sport = be16(h[0], 0);
                out.dport = be16(h[0], 1);
                out.tcp_flags = byte(h[3], 1);
            }
            None => out.no_ports(counter::TRUNCATED_L4),
        },
        IPPROTO_UDP => match p.words::<1>(l4) {
            Some(h) => {
                out.sport = be16(h[0], 0);
                out.dport = be16(h[0], 1);
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
