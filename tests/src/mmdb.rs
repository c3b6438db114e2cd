//! A small MaxMind DB (`.mmdb`, format 2.0) writer, so that tests build their own GeoIP/ASN
//! databases instead of shipping or downloading one. It writes an IPv6 tree with 32-bit
//! records (IPv4 networks under ::/96, where readers look for them) and a data section of
//! maps, strings and unsigned integers: enough for country and ASN records.
//! Format: <https://maxmind.github.io/MaxMind-DB/>.

use std::net::IpAddr;

/// A value in the data section.
#[derive(Clone, Debug)]
pub enum Value {
    Str(String),
    U16(u16),
    U32(u32),
    U64(u64),
    Map(Vec<(String, Value)>),
    Array(Vec<Value>),
}

fn ctrl(out: &mut Vec<u8>, ty: u8, size: usize) {
    // Types 1-7 go in the control byte; 8 and up are "extended" (type 0, then type - 7).
    let (first, ext) = if ty <= 7 {
        (ty << 5, None)
    } else {
        (0, Some(ty - 7))
    };
    assert!(size < 29 + 256, "sizes this small are all the tests need");
    if size < 29 {
        out.push(first | size as u8);
        out.extend(ext);
    } else {
        out.push(first | 29);
        out.extend(ext);
        out.push((size - 29) as u8);
    }
}

/// Unsigned integers are stored big-endian without leading zero bytes.
fn uint(out: &mut Vec<u8>, ty: u8, bytes: &[u8]) {
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    ctrl(out, ty, bytes.len() - skip);
    out.extend_from_slice(&bytes[skip..]);
}

fn encode(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Str(s) => {
            ctrl(out, 2, s.len());
            out.extend_from_slice(s.as_bytes());
        }
        Value::U16(n) => uint(out, 5, &n.to_be_bytes()),
        Value::U32(n) => uint(out, 6, &n.to_be_bytes()),
        Value::U64(n) => uint(out, 9, &n.to_be_bytes()),
        Value::Map(m) => {
            ctrl(out, 7, m.len());
            for (k, v) in m {
                encode(&Value::Str(k.clone()), out);
                encode(v, out);
            }
        }
        Value::Array(a) => {
            ctrl(out, 11, a.len());
            for v in a {
                encode(v, out);
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Rec {
    Empty,
    Node(u32),
    Data(u32),
}

/// Builds a database: `insert` networks with their records, then `build`.
pub struct Writer {
    nodes: Vec<[Rec; 2]>,
    data: Vec<u8>,
    database_type: String,
}

impl Writer {
    pub fn new(database_type: &str) -> Self {
        Self {
            nodes: vec![[Rec::Empty, Rec::Empty]],
            data: Vec::new(),
            database_type: database_type.into(),
        }
    }

    /// `net` is `ADDR/PREFIX`; networks must not nest (enough for tests).
    pub fn insert(&mut self, net: &str, value: Value) {
        let (addr, prefix) = net.split_once('/').unwrap_or((net, ""));
        let addr: IpAddr = addr.parse().expect("an address");
        let (bits, len): (u128, u32) = match addr {
            IpAddr::V4(a) => (
                u128::from(u32::from(a)),
                96 + prefix.parse::<u32>().unwrap_or(32),
            ),
            IpAddr::V6(a) => (u128::from(a), prefix.parse::<u32>().unwrap_or(128)),
        };
        let offset = self.data.len() as u32;
        encode(&value, &mut self.data);
        let mut node = 0usize;
        for i in 0..len {
            let bit = ((bits >> (127 - i)) & 1) as usize;
            if i == len - 1 {
                self.nodes[node][bit] = Rec::Data(offset);
                break;
            }
            node = match self.nodes[node][bit] {
                Rec::Node(n) => n as usize,
                Rec::Empty => {
                    self.nodes.push([Rec::Empty, Rec::Empty]);
                    let n = self.nodes.len() - 1;
                    self.nodes[node][bit] = Rec::Node(n as u32);
                    n
                }
                Rec::Data(_) => panic!("{net} nests inside another network"),
            };
        }
    }

    pub fn build(&self) -> Vec<u8> {
        let count = self.nodes.len() as u32;
        let mut out = Vec::new();
        for n in &self.nodes {
            for r in n {
                let v = match *r {
                    Rec::Empty => count,
                    Rec::Node(i) => i,
                    // Data pointers count from the end of the tree, past a 16-byte separator.
                    Rec::Data(off) => count + 16 + off,
                };
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
        out.extend_from_slice(&[0; 16]);
        out.extend_from_slice(&self.data);
        out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
        let meta = Value::Map(vec![
            ("node_count".into(), Value::U32(count)),
            ("record_size".into(), Value::U16(32)),
            ("ip_version".into(), Value::U16(6)),
            (
                "database_type".into(),
                Value::Str(self.database_type.clone()),
            ),
            ("binary_format_major_version".into(), Value::U16(2)),
            ("binary_format_minor_version".into(), Value::U16(0)),
            ("build_epoch".into(), Value::U64(1_700_000_000)),
            (
                "languages".into(),
                Value::Array(vec![Value::Str("en".into())]),
            ),
            (
                "description".into(),
                Value::Map(vec![("en".into(), Value::Str("netmon test".into()))]),
            ),
        ]);
        encode(&meta, &mut out);
        out
    }
}

/// A GeoLite2-Country-style record.
pub fn country(iso: &str) -> Value {
    Value::Map(vec![(
        "country".into(),
        Value::Map(vec![("iso_code".into(), Value::Str(iso.into()))]),
    )])
}

/// A GeoLite2-ASN-style record.
pub fn asn(number: u32, org: &str) -> Value {
    Value::Map(vec![
        ("autonomous_system_number".into(), Value::U32(number)),
        (
            "autonomous_system_organization".into(),
            Value::Str(org.into()),
        ),
    ])
}
