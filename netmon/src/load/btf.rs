//! A minimal reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): just enough to find the
//! byte offset of a struct member, including members of anonymous nested structs/unions.
//!
//! Rust eBPF programs have no CO-RE relocations, so the loader looks up the offsets the
//! probes need in the running kernel's own type information and passes them as globals.
//! Format: Documentation/bpf/btf.rst (header, type section, string section).

use std::collections::HashMap;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("BTF data is truncated or malformed at byte {0}")]
    Malformed(usize),
    #[error("bad BTF magic {0:#06x} (expected 0xeb9f, little-endian)")]
    BadMagic(u16),
    #[error("BTF has no struct `{0}`")]
    NoStruct(String),
    #[error("struct `{strukt}` has no member `{member}`")]
    NoMember { strukt: String, member: String },
    #[error("struct `{strukt}` member `{member}` is a bitfield")]
    Bitfield { strukt: String, member: String },
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Clone, Copy)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Bit offset, or with `kind_flag`: bitfield size << 24 | bit offset.
    offset: u32,
}

struct Type {
    name_off: u32,
    kind: u32,
    kind_flag: bool,
    /// `size` for structs, `type` for modifiers.
    size_or_type: u32,
    members: Vec<Member>,
}

pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs_by_name: HashMap<String, u32>,
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, BtfError> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
        .ok_or(BtfError::Malformed(off))
}

impl Btf {
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let magic = u16::from_le_bytes(
            data.get(0..2)
                .ok_or(BtfError::Malformed(0))?
                .try_into()
                .expect("2 bytes"),
        );
        if magic != 0xeb9f {
            return Err(BtfError::BadMagic(magic));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = hdr_len + u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = hdr_len + u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let tsec = data
            .get(type_off..type_off + type_len)
            .ok_or(BtfError::Malformed(type_off))?;
        let strings = data
            .get(str_off..str_off + str_len)
            .ok_or(BtfError::Malformed(str_off))?
            .to_vec();

        // Type id 0 is `void`.
        let mut types = vec![Type {
            name_off: 0,
            kind: 0,
            kind_flag: false,
            size_or_type: 0,
            members: Vec::new(),
        }];
        let mut pos = 0;
        while pos < tsec.len() {
            let name_off = u32_at(tsec, pos)?;
            let info = u32_at(tsec, pos + 4)?;
            let size_or_type = u32_at(tsec, pos + 8)?;
            pos += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = pos + i * 12;
                        members.push(Member {
                            name_off: u32_at(tsec, m)?,
                            type_id: u32_at(tsec, m + 4)?,
                            offset: u32_at(tsec, m + 8)?,
                        });
                    }
                    vlen * 12
                }
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                _ => 0,
            };
            pos += extra;
            if pos > tsec.len() {
                return Err(BtfError::Malformed(type_off + pos));
            }
            types.push(Type {
                name_off,
                kind,
                kind_flag,
                size_or_type,
                members,
            });
        }
        let mut btf = Self {
            types,
            strings,
            structs_by_name: HashMap::new(),
        };
        for (id, t) in btf.types.iter().enumerate() {
            if t.kind == KIND_STRUCT && t.name_off != 0 {
                let name = btf.name(t.name_off).to_string();
                btf.structs_by_name.entry(name).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    pub fn from_sys_fs() -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).with_context(|| {
            format!("reading {path} (kernel built without CONFIG_DEBUG_INFO_BTF?)")
        })?;
        Self::parse(&data).with_context(|| format!("parsing {path}"))
    }

    fn name(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type;
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Byte offset of `member` in struct `strukt`, searching anonymous nested members.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        self.member_path_offset(strukt, &[member])
    }

    /// Byte offset of `path[last]` in struct `strukt`, each step a member of the previous
    /// one's type (typedefs followed: `["skc_net", "net"]` through `possible_net_t`), each
    /// searched through anonymous nested members.
    pub fn member_path_offset(&self, strukt: &str, path: &[&str]) -> Result<u32, BtfError> {
        let id = *self
            .structs_by_name
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.to_string()))?;
        let no_member = |member: &str| BtfError::NoMember {
            strukt: strukt.to_string(),
            member: member.to_string(),
        };
        let mut t = &self.types[id as usize];
        let mut bits = 0;
        for (i, member) in path.iter().enumerate() {
            let (at, type_id) = self
                .find_member(t, member, bits)
                .ok_or_else(|| no_member(member))?;
            bits = at;
            if i + 1 < path.len() {
                t = self
                    .resolve(type_id)
                    .filter(|t| matches!(t.kind, KIND_STRUCT | KIND_UNION))
                    .ok_or_else(|| no_member(path[i + 1]))?;
            }
        }
        let member = path.last().copied().unwrap_or_default();
        if bits % 8 != 0 {
            return Err(BtfError::Bitfield {
                strukt: strukt.to_string(),
                member: member.to_string(),
            });
        }
        Ok(bits / 8)
    }

    /// The bit offset (from `base_bits`) and type of `member` in `t`.
    fn find_member(&self, t: &Type, member: &str, base_bits: u32) -> Option<(u32, u32)> {
        for m in &t.members {
            let bit_off = if t.kind_flag {
                m.offset & 0x00ff_ffff
            } else {
                m.offset
            };
            if m.name_off != 0 {
                if self.name(m.name_off) == member {
                    return Some((base_bits + bit_off, m.type_id));
                }
            } else if let Some(inner) = self.resolve(m.type_id)
                && matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                && let Some(found) = self.find_member(inner, member, base_bits + bit_off)
            {
                return Some(found);
            }
        }
        None
    }
}

/// Offsets of the `struct sock` fields the probes read, from the running kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockOffsets {
    pub daddr: u32,
    pub rcv_saddr: u32,
    pub dport: u32,
    pub num: u32,
    pub family: u32,
    pub v6_daddr: u32,
    pub v6_rcv_saddr: u32,
    /// `sk_protocol`, in `struct sock` past `sock_common` (the layout there depends on the
    /// kernel's configuration); `None` where BTF does not give it as a whole field.
    pub protocol: Option<u32>,
    /// `skc_net.net`, the socket's network namespace; `None` where BTF does not have it (a
    /// kernel without network namespaces has an empty `possible_net_t`).
    pub net: Option<u32>,
}

impl SockOffsets {
    pub fn from_btf(btf: &Btf) -> Result<Self, BtfError> {
        // `struct sock` starts with `struct sock_common __sk_common` (include/net/sock.h).
        let base = btf.member_offset("sock", "__sk_common")?;
        let f = |m: &str| btf.member_offset("sock_common", m).map(|o| base + o);
        Ok(Self {
            daddr: f("skc_daddr")?,
            rcv_saddr: f("skc_rcv_saddr")?,
            dport: f("skc_dport")?,
            num: f("skc_num")?,
            family: f("skc_family")?,
            v6_daddr: f("skc_v6_daddr")?,
            v6_rcv_saddr: f("skc_v6_rcv_saddr")?,
            protocol: btf.member_offset("sock", "sk_protocol").ok(),
            net: btf
                .member_path_offset("sock_common", &["skc_net", "net"])
                .map(|o| base + o)
                .ok(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tiny BTF blob: `struct inner { int a; int b; }`,
    /// `struct outer { int x; union { struct inner; int c; }; int y; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0inner\0a\0b\0outer\0x\0c\0y\0".to_vec();
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                t.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int
        push(&[s("int"), KIND_INT << 24, 4, 32]);
        // 2: struct inner {a @0, b @32}
        push(&[s("inner"), KIND_STRUCT << 24 | 2, 8]);
        push(&[s("a"), 1, 0, s("b"), 1, 32]);
        // 3: anonymous union { struct inner (anon member); int c; }
        push(&[0, KIND_UNION << 24 | 2, 8]);
        push(&[0, 2, 0, s("c"), 1, 0]);
        // 4: typedef-free struct outer {x @0, anon union @32, y @96}
        push(&[s("outer"), KIND_STRUCT << 24 | 3, 16]);
        push(&[s("x"), 1, 0, 0, 3, 32, s("y"), 1, 96]);
        let mut out = Vec::new();
        out.extend_from_slice(&0xeb9fu16.to_le_bytes());
        out.push(1);
        out.push(0);
        for w in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&t);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn finds_direct_and_nested_members() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.member_offset("outer", "x").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 4);
        assert_eq!(btf.member_offset("outer", "b").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "c").unwrap(), 4);
        assert_eq!(btf.member_offset("outer", "y").unwrap(), 12);
        assert!(matches!(
            btf.member_offset("outer", "nope"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member_offset("nope", "x"),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(Btf::parse(&[0, 0, 0]), Err(BtfError::BadMagic(0))));
        let mut b = blob();
        b.truncate(30);
        assert!(Btf::parse(&b).is_err());
    }

    /// The running kernel's own BTF gives the layout the probes were written against.
    #[test]
    fn running_kernel_sock_offsets() {
        let Ok(data) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            eprintln!("SKIPPED: no /sys/kernel/btf/vmlinux");
            return;
        };
        let off = SockOffsets::from_btf(&Btf::parse(&data).unwrap()).unwrap();
        assert_eq!(
            (off.daddr, off.rcv_saddr, off.dport, off.num, off.family),
            (0, 4, 12, 14, 16),
            "sock_common's head has been stable since Linux 4.x; saw {off:?}"
        );
        assert!(off.v6_daddr >= 24 && off.v6_rcv_saddr == off.v6_daddr + 16);
        // CONFIG_NET_NS: possible_net_t holds the pointer, 8-byte aligned in sock_common.
        assert!(off.net.is_some_and(|n| n % 8 == 0), "{off:?}");
    }
}
