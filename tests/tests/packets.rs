//! The kernel programs' packet logic through BPF_PROG_TEST_RUN: hand-built packets with
//! VLAN tags, IPv4 options, IPv6 extension headers, fragments, and malformed and truncated
//! packets run through the real XDP and TC programs in the kernel. Every one must pass
//! (never dropped), be counted on the interface, and land in the right flow or counter.

use std::os::fd::AsFd as _;

use aya::{
    Ebpf, EbpfLoader,
    maps::{PerCpuArray, PerCpuValues},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use netmon_common::{
    CpuState, DIR_EGRESS, DIR_INGRESS, FLOW_FLAG_FORWARDED, FLOW_FLAG_NO_PORTS, FlowKey, FlowKey4,
    FlowStats, counter, v4_mapped,
};
use netmon_tests::{PinDir, packet::*, require_root};

const XDP_PASS: u32 = 2;
/// The device a test run's frame comes in on or goes out of: the loopback device of the
/// caller's namespace (`bpf_prog_test_run_xdp`'s rxq, `bpf_prog_test_run_skb`'s skb->dev),
/// whose index is 1 in every namespace.
const TEST_RUN_IFINDEX: u32 = 1;
/// TC_ACT_UNSPEC (-1): the monitor never decides a packet's fate.
const TC_ACT_UNSPEC: u32 = u32::MAX;

/// bpf_prog_test_run_skb() (net/bpf/test_run.c) refuses an skb whose ethertype is IPv4 or
/// IPv6 but which is shorter than the fixed IP header (it pulls iphdr/ipv6hdr to fill in a
/// fake socket), so such packets can only be run through XDP here.
fn skb_test_run_refuses(pkt: &[u8]) -> bool {
    let l3 = pkt.len().saturating_sub(14);
    match u16::from_be_bytes([pkt[12], pkt[13]]) {
        ETH_P_IP => l3 < 20,
        ETH_P_IPV6 => l3 < 40,
        _ => false,
    }
}

/// A loader for the object with its maps pinned under `pins` and the preallocated (LRU) ones
/// sized for a test: `flows` flow entries, 1,024 socket-owner entries.
fn small_maps(pins: &PinDir, flows: u32) -> EbpfLoader<'_> {
    let mut loader = EbpfLoader::new();
    loader
        .default_map_pin_directory(&pins.0)
        .map_max_entries("NETMON_FLOWS4", flows)
        .map_max_entries("NETMON_FLOWS6", flows)
        .map_max_entries("NETMON_SOCK_PROC", 1024)
        .map_max_entries("NETMON_PORT_OWNER", 1024)
        .map_max_entries("NETMON_SK_OWNER", 1024);
    netmon::act::droplist::size_ban_counters(&mut loader).unwrap();
    loader
}

struct Progs {
    ebpf: Ebpf,
    _pins: PinDir,
}

impl Progs {
    /// XDP and the egress program, with the pull continuation's tail-call slot left empty:
    /// BPF_PROG_TEST_RUN only builds linear skbs, which never take that path, and verifying
    /// a second TC program in every test doubles the suite's time under the VM's emulation.
    fn new(flows: u32) -> Self {
        Self::load(flows, false)
    }

    /// As `new`, and `netmon_tc_pulled` loaded into its slot the way the daemon does it.
    fn with_tail(flows: u32) -> Self {
        Self::load(flows, true)
    }

    fn load(flows: u32, tail: bool) -> Self {
        require_root();
        let pins = PinDir::new("packets");
        let mut ebpf = small_maps(&pins, flows)
            .load(netmon::load::EBPF_OBJECT)
            .expect("load the eBPF object");
        let x: &mut Xdp = ebpf.program_mut("netmon_xdp").unwrap().try_into().unwrap();
        x.load().expect("verifier accepts netmon_xdp");
        for (ingress, name) in [(false, "netmon_tc_egress"), (true, "netmon_tc_ingress")] {
            if tail {
                netmon::load::load_tc(&mut ebpf, netmon::load::FlowTable::Lru, ingress)
                    .expect("verifier accepts the TC programs");
            } else {
                let t: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
                t.load()
                    .unwrap_or_else(|e| panic!("verifier rejects {name}: {e}"));
            }
        }
        Self { ebpf, _pins: pins }
    }

    fn run(&self, direction: u8, pkt: &[u8]) -> u32 {
        self.run_prog(
            if direction == DIR_INGRESS {
                "netmon_xdp"
            } else {
                "netmon_tc_egress"
            },
            pkt,
        )
    }

    /// `pkt` through the loaded program `name` (XDP or TC).
    fn run_prog(&self, name: &str, pkt: &[u8]) -> u32 {
        self.run_prog_ctx(name, pkt, None)
    }

    /// `run_prog` with a context for the program's run (a TC program's `__sk_buff`).
    fn run_prog_ctx(&self, name: &str, pkt: &[u8], ctx: Option<&[u8]>) -> u32 {
        let opts = TestRunOptions {
            data_in: Some(pkt),
            ctx_in: ctx,
            repeat: 1,
            ..Default::default()
        };
        let r = match self.ebpf.program(name).unwrap() {
            aya::programs::Program::Xdp(x) => x.test_run(opts),
            aya::programs::Program::SchedClassifier(t) => t.test_run(opts),
            _ => panic!("{name} is not a packet program"),
        };
        r.unwrap_or_else(|e| panic!("{name}: test_run of {} bytes: {e}", pkt.len()))
            .return_value
    }

    /// Empties what the packet programs write (flows, interface totals, counters), so that
    /// the next packet is checked as on freshly created maps.
    fn reset(&mut self) {
        self.clear_flows::<FlowKey4>("NETMON_FLOWS4");
        self.clear_flows::<FlowKey>("NETMON_FLOWS6");
        let ncpus = aya::util::nr_cpus().unwrap();
        let mut cpu: PerCpuArray<_, CpuState> =
            PerCpuArray::try_from(self.ebpf.map_mut("NETMON_CPU").unwrap()).unwrap();
        cpu.set(
            0,
            PerCpuValues::try_from(vec![CpuState::ZERO; ncpus]).unwrap(),
            0,
        )
        .unwrap();
        let mut counters: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map_mut("NETMON_COUNTERS").unwrap()).unwrap();
        for i in 0..counter::COUNT {
            counters
                .set(i, PerCpuValues::try_from(vec![0u64; ncpus]).unwrap(), 0)
                .unwrap();
        }
    }

    fn clear_flows<K: aya::Pod>(&mut self, name: &str) {
        let mut flows: aya::maps::HashMap<_, K, FlowStats> =
            aya::maps::HashMap::try_from(self.ebpf.map_mut(name).unwrap()).unwrap();
        let keys: Vec<K> = flows.keys().map(|k| k.unwrap()).collect();
        for k in &keys {
            flows.remove(k).unwrap();
        }
    }

    /// Both flow maps, IPv4 keys widened as the daemon widens them. Every flow must be in
    /// its own family's map.
    fn flows(&self) -> Vec<(FlowKey, FlowStats)> {
        let v4: aya::maps::HashMap<_, FlowKey4, FlowStats> =
            aya::maps::HashMap::try_from(self.ebpf.map("NETMON_FLOWS4").unwrap()).unwrap();
        let v6: aya::maps::HashMap<_, FlowKey, FlowStats> =
            aya::maps::HashMap::try_from(self.ebpf.map("NETMON_FLOWS6").unwrap()).unwrap();
        let mut out: Vec<_> = v4
            .iter()
            .map(|r| {
                let (k, v) = r.unwrap();
                assert_eq!(k.family, 4, "{k:?} in NETMON_FLOWS4");
                (FlowKey::from(k), v)
            })
            .collect();
        out.extend(v6.iter().map(|r| {
            let (k, v) = r.unwrap();
            assert_eq!(k.family, 6, "{k:?} in NETMON_FLOWS6");
            (k, v)
        }));
        out
    }

    /// The event counters as the daemon reads them (the frames each hook saw are in the
    /// CPUs' state).
    fn counters(&self) -> Vec<u64> {
        let m: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map("NETMON_COUNTERS").unwrap()).unwrap();
        let mut out = [0u64; counter::COUNT as usize];
        for (i, c) in out.iter_mut().enumerate() {
            *c = m.get(&(i as u32), 0).unwrap().iter().sum();
        }
        let cpu: PerCpuArray<_, CpuState> =
            PerCpuArray::try_from(self.ebpf.map("NETMON_CPU").unwrap()).unwrap();
        netmon::drain::add_hook_packets(&mut out, cpu.get(&0, 0).unwrap().iter());
        out.to_vec()
    }
}

/// What one packet must produce.
#[derive(Clone, Copy, Debug)]
struct Expect {
    /// (proto, family, flags, src port, dst port) in wire orientation, or None: no flow.
    flow: Option<(u8, u8, u8, u16, u16)>,
    /// The counter it must bump (besides the per-program packet counter), if any.
    counter: Option<u32>,
    tcp_flags: u8,
    /// Wire source/destination addresses (16-byte form).
    src: [u8; 16],
    dst: [u8; 16],
}

const V4S: [u8; 4] = [198, 18, 0, 2];
const V4D: [u8; 4] = [198, 18, 0, 1];

fn v4(flow: Option<(u8, u8, u16, u16)>, counter: Option<u32>) -> Expect {
    Expect {
        flow: flow.map(|(p, f, s, d)| (p, 4, f, s, d)),
        counter,
        tcp_flags: 0,
        src: v4_mapped(V4S),
        dst: v4_mapped(V4D),
    }
}

fn v6(flow: Option<(u8, u8, u16, u16)>, counter: Option<u32>) -> Expect {
    Expect {
        flow: flow.map(|(p, f, s, d)| (p, 6, f, s, d)),
        counter,
        tcp_flags: 0,
        src: V6_SRC,
        dst: V6_DST,
    }
}

/// The packet programs `check` runs every frame through, with the direction each records
/// it in: XDP and the TC ingress program (netmon's ingress hook where XDP would be generic)
/// for ingress, TC for egress.
const CHECKED: [(&str, u8); 3] = [
    ("netmon_xdp", DIR_INGRESS),
    ("netmon_tc_ingress", DIR_INGRESS),
    ("netmon_tc_egress", DIR_EGRESS),
];

/// Runs `pkt` through XDP and TC ingress (ingress) and TC (egress), each on emptied maps,
/// and checks all of it. The programs are loaded once per test, not once per packet: under
/// the VM step's emulation each load (the verifier's walk of the programs) costs seconds.
fn check(p: &mut Progs, name: &str, pkt: &[u8], e: Expect) {
    for (prog, direction) in CHECKED {
        let xdp = prog == "netmon_xdp";
        if !xdp && skb_test_run_refuses(pkt) {
            eprintln!("{name}: {prog} not run: the kernel's skb test run refuses it");
            continue;
        }
        p.reset();
        let ret = p.run_prog(prog, pkt);
        let want = if xdp { XDP_PASS } else { TC_ACT_UNSPEC };
        assert_eq!(ret, want, "{name} {prog}: packet must pass");
        let name = &format!("{name} ({prog})");

        let counters = p.counters();
        let hook = if direction == DIR_INGRESS {
            counter::XDP_PACKETS
        } else {
            counter::TC_PACKETS
        };
        for (i, &c) in counters.iter().enumerate() {
            let i = i as u32;
            let expected = u64::from(i == hook || Some(i) == e.counter);
            assert_eq!(
                c,
                expected,
                "{name} dir {direction}: counter {:?} is {c}, expected {expected}",
                counter::NAMES[i as usize]
            );
        }

        let flows = p.flows();
        match e.flow {
            None => assert!(flows.is_empty(), "{name}: unexpected flows {flows:?}"),
            Some((proto, family, flags, sport, dport)) => {
                assert_eq!(flows.len(), 1, "{name}: {flows:?}");
                let (k, s) = flows[0];
                let (local, remote, lport, rport) = if direction == DIR_INGRESS {
                    (e.dst, e.src, dport, sport)
                } else {
                    (e.src, e.dst, sport, dport)
                };
                // ICMP keeps type/code as the remote "port" in both directions.
                let (lport, rport) = if proto == 1 || proto == 58 {
                    (0, sport.max(dport))
                } else {
                    (lport, rport)
                };
                let want = FlowKey {
                    ifindex: TEST_RUN_IFINDEX,
                    direction,
                    proto,
                    family,
                    flags,
                    local_port: lport,
                    remote_port: rport,
                    local_addr: local,
                    remote_addr: remote,
                };
                assert_eq!(k, want, "{name} dir {direction}");
                assert_eq!((s.bytes, s.packets), (pkt.len() as u64, 1), "{name}");
                assert_eq!(s.tcp_flags, e.tcp_flags, "{name}");
            }
        }
    }
}

const PRIV: &str = "privileged: loads eBPF programs; run by `cargo xtask test`";

#[test]
#[ignore = "privileged: loads eBPF programs; run by `cargo xtask test`"]
fn well_formed_packets_land_in_the_right_flow() {
    let mut p = Progs::new(1024);
    let _ = PRIV;
    let v4h = || V4::default();
    check(
        &mut p,
        "ipv4 tcp syn",
        &eth(&[], ETH_P_IP, &ipv4(v4h(), &tcp(40000, 443, 0x02, b""))),
        Expect {
            tcp_flags: 0x02,
            ..v4(Some((6, 0, 40000, 443)), None)
        },
    );
    // The frames the programs' one-pass parser takes (untagged, IPv4 without options or IPv6
    // without extension headers, TCP or UDP): the other cases go through the general one.
    check(
        &mut p,
        "ipv4 udp, don't fragment",
        &udp4_frame_with(
            V4 {
                frag: 0x4000,
                ..v4h()
            },
            &udp(33000, 53, b"query"),
        ),
        v4(Some((17, 0, 33000, 53)), None),
    );
    check(
        &mut p,
        "ipv4 udp without payload (42 bytes)",
        &udp4_frame_with(v4h(), &udp(1, 65535, b"")),
        v4(Some((17, 0, 1, 65535)), None),
    );
    check(
        &mut p,
        "ipv6 udp",
        &eth(&[], ETH_P_IPV6, &ipv6(17, &udp(546, 547, b"solicit"))),
        v6(Some((17, 0, 546, 547)), None),
    );
    check(
        &mut p,
        "ipv6 tcp syn-ack",
        &eth(&[], ETH_P_IPV6, &ipv6(6, &tcp(443, 50000, 0x12, b""))),
        Expect {
            tcp_flags: 0x12,
            ..v6(Some((6, 0, 443, 50000)), None)
        },
    );
    check(
        &mut p,
        "802.1Q ipv4 udp",
        &eth(
            &[ETH_P_8021Q],
            ETH_P_IP,
            &ipv4(V4 { proto: 17, ..v4h() }, &udp(5353, 53, b"query")),
        ),
        v4(Some((17, 0, 5353, 53)), None),
    );
    check(
        &mut p,
        "QinQ ipv6 tcp",
        &eth(
            &[ETH_P_8021AD, ETH_P_8021Q],
            ETH_P_IPV6,
            &ipv6(6, &tcp(1234, 22, 0x18, b"data")),
        ),
        Expect {
            tcp_flags: 0x18,
            ..v6(Some((6, 0, 1234, 22)), None)
        },
    );
    check(
        &mut p,
        "ipv4 with 40 bytes of options, udp",
        &udp4_frame_with(
            V4 {
                options: 40,
                ..v4h()
            },
            &udp(1000, 2000, b"x"),
        ),
        v4(Some((17, 0, 1000, 2000)), None),
    );
    check(
        &mut p,
        "ipv4 first fragment keeps its ports",
        &udp4_frame_with(
            V4 {
                frag: 0x2000,
                ..v4h()
            },
            &udp(7, 9, &[0; 64]),
        ),
        v4(Some((17, 0, 7, 9)), None),
    );
    check(
        &mut p,
        "ipv6 hop-by-hop + routing + destination options, udp",
        &eth(
            &[],
            ETH_P_IPV6,
            &ipv6(
                0,
                &[ext(43, 0), ext(60, 1), ext(17, 0), udp(4000, 4001, b"hi")].concat(),
            ),
        ),
        v6(Some((17, 0, 4000, 4001)), None),
    );
    check(
        &mut p,
        "ipv6 first fragment, tcp",
        &eth(
            &[],
            ETH_P_IPV6,
            &ipv6(44, &[frag6(6, 0, true), tcp(80, 81, 0x10, b"")].concat()),
        ),
        Expect {
            tcp_flags: 0x10,
            ..v6(Some((6, 0, 80, 81)), None)
        },
    );
    check(
        &mut p,
        "ipv6 authentication header, tcp",
        &eth(
            &[],
            ETH_P_IPV6,
            &ipv6(51, &[ah(6, 3), tcp(500, 501, 0x01, b"")].concat()),
        ),
        Expect {
            tcp_flags: 0x01,
            ..v6(Some((6, 0, 500, 501)), None)
        },
    );
    // Every kind of extension header in one chain, each sized by its own rule (8-octet
    // units, 4-octet units, fixed 8), and a fragment header whose reserved byte is set: it
    // must be ignored (RFC 8200 section 4.5), not read as a length.
    let mut frag = frag6(17, 0, true);
    frag[1] = 0xff;
    check(
        &mut p,
        "ipv6 hop-by-hop + authentication + first fragment, udp",
        &eth(
            &[],
            ETH_P_IPV6,
            &ipv6(
                0,
                &[ext(51, 2), ah(44, 5), frag, udp(6000, 6001, b"x")].concat(),
            ),
        ),
        v6(Some((17, 0, 6000, 6001)), None),
    );
    check(
        &mut p,
        "icmp echo request",
        &eth(&[], ETH_P_IP, &ipv4(V4 { proto: 1, ..v4h() }, &icmp(8, 0))),
        v4(Some((1, 0, 0x0800, 0)), None),
    );
    check(
        &mut p,
        "icmpv6 echo request",
        &eth(&[], ETH_P_IPV6, &ipv6(58, &icmp(128, 0))),
        v6(Some((58, 0, 0x8000, 0)), None),
    );
}

#[test]
#[ignore = "privileged: loads eBPF programs; run by `cargo xtask test`"]
fn fragments_and_unknown_protocols_are_recorded_without_ports() {
    let mut p = Progs::new(1024);
    let np = FLOW_FLAG_NO_PORTS;
    check(
        &mut p,
        "ipv4 non-first fragment",
        &eth(
            &[],
            ETH_P_IP,
            &ipv4(
                V4 {
                    proto: 17,
                    frag: 185,
                    ..V4::default()
                },
                &[0xab; 100],
            ),
        ),
        v4(Some((17, np, 0, 0)), Some(counter::FRAGMENT)),
    );
    check(
        &mut p,
        "ipv4 non-first fragment, more to come, offset in its high bits only",
        &eth(
            &[],
            ETH_P_IP,
            &ipv4(
                V4 {
                    proto: 6,
                    frag: 0x2000 | 0x1000,
                    ..V4::default()
                },
                &tcp(1, 2, 0x02, b""),
            ),
        ),
        v4(Some((6, np, 0, 0)), Some(counter::FRAGMENT)),
    );
    check(
        &mut p,
        "ipv6 non-first fragment",
        &eth(
            &[],
            ETH_P_IPV6,
            &ipv6(44, &[frag6(17, 181, false), vec![0xcd; 64]].concat()),
        ),
        v6(Some((17, np, 0, 0)), Some(counter::FRAGMENT)),
    );
    check(
        &mut p,
        "gre",
        &eth(
            &[],
            ETH_P_IP,
            &ipv4(
                V4 {
                    proto: 47,
                    ..V4::default()
                },
                &[0; 8],
            ),
        ),
        v4(Some((47, np, 0, 0)), Some(counter::OTHER_L4)),
    );
    let nine: Vec<u8> = (0..9).flat_map(|_| ext(60, 0)).collect();
    check(
        &mut p,
        "ipv6 with nine extension headers",
        &eth(&[], ETH_P_IPV6, &ipv6(60, &[nine, udp(1, 2, b"")].concat())),
        v6(Some((60, np, 0, 0)), Some(counter::IPV6_EXT_LIMIT)),
    );
}

#[test]
#[ignore = "privileged: loads eBPF programs; run by `cargo xtask test`"]
fn malformed_and_truncated_packets_pass_and_are_counted() {
    let mut p = Progs::new(1024);
    let np = FLOW_FLAG_NO_PORTS;
    check(
        &mut p,
        "arp",
        &eth(&[], ETH_P_ARP, &[0; 28]),
        v4(None, Some(counter::NON_IP)),
    );
    check(
        &mut p,
        "three vlan tags",
        &eth(
            &[ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q],
            ETH_P_IP,
            &ipv4(V4::default(), &tcp(1, 2, 0, b"")),
        ),
        v4(None, Some(counter::VLAN_LIMIT)),
    );
    check(
        &mut p,
        "ethernet header only",
        &eth(&[], ETH_P_IP, &[]),
        v4(None, Some(counter::TRUNCATED_L3)),
    );
    let full = ipv4(V4::default(), &tcp(1, 2, 0, b""));
    check(
        &mut p,
        "ipv4 header cut at 10 bytes",
        &eth(&[], ETH_P_IP, &full[..10]),
        v4(None, Some(counter::TRUNCATED_L3)),
    );
    check(
        &mut p,
        "ipv4 with IHL 4",
        &eth(
            &[],
            ETH_P_IP,
            &ipv4(
                V4 {
                    ihl: Some(4),
                    ..V4::default()
                },
                &tcp(1, 2, 0, b""),
            ),
        ),
        v4(None, Some(counter::BAD_L3_HEADER)),
    );
    check(
        &mut p,
        "ipv6 version in an ipv4 ethertype",
        &eth(
            &[],
            ETH_P_IP,
            &ipv4(
                V4 {
                    version: 6,
                    ..V4::default()
                },
                &tcp(1, 2, 0, b""),
            ),
        ),
        v4(None, Some(counter::BAD_L3_HEADER)),
    );
    check(
        &mut p,
        "ipv4 options running past the end",
        &eth(
            &[],
            ETH_P_IP,
            &ipv4(
                V4 {
                    ihl: Some(15),
                    ..V4::default()
                },
                &[0; 8],
            ),
        ),
        v4(Some((6, np, 0, 0)), Some(counter::TRUNCATED_L4)),
    );
    check(
        &mut p,
        "tcp header cut at 10 bytes",
        &eth(
            &[],
            ETH_P_IP,
            &ipv4(V4::default(), &tcp(1, 2, 0, b"")[..10]),
        ),
        v4(Some((6, np, 0, 0)), Some(counter::TRUNCATED_L4)),
    );
    check(
        &mut p,
        "ipv6 header cut at 30 bytes",
        &eth(&[], ETH_P_IPV6, &ipv6(6, &[])[..30]),
        v4(None, Some(counter::TRUNCATED_L3)),
    );
    check(
        &mut p,
        "ipv6 extension header cut short",
        &eth(&[], ETH_P_IPV6, &ipv6(0, &[1])),
        v6(Some((0, np, 0, 0)), Some(counter::TRUNCATED_L4)),
    );
}

/// A deterministic stream of random packets: none may be dropped or crash anything, and
/// every packet is accounted for exactly once, in a flow or in one no-flow counter.
#[test]
#[ignore = "privileged: loads eBPF programs; run by `cargo xtask test`"]
fn random_garbage_is_passed_and_conserved() {
    let p = Progs::new(65536);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let n = 3000u64;
    for i in 0..n {
        let len = 14 + (rnd() % 200) as usize;
        let mut pkt: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        let et = [ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q, ETH_P_8021AD, ETH_P_ARP][(rnd() % 5) as usize];
        pkt[12..14].copy_from_slice(&et.to_be_bytes());
        // Behind a VLAN tag, mostly IP, so the tag path leads somewhere deep.
        let (l3_type, l3) = if (et == ETH_P_8021Q || et == ETH_P_8021AD) && len >= 18 {
            let inner = [ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q][(rnd() % 3) as usize];
            pkt[16..18].copy_from_slice(&inner.to_be_bytes());
            (inner, 18)
        } else {
            (et, 14)
        };
        if len > l3 && rnd() % 4 != 0 {
            // Mostly plausible version nibbles and IHLs, so the deeper parsers run.
            pkt[l3] = if l3_type == ETH_P_IPV6 {
                0x60 | (pkt[l3] & 0x0f)
            } else {
                0x45 + pkt[l3] % 3
            };
        }
        let dir = if i % 2 == 0 || skb_test_run_refuses(&pkt) {
            DIR_INGRESS
        } else {
            DIR_EGRESS
        };
        let want = if dir == DIR_INGRESS {
            XDP_PASS
        } else {
            TC_ACT_UNSPEC
        };
        assert_eq!(p.run(dir, &pkt), want, "packet {i} {pkt:02x?}");
    }
    let c = p.counters();
    assert_eq!(
        c[counter::XDP_PACKETS as usize] + c[counter::TC_PACKETS as usize],
        n
    );
    assert_eq!(c[counter::FLOW_INSERT_FAILED as usize], 0);
    let in_flows: u64 = p.flows().iter().map(|(_, s)| s.packets).sum();
    let no_flow: u64 = [
        counter::TRUNCATED_L3,
        counter::NON_IP,
        counter::VLAN_LIMIT,
        counter::BAD_L3_HEADER,
    ]
    .iter()
    .map(|&i| c[i as usize])
    .sum();
    assert_eq!(
        in_flows + no_flow,
        n,
        "every packet is in a flow or a no-flow counter: {c:?}"
    );
    assert!(
        in_flows > n / 4 && no_flow > n / 10,
        "the corpus exercises both paths: {in_flows} in flows, {no_flow} not, {c:?}"
    );
}

#[test]
#[ignore = "privileged: loads eBPF programs; run by `cargo xtask test`"]
fn empty_baseline_program_passes() {
    require_root();
    let pins = PinDir::new("empty");
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&pins.0)
        .map_max_entries("NETMON_FLOWS4", 1024)
        .map_max_entries("NETMON_FLOWS6", 1024)
        .load(netmon::load::EBPF_OBJECT)
        .unwrap();
    let x: &mut Xdp = ebpf
        .program_mut("netmon_xdp_empty")
        .unwrap()
        .try_into()
        .unwrap();
    x.load().unwrap();
    let r = x
        .test_run(TestRunOptions {
            data_in: Some(&eth(&[], ETH_P_IP, &[0; 40])),
            repeat: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.return_value, XDP_PASS);
}

/// XDP_DROP: the verdict for a banned source.
const XDP_DROP: u32 = 1;

/// Programs loaded with small maps, and their drop-list maps as the daemon holds them.
fn drop_list_progs() -> (Progs, netmon::act::droplist::DropMaps) {
    let mut p = Progs::new(1024);
    let maps = netmon::act::droplist::DropMaps::from_ebpf(&mut p.ebpf).unwrap();
    (p, maps)
}

/// A manual ban on `net`, expiring at `expires_ms` (wall clock) when given.
fn manual_ban(net: &str, expires_ms: Option<u64>) -> netmon::act::state::BanEntry {
    netmon::act::state::BanEntry {
        net: net.parse().unwrap(),
        kind: netmon::act::state::Kind::Manual,
        reason: String::new(),
        uid: 0,
        added_ms: 0,
        expires_ms,
    }
}

/// A small UDP datagram from `src` to the default IPv4 destination.
fn udp4_from(src: [u8; 4]) -> Vec<u8> {
    udp4_frame(src, V4::default().dst, &udp(1, 2, b"x"))
}

/// A small UDP datagram from `src` over IPv6.
fn udp6_from(src: [u8; 16]) -> Vec<u8> {
    let mut pkt = eth(&[], ETH_P_IPV6, &ipv6(17, &udp(1, 2, b"x")));
    pkt[14 + 8..14 + 24].copy_from_slice(&src);
    pkt
}

/// The drop decision itself, in the kernel: exact and prefix bans, allow entries, expired
/// entries, the generation in force, IPv4 and IPv6, XDP and TC ingress (source) and TC
/// egress (destination).
#[test]
#[ignore = "privileged: loads eBPF programs; run by `cargo xtask test`"]
fn drop_decisions_follow_the_list_in_force() {
    use netmon::act::droplist::DropMaps;
    const TC_ACT_SHOT: u32 = 2;
    let (p, mut maps) = drop_list_progs();
    let ban = manual_ban;
    let from4 = udp4_from;
    let to4 = |dst: [u8; 4]| udp4_frame(V4::default().src, dst, &udp(1, 2, b"x"));
    let flags = |maps: &mut DropMaps| maps.set_flags(u64::MAX).unwrap();
    // Every ingress frame through XDP and through the TC ingress program, which must decide
    // alike; XDP's verdict.
    let ingress = |pkt: &[u8]| {
        let x = p.run(DIR_INGRESS, pkt);
        let t = p.run_prog("netmon_tc_ingress", pkt);
        let same = if x == XDP_DROP {
            TC_ACT_SHOT
        } else {
            TC_ACT_UNSPEC
        };
        assert_eq!(t, same, "TC ingress decides as XDP does");
        x
    };

    // Nothing in force: everything passes.
    assert_eq!(ingress(&from4([198, 18, 0, 2])), XDP_PASS);
    maps.write_ban(1, 2, &ban("198.18.0.2", None)).unwrap();
    maps.write_ban(1, 2, &ban("203.0.113.0/24", None)).unwrap();
    maps.write_ban(1, 2, &ban("2001:db8::/32", None)).unwrap();
    maps.write_ban(1, 2, &ban("fd00:6e6d::2", None)).unwrap();
    maps.write_ban(1, 2, &ban("192.0.2.7", Some(1))).unwrap();
    flags(&mut maps);
    maps.set_generation(1).unwrap();

    assert_eq!(ingress(&from4([198, 18, 0, 2])), XDP_DROP, "exact");
    assert_eq!(ingress(&from4([198, 18, 0, 3])), XDP_PASS);
    assert_eq!(ingress(&from4([203, 0, 113, 50])), XDP_DROP, "prefix");
    assert_eq!(ingress(&from4([203, 0, 114, 50])), XDP_PASS);
    assert_eq!(ingress(&from4([192, 0, 2, 7])), XDP_PASS, "expired");
    assert_eq!(
        p.run(DIR_EGRESS, &to4([198, 18, 0, 2])),
        TC_ACT_SHOT,
        "egress dst"
    );
    assert_eq!(p.run(DIR_EGRESS, &to4([198, 18, 0, 9])), TC_ACT_UNSPEC);
    let v6 = |next_src: [u8; 16]| {
        let mut pkt = eth(&[], ETH_P_IPV6, &ipv6(17, &udp(1, 2, b"x")));
        pkt[14 + 8..14 + 24].copy_from_slice(&next_src);
        pkt
    };
    let mut db8 = [0u8; 16];
    db8[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    db8[15] = 9;
    assert_eq!(ingress(&v6(db8)), XDP_DROP, "v6 prefix");
    assert_eq!(ingress(&v6(V6_SRC)), XDP_DROP, "v6 exact");
    assert_eq!(ingress(&v6(V6_DST)), XDP_PASS);

    // Allow wins over a covering ban.
    maps.write_allow(&"203.0.113.50".parse().unwrap()).unwrap();
    assert_eq!(ingress(&from4([203, 0, 113, 50])), XDP_PASS, "allowed");
    assert_eq!(ingress(&from4([203, 0, 113, 51])), XDP_DROP);

    // Entries of the other generation are ignored until it is put in force.
    maps.write_ban(2, 1, &ban("198.51.100.1", None)).unwrap();
    assert_eq!(ingress(&from4([198, 51, 100, 1])), XDP_PASS);
    maps.set_generation(2).unwrap();
    assert_eq!(ingress(&from4([198, 51, 100, 1])), XDP_DROP);
    assert_eq!(
        ingress(&from4([198, 18, 0, 2])),
        XDP_PASS,
        "gen 1 out of force"
    );

    // Per-entry hit counters: the exact v4 ban dropped one ingress packet through each
    // ingress program and one egress packet.
    let hits = maps
        .hits(1, &"198.18.0.2".parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(hits.packets, 3);
    assert_eq!(hits.bytes, 3 * from4([198, 18, 0, 2]).len() as u64);
    assert!(hits.last_hit_ns > 0);
    let drops: u64 = maps.drops().unwrap().iter().map(|(_, s)| s.packets).sum();
    assert_eq!(
        drops,
        2 * 6 + 1,
        "every drop counted per interface and kind: six ingress frames through two programs, \
         one egress"
    );
}

/// Exact IPv4 bans in the programs' own array (NETMON_BANX4) and past it: seven bans whose
/// addresses share one 4-way bucket, one of them expired, so two of the six live ones are in
/// the wide array (NETMON_BANW4). Every live one drops, its hit counters are exactly the
/// packets it dropped, on every CPU in turn (the slot's counters, one part per CPU, or the
/// wide slot's shared ones), an expired one passes, a removed one passes at once while its
/// bucket-mates still drop, and an import into the other generation carries every ban's
/// counters over. The same for IPv6 bans in NETMON_BANX6's 2-way buckets.
#[test]
#[ignore = "privileged: loads eBPF programs; run by `cargo xtask test`"]
fn exact_bans_drop_and_count_in_the_arrays_and_past_a_full_bucket() {
    use netmon::act::{droplist::DropMaps, state::State};
    let (p, mut maps) = drop_list_progs();
    // Seven addresses in 198.18.0.0/16 whose bucket is the same in both generations' parts.
    let bucket = |a: [u8; 4]| netmon_common::banx4_bucket(1, a);
    let target = bucket([198, 18, 0, 2]);
    let same: Vec<[u8; 4]> = (0u32..65_536)
        .map(|i| [198, 18, (i >> 8) as u8, i as u8])
        .filter(|&a| bucket(a) == target)
        .take(7)
        .collect();
    assert_eq!(same.len(), 7);
    let net = |a: [u8; 4]| std::net::Ipv4Addr::from(a).to_string();
    let ban = |a: [u8; 4], expires_ms: Option<u64>| manual_ban(&net(a), expires_ms);
    let mut state = State {
        generation: 1,
        bans: same.iter().map(|&a| ban(a, None)).collect(),
        ..State::default()
    };
    // The last one expired already (TTLs are checked in the kernel).
    state.bans[6].expires_ms = Some(1);
    maps.sync(&state).unwrap();
    let from4 = udp4_from;
    let len = from4(same[0]).len() as u64;
    // Each packet on the next CPU: every CPU's part of the counters is written and summed.
    let ncpus = aya::util::nr_cpus().unwrap();
    let mut sent = 0;
    for (i, &a) in same.iter().enumerate() {
        for _ in 0..=i {
            pin_to_cpu(sent % ncpus);
            sent += 1;
            let want = if i == 6 { XDP_PASS } else { XDP_DROP };
            assert_eq!(p.run(DIR_INGRESS, &from4(a)), want, "{}", net(a));
        }
    }
    let hits = |maps: &mut DropMaps, generation: u8, a: [u8; 4]| {
        let v = maps
            .hits(generation, &net(a).parse().unwrap())
            .unwrap()
            .unwrap_or_else(|| panic!("no entry for {}", net(a)));
        (v.packets, v.bytes)
    };
    for (i, &a) in same[..6].iter().enumerate() {
        let n = i as u64 + 1;
        assert_eq!(hits(&mut maps, 1, a), (n, n * len), "{}", net(a));
        let array = maps.exact_array(1, &net(a).parse().unwrap()).unwrap();
        let want = if i < 4 {
            "NETMON_BANX4"
        } else {
            "NETMON_BANW4"
        };
        assert_eq!(array, Some(want), "{}", net(a));
    }
    // The full bucket is marked (two bans are in the wide array, where a miss in it sends
    // the programs); another bucket is not.
    let overflowed = |maps: &mut DropMaps, generation: u8, a: [u8; 4]| {
        maps.exact_buckets_overflowed(generation, &net(a).parse().unwrap())
            .unwrap()[0]
    };
    assert!(overflowed(&mut maps, 1, same[0]));
    let elsewhere = (0u32..)
        .map(|i| [198, 18, 1, i as u8])
        .find(|&a| bucket(a) != target)
        .unwrap();
    assert!(!overflowed(&mut maps, 1, elsewhere));
    assert_eq!(p.run(DIR_INGRESS, &from4(elsewhere)), XDP_PASS);
    // A removed ban (the first, in the array) passes at once; its bucket-mates still drop.
    maps.remove_ban(1, &net(same[0]).parse().unwrap()).unwrap();
    assert_eq!(p.run(DIR_INGRESS, &from4(same[0])), XDP_PASS);
    for &a in &same[1..6] {
        assert_eq!(p.run(DIR_INGRESS, &from4(a)), XDP_DROP, "{}", net(a));
    }
    // An import into generation 2 carries each ban's counters, the array's and the map's.
    let old = State {
        bans: state.bans[1..6].to_vec(),
        ..state
    };
    let mut new = State {
        bans: old.bans.clone(),
        ..State::default()
    };
    maps.swap(&old, &mut new).unwrap();
    assert_eq!(new.generation, 2);
    for (i, &a) in same.iter().enumerate().take(6).skip(1) {
        // i + 1 drops before the removal, one after it, one now.
        let n = i as u64 + 3;
        assert_eq!(p.run(DIR_INGRESS, &from4(a)), XDP_DROP, "{}", net(a));
        assert_eq!(
            hits(&mut maps, 2, a),
            (n, n * len),
            "{} after the swap",
            net(a)
        );
    }
    assert_eq!(p.run(DIR_INGRESS, &from4(same[0])), XDP_PASS);
    // Five bans in the bucket in generation 2: full again. Generation 1, emptied, has its
    // overflow bits cleared with its slots.
    assert!(overflowed(&mut maps, 2, same[1]));
    assert!(!overflowed(&mut maps, 1, same[1]));

    // IPv6: three bans in one 2-way bucket of NETMON_BANX6 (one in the wide array).
    let bucket6 = |a: &[u8; 16]| netmon_common::banx6_bucket(2, a);
    let addr6 = |i: u32| {
        let mut a = [0xfd, 0, 0x6e, 0x6d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        a[12..].copy_from_slice(&i.to_be_bytes());
        a
    };
    let target6 = bucket6(&addr6(1));
    let same6: Vec<[u8; 16]> = (1u32..1_000_000)
        .map(addr6)
        .filter(|a| bucket6(a) == target6)
        .take(3)
        .collect();
    assert_eq!(same6.len(), 3);
    let net6 = |a: &[u8; 16]| std::net::Ipv6Addr::from(*a).to_string();
    for a in &same6 {
        maps.write_ban(2, 1, &manual_ban(&net6(a), None)).unwrap();
    }
    maps.set_flags(u64::MAX).unwrap();
    let from6 = |src: &[u8; 16]| udp6_from(*src);
    let len6 = from6(&same6[0]).len() as u64;
    for (i, a) in same6.iter().enumerate() {
        for _ in 0..=i {
            pin_to_cpu(sent % ncpus);
            sent += 1;
            assert_eq!(p.run(DIR_INGRESS, &from6(a)), XDP_DROP, "{}", net6(a));
        }
        let n = i as u64 + 1;
        let v = maps.hits(2, &net6(a).parse().unwrap()).unwrap().unwrap();
        assert_eq!((v.packets, v.bytes), (n, n * len6), "{}", net6(a));
    }
    assert_eq!(
        maps.exact_array(2, &net6(&same6[2]).parse().unwrap())
            .unwrap(),
        Some("NETMON_BANW6")
    );
    assert!(
        maps.exact_buckets_overflowed(2, &net6(&same6[0]).parse().unwrap())
            .unwrap()[0]
    );
    maps.remove_ban(2, &net6(&same6[0]).parse().unwrap())
        .unwrap();
    assert_eq!(p.run(DIR_INGRESS, &from6(&same6[0])), XDP_PASS);
    assert_eq!(p.run(DIR_INGRESS, &from6(&same6[1])), XDP_DROP);
    assert_eq!(
        p.run(DIR_INGRESS, &from6(&addr6(0))),
        XDP_PASS,
        "not banned"
    );
}

/// Addresses whose buckets are the same in both exact IPv4 ban arrays: the first 4 of a
/// ban list take the NETMON_BANX4 bucket, the next 4 the NETMON_BANW4 one, and the rest are
/// in the hash map alone. Found without a search: `banx4_bucket` is the top bits of a product
/// by an odd constant, so the addresses of one bucket are the products of its values by the
/// constant's inverse.
fn addrs_in_both_buckets(n: usize) -> Vec<[u8; 4]> {
    const K: u32 = netmon_common::BANX4_HASH_MUL;
    let mut inv = K;
    for _ in 0..5 {
        inv = inv.wrapping_mul(2u32.wrapping_sub(K.wrapping_mul(inv)));
    }
    assert_eq!(K.wrapping_mul(inv), 1);
    let target = netmon_common::banx4_bucket(1, [198, 18, 0, 2]);
    let bits = netmon_common::BANX4_BUCKETS.trailing_zeros();
    let h = (target / netmon_common::BANX4_WAYS) << (32 - bits);
    let usable = |a: &[u8; 4]| (1..224).contains(&a[0]) && a[0] != 127;
    let mut found = (0..1u32 << (32 - bits))
        .map(|x| (h | x).wrapping_mul(inv).to_ne_bytes())
        .filter(|a| usable(a) && netmon_common::banx4_bucket(1, *a) == target);
    let first = found.next().unwrap();
    let wide = netmon_common::banw4_bucket(1, first);
    let out: Vec<[u8; 4]> = std::iter::once(first)
        .chain(found.filter(|&a| netmon_common::banw4_bucket(1, a) == wide))
        .take(n)
        .collect();
    assert_eq!(out.len(), n);
    out
}

/// Exact IPv4 bans past both arrays: nine bans whose addresses share their NETMON_BANX4
/// bucket and their NETMON_BANW4 bucket, so four are in each array and the ninth in the hash
/// map alone (both buckets marked overflowed). Every one drops, each counts exactly the
/// packets it dropped whichever CPU ran (per-CPU slot counters, shared wide ones, the hash
/// entry's), an address of the same buckets without a ban passes, a rewritten ban (new
/// expiry) keeps its place and its counters, and removing one from each place lets it pass
/// at once while the others still drop.
#[test]
#[ignore = "privileged: loads eBPF programs; run by `cargo xtask test`"]
fn exact_bans_past_both_arrays_are_in_the_hash_map_and_drop() {
    use netmon::act::state::State;
    let (p, mut maps) = drop_list_progs();
    let all = addrs_in_both_buckets(10);
    let (same, unbanned) = (&all[..9], all[9]);
    let net = |a: [u8; 4]| std::net::Ipv4Addr::from(a).to_string();
    let state = State {
        generation: 1,
        bans: same.iter().map(|&a| manual_ban(&net(a), None)).collect(),
        ..State::default()
    };
    maps.sync(&state).unwrap();
    let place = |maps: &mut netmon::act::droplist::DropMaps, a: [u8; 4]| {
        maps.exact_array(1, &net(a).parse().unwrap()).unwrap()
    };
    for (i, &a) in same.iter().enumerate() {
        let want = match i {
            0..4 => Some("NETMON_BANX4"),
            4..8 => Some("NETMON_BANW4"),
            _ => None,
        };
        assert_eq!(place(&mut maps, a), want, "{}", net(a));
    }
    assert_eq!(
        maps.exact_buckets_overflowed(1, &net(same[8]).parse().unwrap())
            .unwrap(),
        [true, true]
    );
    let ncpus = aya::util::nr_cpus().unwrap();
    let len = udp4_from(same[0]).len() as u64;
    let mut sent = 0;
    for (i, &a) in same.iter().enumerate() {
        for _ in 0..=i {
            pin_to_cpu(sent % ncpus);
            sent += 1;
            assert_eq!(p.run(DIR_INGRESS, &udp4_from(a)), XDP_DROP, "{}", net(a));
        }
    }
    assert_eq!(p.run(DIR_INGRESS, &udp4_from(unbanned)), XDP_PASS);
    let hits = |maps: &mut netmon::act::droplist::DropMaps, a: [u8; 4]| {
        let v = maps.hits(1, &net(a).parse().unwrap()).unwrap().unwrap();
        (v.packets, v.bytes)
    };
    for (i, &a) in same.iter().enumerate() {
        let n = i as u64 + 1;
        assert_eq!(hits(&mut maps, a), (n, n * len), "{}", net(a));
    }
    // A new expiry for a wide-array ban: same slot, same counters, still dropping.
    let far = netmon::act::state::now_ms() + 3_600_000;
    maps.write_ban(1, 2, &manual_ban(&net(same[5]), Some(far)))
        .unwrap();
    assert_eq!(place(&mut maps, same[5]), Some("NETMON_BANW4"));
    assert_eq!(hits(&mut maps, same[5]), (6, 6 * len));
    assert_eq!(p.run(DIR_INGRESS, &udp4_from(same[5])), XDP_DROP);
    // Removed: one from each place.
    for i in [0, 4, 8] {
        maps.remove_ban(1, &net(same[i]).parse().unwrap()).unwrap();
        assert_eq!(place(&mut maps, same[i]), None);
        assert_eq!(
            p.run(DIR_INGRESS, &udp4_from(same[i])),
            XDP_PASS,
            "{}",
            net(same[i])
        );
    }
    for &i in &[1, 2, 3, 5, 6, 7] {
        assert_eq!(
            p.run(DIR_INGRESS, &udp4_from(same[i])),
            XDP_DROP,
            "{}",
            net(same[i])
        );
    }
}

/// An upgrade without a reboot: the hit counters an older version kept in per-CPU arrays
/// pinned as NETMON_BANHIT4/6 (24-byte counters at the slots' own indexes) are added to the
/// exact bans' counters when the drop list is next opened, and the old pins are removed.
#[test]
#[ignore = "privileged: loads eBPF programs; run by `cargo xtask test`"]
fn hit_counters_pinned_by_an_older_version_are_carried_over() {
    use aya::maps::{MapData, PerCpuArray, PerCpuValues};
    use netmon::act::droplist::DropMaps;
    require_root();
    let pins = PinDir::new("old-counters");
    let (a4, a6) = (
        [198, 18, 7, 9],
        [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
    );
    let (n4, n6) = (
        std::net::Ipv4Addr::from(a4).to_string(),
        std::net::Ipv6Addr::from(a6).to_string(),
    );
    {
        let mut maps = DropMaps::open(&pins.0).unwrap();
        maps.write_ban(1, 2, &manual_ban(&n4, None)).unwrap();
        maps.write_ban(1, 2, &manual_ban(&n6, None)).unwrap();
    }
    // The old maps, as an older netmon left them: the first slot of each ban's bucket (the
    // one a ban takes in an empty bucket), some drops on every CPU.
    let ncpus = aya::util::nr_cpus().unwrap();
    let mut want = Vec::new();
    for (name, slots, slot, seed) in [
        (
            "NETMON_BANHIT4",
            netmon_common::BANX4_SLOTS,
            netmon_common::banx4_bucket(1, a4),
            3,
        ),
        (
            "NETMON_BANHIT6",
            netmon_common::BANX6_SLOTS,
            netmon_common::banx6_bucket(1, &a6),
            5,
        ),
    ] {
        let mut old = PerCpuArray::<MapData, [u64; 3]>::create(slots, 0).unwrap();
        let per_cpu: Vec<[u64; 3]> = (0..ncpus as u64)
            .map(|c| [seed + c, (seed + c) * 100, 1_000 + c])
            .collect();
        want.push((
            per_cpu.iter().map(|v| v[0]).sum::<u64>(),
            per_cpu.iter().map(|v| v[1]).sum::<u64>(),
            1_000 + ncpus as u64 - 1,
        ));
        old.set(slot, PerCpuValues::try_from(per_cpu).unwrap(), 0)
            .unwrap();
        old.pin(pins.0.join(name)).unwrap();
    }
    let mut maps = DropMaps::open(&pins.0).unwrap();
    for (net, want) in [(&n4, want[0]), (&n6, want[1])] {
        let v = maps.hits(1, &net.parse().unwrap()).unwrap().unwrap();
        assert_eq!((v.packets, v.bytes, v.last_hit_ns), want, "{net}");
    }
    for name in ["NETMON_BANHIT4", "NETMON_BANHIT6"] {
        assert!(!pins.0.join(name).exists(), "{name} removed");
    }
    let left: Vec<_> = std::fs::read_dir(&pins.0)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("adopting"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // Opened again: nothing to carry, the counts are not added twice.
    drop(maps);
    let mut maps = DropMaps::open(&pins.0).unwrap();
    let v = maps.hits(1, &n4.parse().unwrap()).unwrap().unwrap();
    assert_eq!((v.packets, v.bytes), (want[0].0, want[0].1));
}

/// The IPv4 /16, /24 and host filters in front of the drop list: once a full write (`sync`)
/// has set the bits of every IPv4 entry, packets from a /16 or a /24 without entries, or
/// from an address that no entry of its /24 covers, skip the lookups (an entry written
/// behind the filters' back in such a /24 goes unseen while the host filter is in force),
/// and the answer is the lookups' own in every case: a /24 drops its addresses and not its
/// neighbours in the same /16, a /10 (shorter than both: 64 /16 bits, 16,384 /24 bits)
/// drops up to its last address and not past it, a /27 drops its 32 addresses and not those
/// next to it in its /24, a prefix added afterwards drops at once (its bits are set before
/// the entry), a removed one stops dropping; with the host filter off, with the /24 filter
/// off too, and with all off, the decisions are the same. The IPv6 /32 and host filters
/// likewise: bits as written for a /48, a /128 and a /20's /32s, an entry written behind
/// their back in a /32 that holds entries unseen while the host filter is in force, a /56
/// added afterwards dropping at once.
#[test]
#[ignore = "privileged: loads eBPF programs; run by `cargo xtask test`"]
fn the_prefix_filters_never_change_a_decision() {
    use netmon::act::state::State;
    let (p, mut maps) = drop_list_progs();
    let ban = |net: &str| manual_ban(net, None);
    let state = State {
        generation: 2,
        bans: vec![
            ban("203.0.113.0/24"),
            ban("100.64.0.0/10"),
            ban("198.18.0.2"),
            ban("192.0.2.96/27"),
            ban("2001:db8:5::/48"),
            ban("2001:db8:7::1"),
            ban("3fff:1000::/20"),
        ],
        ..State::default()
    };
    maps.sync(&state).unwrap();
    // The pinned arrays as the CLI sees them, beside the programs' own handles.
    let pinned_map = |name: &str| {
        aya::maps::Map::from_map_data(aya::maps::MapData::from_pin(p._pins.0.join(name)).unwrap())
            .unwrap()
    };
    let pinned_array = |name: &str| -> aya::maps::Array<_, u64> {
        aya::maps::Array::try_from(pinned_map(name)).unwrap()
    };
    let cfg = pinned_array("NETMON_DROPCFG");
    // What the programs go by: the control word (FLAGS), which carries the generation in
    // force and, for it, whether each slot names it.
    let word_says = |at: u32| {
        let word = cfg.get(&netmon_common::dropcfg::FLAGS, 0).unwrap();
        assert_eq!(
            netmon_common::dropcfg::generation_of(word),
            2,
            "the control word's generation"
        );
        netmon_common::dropcfg::complete(word, at)
    };
    for (at, what) in [
        (netmon_common::dropcfg::BAN4_FILTER, "/16"),
        (netmon_common::dropcfg::BAN4_L24_FILTER, "/24"),
        (netmon_common::dropcfg::BAN4_HOST_FILTER, "host"),
        (netmon_common::dropcfg::BAN6_FILTER, "IPv6 /32"),
        (netmon_common::dropcfg::BAN6_HOST_FILTER, "IPv6 host"),
        (netmon_common::dropcfg::BANX_COMPLETE, "exact array"),
        (netmon_common::dropcfg::BANW_COMPLETE, "wide exact array"),
    ] {
        assert_eq!(
            cfg.get(&at, 0).unwrap(),
            2,
            "the {what} filter of generation 2 is complete and in force"
        );
        assert!(
            word_says(at),
            "the control word: the {what} filter complete"
        );
    }
    // A filter's bit, as the map holds it.
    let bit_at = |map: &aya::maps::Array<_, u64>, (w, bit): (u32, u32)| {
        (map.get(&w, 0).unwrap() >> bit) & 1 == 1
    };
    // The /24 bits as written: the banned /24 and every /24 of the /10, not their neighbours;
    // of those, the host filter's whole-/24 bits only for the entries of /24 and shorter. The
    // host filter's address bits are set in their /24's block for the entries of /25 to /32,
    // and no other (an address outside shares a bit only where its /24's block is one of
    // theirs).
    let (l24, w24) = (
        pinned_array("NETMON_BAN4_L24"),
        pinned_array("NETMON_BAN4_W24"),
    );
    for (a, set, whole) in [
        ([203, 0, 113, 0], true, true),
        ([203, 0, 114, 0], false, false),
        ([203, 0, 112, 0], false, false),
        ([100, 64, 0, 0], true, true),
        ([100, 100, 7, 0], true, true),
        ([100, 127, 255, 0], true, true),
        ([100, 128, 0, 0], false, false),
        ([100, 63, 255, 0], false, false),
        ([198, 18, 0, 0], true, false),
        ([198, 18, 1, 0], false, false),
        ([192, 0, 2, 0], true, false),
    ] {
        let at = netmon_common::dropcfg::l24_slot(2, a);
        assert_eq!(bit_at(&l24, at), set, "/24 bit of {a:?}");
        assert_eq!(bit_at(&w24, at), whole, "whole-/24 bit of {a:?}");
    }
    let h32 = pinned_array("NETMON_BAN4_H32");
    let host = |a: [u8; 4]| netmon_common::dropcfg::h32_slot(2, a);
    let covered: std::collections::HashSet<(u32, u32)> = (96..128)
        .map(|h| [192, 0, 2, h])
        .chain([[198, 18, 0, 2]])
        .map(host)
        .collect();
    for a in [[192, 0, 2, 96], [192, 0, 2, 127], [198, 18, 0, 2]] {
        assert!(bit_at(&h32, host(a)), "host bit of {a:?}");
    }
    for a in [
        [192, 0, 2, 95],
        [192, 0, 2, 128],
        [198, 18, 0, 3],
        [203, 0, 113, 5],
        [100, 64, 0, 1],
    ] {
        let want = covered.contains(&host(a));
        assert_eq!(bit_at(&h32, host(a)), want, "host bit of {a:?}");
    }
    // The IPv6 bits as written: those of 2001:db8::/32 and of the /20's 4,096 /32s, and no
    // other (a /32 outside shares a bit only where the hash puts it on one of theirs).
    let l32 = pinned_array("NETMON_BAN6_L32");
    let at32 = |top: u32| {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&top.to_be_bytes());
        netmon_common::dropcfg::l32_6_slot(2, &a)
    };
    let covered: std::collections::HashSet<(u32, u32)> = std::iter::once(0x2001_0db8)
        .chain(0x3fff_1000..=0x3fff_1fff)
        .map(at32)
        .collect();
    for top in [0x2001_0db8, 0x3fff_1000, 0x3fff_1abc, 0x3fff_1fff] {
        assert!(bit_at(&l32, at32(top)), "bit of {top:x}");
    }
    for top in [
        0x2001_0db9,
        0x3fff_0fff,
        0x3fff_2000,
        0x2a01_0000,
        0x2600_1f18,
    ] {
        let want = covered.contains(&at32(top));
        assert_eq!(bit_at(&l32, at32(top)), want, "bit of {top:x}");
    }
    // The IPv6 host filter's bits as written: the /48's bit at /48, the address's at /128,
    // the /20's /32s' whole bits; and none of those of an unbanned address in a /32 that holds
    // entries.
    let h6 = pinned_array("NETMON_BAN6_HOST");
    let v6 = |a: &str| a.parse::<std::net::Ipv6Addr>().unwrap().octets();
    // An address's bits: its /32's whole bit, then its /40's, /48's, /56's, /64's and its own.
    let bits6 = |a: &str| netmon_common::dropcfg::h6_slots(2, &v6(a));
    assert!(bit_at(&h6, bits6("2001:db8:5:ffff::1")[2]), "/48 bit");
    assert!(bit_at(&h6, bits6("2001:db8:7::1")[5]), "/128 bit");
    for a in ["3fff:1000::", "3fff:1abc:1::2", "3fff:1fff::"] {
        assert!(bit_at(&h6, bits6(a)[0]), "whole bit of {a}");
    }
    let unbanned6 = "2001:db8:9::5";
    assert!(
        bits6(unbanned6).into_iter().all(|at| !bit_at(&h6, at)),
        "{unbanned6}: every host bit clear (the hashes put no entry's bit on one of them)"
    );
    let from4 = udp4_from;
    let cases: [([u8; 4], u32); 11] = [
        ([192, 0, 2, 100], XDP_DROP),
        ([192, 0, 2, 95], XDP_PASS),
        ([192, 0, 2, 128], XDP_PASS),
        ([203, 0, 113, 50], XDP_DROP),
        ([203, 0, 114, 50], XDP_PASS),
        ([203, 1, 113, 50], XDP_PASS),
        ([100, 64, 0, 1], XDP_DROP),
        ([100, 127, 255, 254], XDP_DROP),
        ([100, 128, 0, 1], XDP_PASS),
        ([198, 18, 0, 2], XDP_DROP),
        ([198, 18, 0, 3], XDP_PASS),
    ];
    let from6 = |src: &str| udp6_from(src.parse::<std::net::Ipv6Addr>().unwrap().octets());
    let cases6: [(&str, u32); 8] = [
        ("2001:db8:5::9", XDP_DROP),
        ("2001:db8:6::9", XDP_PASS),
        ("2001:db8:7::1", XDP_DROP),
        ("2001:db8:7::2", XDP_PASS),
        ("3fff:1abc::1", XDP_DROP),
        ("3fff:2000::1", XDP_PASS),
        ("3fff:fff::1", XDP_PASS),
        ("2a01::1", XDP_PASS),
    ];
    let check = |p: &Progs, what: &str| {
        for (src, want) in cases {
            assert_eq!(p.run(DIR_INGRESS, &from4(src)), want, "{what}: {src:?}");
        }
        for (src, want) in cases6 {
            assert_eq!(p.run(DIR_INGRESS, &from6(src)), want, "{what}: {src}");
        }
    };
    check(&p, "filters on");
    // A ban written while the host filters are in force has its bits before it is looked up.
    maps.write_ban(2, 1, &ban("2001:db8:a:100::/56")).unwrap();
    assert_eq!(p.run(DIR_INGRESS, &from6("2001:db8:a:1ff::1")), XDP_DROP);
    assert_eq!(p.run(DIR_INGRESS, &from6("2001:db8:a:200::1")), XDP_PASS);
    maps.remove_ban(2, &"2001:db8:a:100::/56".parse().unwrap())
        .unwrap();
    assert_eq!(p.run(DIR_INGRESS, &from6("2001:db8:a:1ff::1")), XDP_PASS);
    // A clear host bit skips the lookups: a prefix entry written into the trie behind the
    // filters' back (no bits set), in a /24 that holds entries, goes unseen while the host
    // filter is in force, and drops once it is off; the same in IPv6, a /64 in 2001:db8::/32,
    // whose /32 bit the other entries set.
    let mut pfx4: aya::maps::LpmTrie<_, netmon_common::BanPrefix4, netmon_common::BanValue> =
        aya::maps::LpmTrie::try_from(pinned_map("NETMON_BANPFX4")).unwrap();
    let mut pfx6: aya::maps::LpmTrie<_, netmon_common::BanPrefix6, netmon_common::BanValue> =
        aya::maps::LpmTrie::try_from(pinned_map("NETMON_BANPFX6")).unwrap();
    let behind = aya::maps::lpm_trie::Key::new(8 + 28, [2, 192, 0, 2, 64]);
    let mut key6 = [0u8; 17];
    key6[0] = 2;
    key6[1..].copy_from_slice(&v6(unbanned6));
    let behind6 = aya::maps::lpm_trie::Key::new(8 + 64, key6);
    let value = |prefix_len| netmon_common::BanValue {
        prefix_len,
        ..Default::default()
    };
    pfx4.insert(&behind, value(28), 0).unwrap();
    pfx6.insert(&behind6, value(64), 0).unwrap();
    let unseen = [from4([192, 0, 2, 70]), from6(unbanned6)];
    let expect_unseen = |want: u32, what: &str| {
        for frame in &unseen {
            assert_eq!(p.run(DIR_INGRESS, frame), want, "{what}");
        }
    };
    expect_unseen(XDP_PASS, "host bits clear: not looked up");
    maps.disable_host_filter().unwrap();
    expect_unseen(XDP_DROP, "host filters off: looked up");
    // Back on (the bench alternates the two states pass by pass): unseen again.
    maps.enable_filters().unwrap();
    expect_unseen(XDP_PASS, "host filters back on: not looked up");
    maps.disable_host_filter().unwrap();
    pfx4.remove(&behind).unwrap();
    pfx6.remove(&behind6).unwrap();
    check(&p, "host filter off");
    maps.write_ban(2, 1, &ban("192.0.2.0/25")).unwrap();
    assert_eq!(
        p.run(DIR_INGRESS, &from4([192, 0, 2, 1])),
        XDP_DROP,
        "added after"
    );
    assert_eq!(p.run(DIR_INGRESS, &from4([192, 0, 2, 200])), XDP_PASS);
    maps.remove_ban(2, &"192.0.2.0/25".parse().unwrap())
        .unwrap();
    assert_eq!(
        p.run(DIR_INGRESS, &from4([192, 0, 2, 1])),
        XDP_PASS,
        "removed"
    );
    // An IPv6 prefix shorter than /16 sets every bit of the IPv6 filter.
    maps.write_ban(2, 1, &ban("4000::/8")).unwrap();
    assert_eq!(p.run(DIR_INGRESS, &from6("40ff::1")), XDP_DROP);
    assert_eq!(p.run(DIR_INGRESS, &from6("2a01::1")), XDP_PASS);
    assert!(bit_at(&l32, at32(0x2a01_0000)), "every IPv6 bit set");
    maps.remove_ban(2, &"4000::/8".parse().unwrap()).unwrap();
    assert_eq!(p.run(DIR_INGRESS, &from6("40ff::1")), XDP_PASS);
    maps.disable_l24_filter().unwrap();
    for at in [
        netmon_common::dropcfg::BAN4_L24_FILTER,
        netmon_common::dropcfg::BAN4_HOST_FILTER,
    ] {
        assert_eq!(cfg.get(&at, 0).unwrap(), 0);
        assert!(!word_says(at), "the control word: slot {at} off");
    }
    assert!(word_says(netmon_common::dropcfg::BAN4_FILTER));
    check(&p, "/16 filter only");
    // Every filter's slot: the generation whose filter is complete, or 0.
    let filters = [
        netmon_common::dropcfg::BAN4_FILTER,
        netmon_common::dropcfg::BAN4_L24_FILTER,
        netmon_common::dropcfg::BAN4_HOST_FILTER,
        netmon_common::dropcfg::BAN6_FILTER,
        netmon_common::dropcfg::BAN6_HOST_FILTER,
    ];
    maps.disable_filters().unwrap();
    for at in filters {
        assert_eq!(cfg.get(&at, 0).unwrap(), 0);
        assert!(!word_says(at), "the control word: slot {at} off");
    }
    check(&p, "filters off");
    // `enable_filters` turns them back on, and so does a full write, with the same decisions.
    let all_on = |what: &str| {
        for at in filters {
            assert_eq!(cfg.get(&at, 0).unwrap(), 2, "{what}: slot {at}");
            assert!(word_says(at), "{what}: the control word, slot {at}");
        }
        check(&p, what);
    };
    maps.enable_filters().unwrap();
    all_on("filters enabled");
    maps.disable_filters().unwrap();
    maps.sync(&state).unwrap();
    all_on("filters on again");
}

/// Per-source rate limits in the kernel (GCRA): with 1 packet/s and a burst of 5, a burst of
/// packets from the limited source (all within well under a second) lets exactly 5 through;
/// with a bandwidth of 1,000 bytes/s and a burst of ten and a half frames, ten; other
/// sources, egress, allow entries and expired limits are untouched; every drop counted.
#[test]
#[ignore = "privileged: loads eBPF programs; run by `cargo xtask test`"]
fn rate_limits_let_the_burst_through_and_drop_the_rest() {
    use netmon::act::state::{Kind, LimitEntry, Rate};
    let (p, mut maps) = drop_list_progs();
    let limit_at = |net: &str, rate: Rate, expires_ms: Option<u64>| LimitEntry {
        net: net.parse().unwrap(),
        rate,
        kind: Kind::Manual,
        reason: String::new(),
        uid: 0,
        added_ms: 0,
        expires_ms,
    };
    let limit = |net: &str, pps: u32, burst: u32, expires_ms: Option<u64>| {
        limit_at(net, Rate::Packets { pps, burst }, expires_ms)
    };
    let from4 = udp4_from;
    let to4 = |dst: [u8; 4]| udp4_frame(V4::default().src, dst, &udp(1, 2, b"x"));
    maps.write_limit(&limit("198.18.0.2", 1, 5, None)).unwrap();
    maps.write_limit(&limit("198.18.0.3", 1, 1, Some(1)))
        .unwrap();
    maps.write_limit(&limit("fd00:6e6d::2", 1, 2, None))
        .unwrap();
    maps.write_limit(&limit("198.18.0.4", 1, 1, None)).unwrap();
    maps.write_allow(&"198.18.0.4".parse().unwrap()).unwrap();
    maps.set_flags(u64::MAX).unwrap();

    let verdicts: Vec<u32> = (0..20)
        .map(|_| p.run(DIR_INGRESS, &from4([198, 18, 0, 2])))
        .collect();
    let passed = verdicts.iter().filter(|v| **v == XDP_PASS).count();
    assert_eq!(passed, 5, "burst of 5 at 1/s: {verdicts:?}");
    assert!(verdicts[..5].iter().all(|v| *v == XDP_PASS), "{verdicts:?}");
    assert!(verdicts[5..].iter().all(|v| *v == XDP_DROP), "{verdicts:?}");
    // Another source, egress to the limited address, an allow-listed and an expired limit.
    assert_eq!(p.run(DIR_INGRESS, &from4([198, 18, 0, 9])), XDP_PASS);
    assert_eq!(p.run(DIR_EGRESS, &to4([198, 18, 0, 2])), TC_ACT_UNSPEC);
    for _ in 0..5 {
        assert_eq!(
            p.run(DIR_INGRESS, &from4([198, 18, 0, 3])),
            XDP_PASS,
            "expired"
        );
        assert_eq!(
            p.run(DIR_INGRESS, &from4([198, 18, 0, 4])),
            XDP_PASS,
            "allowed"
        );
    }
    // IPv6: a burst of 2.
    let v6 = eth(&[], ETH_P_IPV6, &ipv6(17, &udp(1, 2, b"x")));
    let passed6 = (0..10)
        .filter(|_| p.run(DIR_INGRESS, &v6) == XDP_PASS)
        .count();
    assert_eq!(passed6, 2);

    // Bytes: 1,000 a second, a burst of ten and a half frames. The half frame is 20 ms and
    // more of the rate: the test runs take well under that, so exactly ten pass.
    let frame = from4([198, 18, 0, 5]).len() as u64;
    let rate = Rate::bandwidth(1_000, Some((10 * frame + frame / 2).max(1_514))).unwrap();
    let Rate::Bytes { burst_bytes, .. } = rate else {
        unreachable!("a bandwidth")
    };
    maps.write_limit(&limit_at("198.18.0.5", rate, None))
        .unwrap();
    let verdicts: Vec<u32> = (0..2 * burst_bytes / frame)
        .map(|_| p.run(DIR_INGRESS, &from4([198, 18, 0, 5])))
        .collect();
    let fit = burst_bytes / frame;
    assert_eq!(
        verdicts.iter().filter(|v| **v == XDP_PASS).count() as u64,
        fit,
        "a burst of {burst_bytes} bytes in {frame}-byte frames: {verdicts:?}"
    );
    assert!(
        verdicts[..fit as usize].iter().all(|v| *v == XDP_PASS),
        "{verdicts:?}"
    );
    let bw_hits = maps.limit_hits(&"198.18.0.5".parse().unwrap()).unwrap();
    assert_eq!(bw_hits.packets, verdicts.len() as u64 - fit);
    assert_eq!(bw_hits.bytes, bw_hits.packets * frame);

    let hits = maps.limit_hits(&"198.18.0.2".parse().unwrap()).unwrap();
    assert_eq!(hits.packets, 15);
    assert_eq!(hits.bytes, 15 * from4([198, 18, 0, 2]).len() as u64);
    let rl: u64 = maps
        .drops()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.kind == netmon_common::ban_kind::RATELIMIT)
        .map(|(_, s)| s.packets)
        .sum();
    assert_eq!(
        rl,
        15 + 8 + bw_hits.packets,
        "every rate-limit drop counted with reason ratelimit"
    );
}

/// TC frames whose headers are not in the skb's linear data are pulled and continue in
/// `netmon_tc_pulled` (egress) or `netmon_tci_pulled` (ingress) by tail call.
/// BPF_PROG_TEST_RUN only builds linear skbs, so the pull itself is not reachable here; what
/// is checked: the loader put each continuation in its tail-call slot, and it records a frame
/// exactly as the program it continues does (flow key, bytes, packets, flags), without
/// counting it for its hook a second time.
#[test]
#[ignore = "privileged: loads eBPF programs; run by `cargo xtask test`"]
fn the_pulled_continuations_record_frames_as_the_programs_they_continue() {
    let _ = PRIV;
    // Each frame straight through the program, and through its continuation on maps of
    // their own.
    let mut direct = Progs::with_tail(1024);
    let mut via_pulled = Progs::with_tail(1024);
    let frames = [
        eth(
            &[],
            ETH_P_IP,
            &ipv4(V4::default(), &tcp(40000, 443, 0x18, b"hello")),
        ),
        eth(&[], ETH_P_IPV6, &ipv6(17, &udp(5353, 53, b"query"))),
    ];
    for (main, ingress) in [("netmon_tc_egress", false), ("netmon_tc_ingress", true)] {
        let (pulled_name, slot) = netmon::load::FlowTable::Lru.tc_pulled(ingress);
        let aya::maps::Map::ProgramArray(tail) = direct.ebpf.map("NETMON_TC_TAIL").unwrap() else {
            panic!("NETMON_TC_TAIL is a program array");
        };
        let pulled: &SchedClassifier = direct
            .ebpf
            .program(pulled_name)
            .unwrap()
            .try_into()
            .unwrap();
        let pulled_id = pulled.info().unwrap().id();
        // The slot's program is the one loaded under that name: a lookup of a program array
        // from userspace returns the program's id.
        let fd = std::os::fd::AsRawFd::as_raw_fd(&std::os::fd::AsFd::as_fd(tail.fd()));
        let (key, mut id) = (slot, 0u32);
        // union bpf_attr for BPF_MAP_LOOKUP_ELEM: map_fd, pad, key pointer, value pointer.
        let attr: [u64; 4] = [
            fd as u64,
            &key as *const u32 as u64,
            &mut id as *mut u32 as u64,
            0,
        ];
        // SAFETY: bpf(2) with a valid attr of the size passed; key and value outlive the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                1, // BPF_MAP_LOOKUP_ELEM
                attr.as_ptr(),
                size_of_val(&attr) as u32,
            )
        };
        assert_eq!(
            r,
            0,
            "reading NETMON_TC_TAIL[{slot}]: {}",
            std::io::Error::last_os_error()
        );
        assert_eq!(id, pulled_id, "NETMON_TC_TAIL[{slot}] is {pulled_name}");

        direct.reset();
        via_pulled.reset();
        for f in &frames {
            assert_eq!(direct.run_prog(main, f), TC_ACT_UNSPEC);
            assert_eq!(via_pulled.run_prog(pulled_name, f), TC_ACT_UNSPEC);
        }
        let strip = |mut v: Vec<(FlowKey, FlowStats)>| {
            v.sort_by_key(|(k, _)| (k.family, k.proto, k.local_port));
            v.into_iter()
                .map(|(k, s)| (k, s.bytes, s.packets, s.tcp_flags))
                .collect::<Vec<_>>()
        };
        let want = strip(direct.flows());
        assert_eq!(want.len(), 2, "{main}: {want:?}");
        let dir = if ingress { DIR_INGRESS } else { DIR_EGRESS };
        assert!(want.iter().all(|(k, ..)| k.direction == dir), "{want:?}");
        assert_eq!(
            strip(via_pulled.flows()),
            want,
            "{pulled_name} against {main}"
        );
        let c = via_pulled.counters();
        assert_eq!(
            (
                c[counter::XDP_PACKETS as usize],
                c[counter::TC_PACKETS as usize]
            ),
            (0, 0),
            "{pulled_name} does not count the frame for its hook again"
        );
        assert_eq!(
            direct.counters()[counter::PULL_TAIL_CALL_FAILED as usize],
            0,
            "linear frames are never pulled"
        );
    }
}

/// A TC test run's `__sk_buff` (struct __sk_buff in linux/bpf.h, through `gso_size`) with
/// these fields set and the rest zero, as the kernel requires of the others: the skb's
/// length on the wire (`wire_len`, the queue's accounting; 0: the frame's own length), its
/// GSO segment count and its segment size.
fn skb_ctx(wire_len: u32, gso_segs: u32, gso_size: u32) -> Vec<u8> {
    let mut ctx = vec![0u8; 180];
    for (offset, v) in [(160, wire_len), (164, gso_segs), (176, gso_size)] {
        ctx[offset..offset + 4].copy_from_slice(&v.to_ne_bytes());
    }
    ctx
}

/// A GSO skb on its way out, or a GRO one received, counts in its flow as the frames it
/// stands for, each with its headers: egress takes the kernel's `wire_len` and `gso_segs`;
/// TC ingress takes `gso_segs` and the headers the frame begins with, or, where the count
/// is missing (0, as in a tap's frames from a guest), the segments its segment size gives.
/// An skb of one segment, one whose `wire_len` is stale (not GSO), and XDP's frame, count
/// once.
#[test]
#[ignore = "privileged: loads eBPF programs; run by `cargo xtask test`"]
fn gso_and_gro_skbs_count_as_the_frames_they_stand_for() {
    let _ = PRIV;
    let mut p = Progs::new(1024);
    let data = vec![7u8; 2500];
    // Each frame and the headers every segment of it carries: Ethernet, IP and TCP or UDP.
    let frames = [
        (
            eth(
                &[],
                ETH_P_IP,
                &ipv4(V4::default(), &tcp(40000, 443, 0x10, &data)),
            ),
            14 + 20 + 20,
        ),
        (
            eth(&[], ETH_P_IPV6, &ipv6(6, &tcp(40000, 443, 0x10, &data))),
            14 + 40 + 20,
        ),
        (
            udp4_frame([198, 18, 0, 2], [198, 18, 0, 1], &udp(40000, 443, &data)),
            14 + 20 + 8,
        ),
    ];
    for (frame, hdr) in &frames {
        let len = frame.len() as u64;
        // 2,500 bytes in segments of 800: four (an XDP test run's frame stays within a
        // page: longer ones it splits into fragments that a program without them does not see).
        let four = (4, len + 3 * hdr);
        let wire = (len + 3 * hdr) as u32;
        for (prog, ctx, want) in [
            ("netmon_tc_egress", skb_ctx(wire, 4, 800), four),
            ("netmon_tc_egress", skb_ctx(0, 0, 0), (1, len)),
            // Not GSO, made shorter since the kernel's count (by a program before netmon's).
            ("netmon_tc_egress", skb_ctx(wire, 0, 0), (1, len)),
            ("netmon_tc_ingress", skb_ctx(0, 4, 800), four),
            ("netmon_tc_ingress", skb_ctx(0, 0, 800), four),
            ("netmon_tc_ingress", skb_ctx(0, 1, 800), (1, len)),
            ("netmon_tc_ingress", skb_ctx(0, 0, 0), (1, len)),
        ] {
            p.reset();
            assert_eq!(p.run_prog_ctx(prog, frame, Some(&ctx)), TC_ACT_UNSPEC);
            let flows = p.flows();
            assert_eq!(flows.len(), 1, "{prog}: {flows:?}");
            let s = flows[0].1;
            assert_eq!(
                (s.packets, s.bytes),
                want,
                "{prog}, {len}-byte frame, context {:?}",
                &ctx[160..]
            );
        }
        p.reset();
        assert_eq!(p.run_prog("netmon_xdp", frame), XDP_PASS);
        let s = p.flows()[0].1;
        assert_eq!((s.packets, s.bytes), (1, len), "netmon_xdp");
    }
}

/// A frame the host forwards (its skb carries the index of the device it came in by,
/// `__sk_buff.ingress_ifindex`) is marked in its egress flow, IPv4 and IPv6 alike; one a
/// local socket or the stack sent (index 0) is not, nor is any frame at the ingress hooks,
/// which cannot know where a frame goes (at TC ingress every skb has the index).
#[test]
#[ignore = "privileged: loads eBPF programs; run by `cargo xtask test`"]
fn forwarded_frames_are_marked_in_their_egress_flow() {
    let _ = PRIV;
    let mut p = Progs::new(1024);
    let frames = [
        udp4_frame([198, 18, 0, 2], [198, 18, 0, 1], &udp(40000, 443, b"fwd")),
        eth(&[], ETH_P_IPV6, &ipv6(6, &tcp(40000, 443, 0x10, b"fwd"))),
    ];
    for frame in &frames {
        for (prog, came_in_by, want) in [
            ("netmon_tc_egress", 7, FLOW_FLAG_FORWARDED),
            ("netmon_tc_egress", 0, 0),
            ("netmon_tc_ingress", 7, 0),
        ] {
            p.reset();
            let mut ctx = skb_ctx(0, 0, 0);
            // struct __sk_buff: ingress_ifindex after len, pkt_type, mark, queue_mapping,
            // protocol, vlan_present, vlan_tci, vlan_proto and priority.
            ctx[36..40].copy_from_slice(&u32::to_ne_bytes(came_in_by));
            assert_eq!(p.run_prog_ctx(prog, frame, Some(&ctx)), TC_ACT_UNSPEC);
            let flows = p.flows();
            assert_eq!(flows.len(), 1, "{prog}: {flows:?}");
            assert_eq!(
                flows[0].0.flags, want,
                "{prog}, received by ifindex {came_in_by}: {:?}",
                flows[0].0
            );
        }
        p.reset();
        assert_eq!(p.run_prog("netmon_xdp", frame), XDP_PASS);
        assert_eq!(p.flows()[0].0.flags, 0, "netmon_xdp");
    }
}

/// Sends one datagram from a socket bound to `from` to one bound to `to` (loopback), checks
/// that it arrived, and returns the sender's local port.
fn send_one_datagram(from: &str, to: &str) -> u16 {
    let rx = std::net::UdpSocket::bind(to).unwrap();
    let tx = std::net::UdpSocket::bind(from).unwrap();
    tx.send_to(b"owner?", rx.local_addr().unwrap()).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(rx.recv(&mut buf).unwrap(), 6, "the datagram arrived");
    tx.local_addr().unwrap().port()
}

/// The UDP-sender hooks: kprobe `udp_sendmsg`/`udpv6_sendmsg`, the raw tracepoint
/// `sock_send_length` and the tracepoint `sock:sock_send_length`, the loader's chain from
/// first choice to last. Each that this kernel has is attached on its own and must record
/// this process as the owner of the local port of an IPv4 and an IPv6 socket that sends one
/// datagram over loopback. The ones this kernel lacks are named as not checked (this host
/// has no kprobes; Debian 12's 6.1 in the VM step has no sock_send_length).
#[test]
#[ignore = "privileged: loads eBPF programs; run by `cargo xtask test`"]
fn every_udp_sender_hook_this_kernel_has_records_the_sending_process() {
    let _ = PRIV;
    require_root();
    let _ = netmon::load::tracefs::ensure_mounted();
    let mut checked = Vec::new();
    for prog in [
        "netmon_udp_sendmsg",
        "netmon_sock_send_raw",
        "netmon_sock_send",
    ] {
        let pins = PinDir::new("udpsend");
        let mut loader = small_maps(&pins, 1024);
        let mut notes = Vec::new();
        let sk_protocol_known =
            netmon::load::kernel_globals(&mut loader, &mut notes).sk_protocol_known;
        let mut ebpf = loader
            .load(netmon::load::EBPF_OBJECT)
            .expect("load the eBPF object");
        let attached = match prog {
            "netmon_udp_sendmsg" => {
                netmon::load::try_kprobe(&mut ebpf, prog, &["udp_sendmsg", "udpv6_sendmsg"])
            }
            "netmon_sock_send_raw" if !sk_protocol_known => Err(anyhow::anyhow!(
                "BTF gives no sk_protocol offset ({notes:?})"
            )),
            "netmon_sock_send_raw" => {
                netmon::load::try_raw_tracepoint(&mut ebpf, prog, "sock_send_length")
            }
            _ => netmon::load::try_tracepoint(&mut ebpf, prog, "sock", "sock_send_length"),
        };
        if let Err(e) = attached {
            eprintln!("{prog}: NOT CHECKED, not available on this kernel: {e:#}");
            continue;
        }
        for (any, dst) in [("127.0.0.1:0", "127.0.0.1:0"), ("[::1]:0", "[::1]:0")] {
            let port = send_one_datagram(any, dst);
            let owner = udp_port_owner(&ebpf, port);
            assert_eq!(
                owner.pid,
                std::process::id(),
                "{prog}, {any}: UDP port {port}"
            );
        }
        checked.push(prog);
    }
    eprintln!("checked: {checked:?}");
    assert!(
        !checked.is_empty(),
        "no UDP-sender hook could be attached on this kernel"
    );
    if checked.contains(&"netmon_udp_sendmsg") {
        // All or nothing: when one of the functions cannot be probed, the kprobe must not
        // stay on the others (the loader falls back to another hook, which would record
        // alongside it). A datagram sent afterwards must find no owner recorded.
        let pins = PinDir::new("udpsend-partial");
        let mut ebpf = small_maps(&pins, 1024)
            .load(netmon::load::EBPF_OBJECT)
            .expect("load the eBPF object");
        let e = netmon::load::try_kprobe(
            &mut ebpf,
            "netmon_udp_sendmsg",
            &["udp_sendmsg", "netmon_no_such_kernel_function"],
        )
        .expect_err("a kprobe on a function the kernel lacks attached");
        assert!(
            format!("{e:#}").contains("netmon_no_such_kernel_function"),
            "{e:#}"
        );
        let port = send_one_datagram("127.0.0.1:0", "127.0.0.1:0");
        assert_eq!(
            udp_port_owner(&ebpf, port).pid,
            0,
            "the kprobe on udp_sendmsg stayed attached after the failed attach"
        );
        eprintln!("checked: a failed kprobe attach leaves none of its functions probed");
    } else {
        eprintln!("partial kprobe attach: NOT CHECKED, this kernel has no kprobes");
    }
}

/// The record in `NETMON_UDP_PORTS` for UDP local port `port` (a pid of 0: none).
fn udp_port_owner(ebpf: &Ebpf, port: u16) -> netmon_common::ProcInfo {
    let ports: aya::maps::Array<_, netmon_common::ProcInfo> =
        aya::maps::Array::try_from(ebpf.map("NETMON_UDP_PORTS").unwrap()).unwrap();
    ports.get(&u32::from(port), 0).unwrap()
}

/// A drain that asks for more owners than it looks up one at a time (a full scan of a large
/// table retries every flow without one) answers the rest from a batch copy of the two
/// owner maps. Every answer, before and after the copy, must be the record written for that
/// socket or port: the exact 4-tuple first, the local port's owner next, none otherwise.
#[test]
fn owners_from_the_batch_copy_are_the_records_written() {
    use aya::maps::HashMap;
    use netmon_common::{IPPROTO_TCP, IPPROTO_UDP, PortKey, ProcInfo, SockKey};
    require_root();
    let pins = PinDir::new("owners");
    let mut loader = small_maps(&pins, 1024);
    loader
        .map_max_entries("NETMON_SOCK_PROC", 4096)
        .map_max_entries("NETMON_PORT_OWNER", 2048);
    let mut ebpf = loader
        .load(netmon::load::EBPF_OBJECT)
        .expect("load the eBPF object");
    let proc_info = |pid: u32| ProcInfo {
        pid,
        uid: pid % 7,
        cgroup_id: u64::from(pid) * 3,
        recorded_ns: 1,
        comm: *b"owner-test\0\0\0\0\0\0",
    };
    let proto = |i: u32| {
        if i.is_multiple_of(2) {
            IPPROTO_TCP
        } else {
            IPPROTO_UDP
        }
    };
    // Flow i: local port 10000 + i % 1000, remote port 20000 + i. Every third flow has an
    // exact record (pid 100000 + i); local ports below 10300 have a port owner (pid
    // 50000 + port); the rest have neither.
    let flow = |i: u32| FlowKey {
        ifindex: 2,
        direction: DIR_INGRESS,
        proto: proto(i),
        family: 4,
        flags: 0,
        local_port: 10_000 + (i % 1000) as u16,
        remote_port: 20_000 + i as u16,
        local_addr: v4_mapped([198, 18, 0, 1]),
        remote_addr: v4_mapped([198, 18, 1, (i % 200) as u8]),
    };
    const FLOWS: u32 = 3600;
    {
        let mut socks: HashMap<_, SockKey, ProcInfo> =
            HashMap::try_from(ebpf.map_mut("NETMON_SOCK_PROC").unwrap()).unwrap();
        for i in (0..FLOWS).filter(|i| i.is_multiple_of(3)) {
            let k = flow(i);
            let sk = SockKey {
                proto: k.proto,
                local_port: k.local_port,
                remote_port: k.remote_port,
                local_addr: k.local_addr,
                remote_addr: k.remote_addr,
                ..Default::default()
            };
            socks.insert(sk, proc_info(100_000 + i), 0).unwrap();
        }
        // TCP listeners' ports in the hash map, UDP senders' in the array indexed by port.
        let mut ports: HashMap<_, PortKey, ProcInfo> =
            HashMap::try_from(ebpf.map_mut("NETMON_PORT_OWNER").unwrap()).unwrap();
        for port in 10_000..10_300u16 {
            let k = PortKey {
                proto: IPPROTO_TCP,
                _pad: 0,
                port,
            };
            ports
                .insert(k, proc_info(50_000 + u32::from(port)), 0)
                .unwrap();
        }
        let mut udp: aya::maps::Array<_, ProcInfo> =
            aya::maps::Array::try_from(ebpf.map_mut("NETMON_UDP_PORTS").unwrap()).unwrap();
        for port in 10_000..10_300u16 {
            udp.set(u32::from(port), proc_info(50_000 + u32::from(port)), 0)
                .unwrap();
        }
    }
    let maps = netmon::drain::Maps::take(&mut ebpf).expect("take the maps");
    let mut lookup = maps.owner_lookup();
    let (mut exact, mut by_port, mut none) = (0, 0, 0);
    for i in 0..FLOWS {
        let k = flow(i);
        // The owner, and whether it is the local port's (not the socket's own record).
        let want = if i.is_multiple_of(3) {
            exact += 1;
            Some((proc_info(100_000 + i), false))
        } else if k.local_port < 10_300 {
            by_port += 1;
            Some((proc_info(50_000 + u32::from(k.local_port)), true))
        } else {
            none += 1;
            None
        };
        assert_eq!(
            lookup.owner(&k),
            want.map(|(p, by_port)| netmon::aggregate::Owner {
                by_port,
                ..p.into()
            }),
            "flow {i} ({k:?})"
        );
        assert_eq!(
            maps.owner(&k),
            want.map(|(p, _)| p),
            "flow {i}, looked up directly"
        );
    }
    assert!(lookup.copied(), "{FLOWS} lookups in one drain use the copy");
    let icmp = FlowKey {
        proto: netmon_common::IPPROTO_ICMP,
        ..flow(0)
    };
    assert_eq!(lookup.owner(&icmp), None, "no socket owns an ICMP flow");
    assert!(
        exact > 1000 && by_port > 200 && none > 1000,
        "{exact} {by_port} {none}"
    );
}

/// Runs the calling thread on `cpu` only.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_setaffinity reads it.
    let ok = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) == 0
    };
    assert!(
        ok,
        "pinning to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
}

/// Loads `loader`'s object and in it `netmon_xdp_tab`, the per-CPU tables' XDP program.
fn load_tab_xdp(loader: &mut EbpfLoader<'_>) -> Ebpf {
    let mut ebpf = loader
        .load(netmon::load::EBPF_OBJECT)
        .expect("load the eBPF object");
    let x: &mut Xdp = ebpf
        .program_mut("netmon_xdp_tab")
        .unwrap()
        .try_into()
        .unwrap();
    x.load().expect("verifier accepts netmon_xdp_tab");
    ebpf
}

/// Runs `pkt` once through the loaded XDP program `x`, which must pass it.
fn pass_once(x: &Xdp, pkt: &[u8]) {
    let r = x
        .test_run(TestRunOptions {
            data_in: Some(pkt),
            repeat: 1,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.return_value, XDP_PASS);
}

/// The per-CPU flow tables lose no count, whatever happens to a flow's slot: 2,000 flows
/// through 64 buckets per CPU (256 slots), so that most are evicted, some several times, in
/// rounds with a drain between them (a slot read, then evicted: only the rest comes with its
/// record), and some flows counted on a second CPU too. The daemon's reader must hand on, per
/// flow, exactly the packets and bytes that went through the program.
#[test]
#[ignore = "privileged: needs root (BPF_PROG_TEST_RUN); run by `cargo xtask test`"]
fn per_cpu_table_evictions_and_cpus_lose_no_count() {
    require_root();
    evictions_and_cpus_lose_no_count(netmon::load::WEAK_STORE_ORDER);
}

/// The same with the programs' stores ordered as they are where the CPU may reorder them
/// (`WEAK_STORE_ORDER` = 1: a slot's sequence word exchanged, its bucket's mark set by an
/// atomic OR), which x86 does not need and so cannot show going wrong: that path must count
/// exactly as the plain one, and must be in the program the kernel runs (larger than the
/// plain one's, from which the verifier removes it).
#[test]
#[ignore = "privileged: needs root (BPF_PROG_TEST_RUN); run by `cargo xtask test`"]
fn per_cpu_table_with_ordered_stores_loses_no_count() {
    require_root();
    let ordered = evictions_and_cpus_lose_no_count(1);
    let pins = PinDir::new("tab-plain");
    let plain = translated_size(&load_small_tab_xdp(&pins, 0));
    assert!(
        ordered > plain,
        "the ordered-store program ({ordered} bytes translated) is not larger than the plain \
         one ({plain}): its atomic path was not kept"
    );
}

/// Bytes of `netmon_xdp_tab` as the verifier left it.
fn translated_size(ebpf: &Ebpf) -> u32 {
    let x: &Xdp = ebpf.program("netmon_xdp_tab").unwrap().try_into().unwrap();
    x.info().unwrap().size_translated().unwrap()
}

/// `netmon_xdp_tab` loaded with per-CPU tables of 256 flows and the programs'
/// `WEAK_STORE_ORDER` set to `weak_store_order` (0 or 1).
fn load_small_tab_xdp(pins: &PinDir, weak_store_order: u32) -> Ebpf {
    static ORDERS: [u32; 2] = [0, 1];
    let mut loader = small_maps(pins, 1024);
    netmon::load::size_flow_maps(&mut loader, netmon::load::FlowTable::PerCpu, 256).unwrap();
    loader.override_global("WEAK_STORE_ORDER", &ORDERS[weak_store_order as usize], true);
    load_tab_xdp(&mut loader)
}

/// `per_cpu_table_evictions_and_cpus_lose_no_count` with the programs' `WEAK_STORE_ORDER`
/// set to `weak_store_order`; returns the size of the program the kernel ran.
fn evictions_and_cpus_lose_no_count(weak_store_order: u32) -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pins = PinDir::new("tab");
    let ebpf = load_small_tab_xdp(&pins, weak_store_order);
    let size = translated_size(&ebpf);
    let mut t = TabRun::new(ebpf);
    const FLOWS: u32 = 2000;
    pin_to_cpu(0);
    for round in 0..3u32 {
        // Flow i sends in rounds 0..=(i % 3): evicted between its packets or not.
        for i in (0..FLOWS).filter(|i| round <= i % 3) {
            t.send(i);
        }
        if round == 0 && cpus > 1 {
            // The first flows again, from another CPU: a slot in that CPU's part too.
            pin_to_cpu(1);
            for i in 0..50 {
                t.send(i);
            }
            pin_to_cpu(0);
        }
        t.drain();
    }
    let evictions = t.check();
    assert!(
        evictions > u64::from(FLOWS) / 2,
        "only {evictions} evictions: the table was meant to overflow"
    );
    size
}

/// `netmon_xdp_tab` fed UDP flows (flow `i` from 10.9.x.y, `i`'s low 16 bits) while the
/// daemon's reader drains its tables as the daemon does, and what went through it per flow.
struct TabRun {
    ebpf: Ebpf,
    tables: netmon::flowtab::Tables,
    config: aya::maps::Array<aya::maps::MapData, u64>,
    /// (packets, bytes) the program saw per flow's source address.
    sent: std::collections::HashMap<[u8; 4], (u64, u64)>,
    /// The daemon's tracker, fed as the daemon feeds it: what the reader handed on.
    tracker: netmon::aggregate::Tracker,
    epoch: u64,
}

impl TabRun {
    fn new(mut ebpf: Ebpf) -> Self {
        Self {
            tables: netmon::flowtab::Tables::take(&mut ebpf).expect("map the tables"),
            config: aya::maps::Array::try_from(ebpf.take_map("NETMON_CONFIG").unwrap()).unwrap(),
            ebpf,
            sent: std::collections::HashMap::new(),
            tracker: netmon::aggregate::Tracker::default(),
            epoch: 0,
        }
    }

    /// One frame of flow `i`, on the calling thread's CPU.
    fn send(&mut self, i: u32) {
        let src = [10, 9, (i >> 8) as u8, i as u8];
        let pkt = udp4_frame(src, [192, 0, 2, 1], &udp(40000, 53, &[0x5a; 20]));
        let x: &Xdp = self
            .ebpf
            .program("netmon_xdp_tab")
            .unwrap()
            .try_into()
            .unwrap();
        pass_once(x, &pkt);
        let e = self.sent.entry(src).or_default();
        e.0 += 1;
        e.1 += pkt.len() as u64;
    }

    /// As the daemon does: take the marks, advance the epoch, read.
    fn drain(&mut self) {
        self.tables.take_marked();
        self.epoch += 1;
        self.config
            .set(netmon_common::config::EPOCH, self.epoch, 0)
            .unwrap();
        let mut st = self.tracker.begin_tick(1.0);
        self.tables
            .drain(&mut self.tracker, &mut st, |_| None)
            .expect("reading the tables");
        self.tracker.finish_tick(st, 0, u64::MAX, false, |_| None);
    }

    /// Buckets in use of CPU `cpu`'s IPv4 part, as the daemon reads them.
    fn live(&self, cpu: usize) -> usize {
        self.tables.buckets_in_use(cpu)[0]
    }

    /// After a last drain (for what the last frames left marked): every flow holds exactly
    /// the packets and bytes that went through the program, no eviction record was lost.
    /// Returns the eviction records read.
    fn check(mut self) -> u64 {
        self.drain();
        let got: std::collections::HashMap<[u8; 4], (u64, u64)> = self
            .tracker
            .flows
            .iter()
            .map(|(k, e)| {
                (
                    k.remote_addr[12..].try_into().unwrap(),
                    (e.packets, e.bytes),
                )
            })
            .collect();
        let counters: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map("NETMON_COUNTERS").unwrap()).unwrap();
        let evict_lost: u64 = counters.get(&counter::EVICT_LOST, 0).unwrap().iter().sum();
        assert_eq!(evict_lost, 0, "eviction records did not fit in the ring");
        let wrong: Vec<_> = self
            .sent
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(v))
            .map(|(k, v)| (k, v, got.get(k)))
            .collect();
        assert!(
            wrong.is_empty(),
            "{} flows miscounted, e.g. {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(5)]
        );
        assert_eq!(got.len(), self.sent.len());
        self.tables.take_evictions()
    }
}

/// A CPU's part of the per-CPU table grows with the flows it holds (`NETMON_TABLIVE`):
/// 3,000 flows, all active, through CPU 0's part of 16,384 buckets, which starts with 256 of
/// them in use, take more of them but far from all, and lose no count while they move to
/// their buckets in the larger part (drains between rounds; 1,000 of the flows new in the
/// second). So too with a window longer than the time since boot (as for a daemon that
/// starts with the host): a copy left behind by a flow that moved is taken before the part
/// grows again, however recent the window makes every time look. With `TAB_GROW_MS` = 0 (no
/// flow is ever recent enough) the part stays at its start and evicts instead, losing no
/// count either.
#[test]
#[ignore = "privileged: needs root (BPF_PROG_TEST_RUN); run by `cargo xtask test`"]
fn per_cpu_table_grows_with_its_flows_and_loses_no_count() {
    use netmon_common::TAB_START_BUCKETS;
    require_root();
    static WINDOWS: [u32; 3] = [netmon_common::TAB_GROW_MS, u32::MAX, 0];
    for window in &WINDOWS {
        let pins = PinDir::new("tabgrow");
        let mut loader = small_maps(&pins, 1024);
        netmon::load::size_flow_maps(&mut loader, netmon::load::FlowTable::PerCpu, 65536).unwrap();
        loader.override_global("TAB_GROW_MS", window, true);
        let mut t = TabRun::new(load_tab_xdp(&mut loader));
        pin_to_cpu(0);
        for round in 0..3u32 {
            for i in 0..if round == 0 { 2000 } else { 3000 } {
                t.send(i);
            }
            t.drain();
        }
        let live = t.live(0);
        let evictions = t.check();
        eprintln!("TAB_GROW_MS {window}: {live} buckets in use, {evictions} evictions");
        if *window == 0 {
            assert_eq!(
                live, TAB_START_BUCKETS as usize,
                "the part grew with TAB_GROW_MS = 0"
            );
            assert!(
                evictions > 3000 / 2,
                "only {evictions} evictions from {TAB_START_BUCKETS} buckets of 3,000 flows"
            );
        } else {
            assert!(
                live > TAB_START_BUCKETS as usize && live <= 4096,
                "{live} buckets in use of 16,384 for 3,000 flows"
            );
        }
    }
}

/// Flows whose keys share a bucket and a fingerprint (`tab_place`) in the per-CPU table are
/// told apart by their keys: each keeps a slot of its own with its own count, and the
/// bucket's fingerprint word holds the shared fingerprint in both ways.
#[test]
#[ignore = "privileged: needs root; run by `cargo xtask test`"]
fn per_cpu_table_fingerprint_collisions_keep_flows_apart() {
    use netmon::load::FlowTable;
    use netmon_common::{TAB_WAYS, TabBucket};
    require_root();
    const PER_CPU: u32 = 64;
    let ncpus = aya::util::nr_cpus().unwrap() as u32;
    let pins = PinDir::new("tabfp");
    let mut loader = small_maps(&pins, 1024);
    netmon::load::size_flow_maps(&mut loader, FlowTable::PerCpu, 256).unwrap();
    // 64 buckets per CPU: few enough that colliding keys are quick to find.
    loader
        .override_global("TAB_BUCKETS", &PER_CPU, true)
        .map_max_entries("NETMON_TAB4", ncpus * PER_CPU)
        .map_max_entries("NETMON_TABFP4", ncpus * PER_CPU)
        .map_max_entries("NETMON_MARK4", ncpus * PER_CPU / 64);
    let ebpf = load_tab_xdp(&mut loader);
    let x: &Xdp = ebpf.program("netmon_xdp_tab").unwrap().try_into().unwrap();
    let run = |src: [u8; 4]| {
        pass_once(
            x,
            &udp4_frame(src, [192, 0, 2, 1], &udp(40000, 53, &[0x5a; 20])),
        )
    };
    let table: aya::maps::Array<_, TabBucket<FlowKey4>> =
        aya::maps::Array::try_from(ebpf.map("NETMON_TAB4").unwrap()).unwrap();
    let prints: aya::maps::Array<_, u64> =
        aya::maps::Array::try_from(ebpf.map("NETMON_TABFP4").unwrap()).unwrap();
    pin_to_cpu(0);
    // The program's key for one source, read back from the table: the others differ only in
    // the remote address.
    run([10, 9, 0, 0]);
    let probe = (0..PER_CPU)
        .flat_map(|b| table.get(&b, 0).unwrap().slots)
        .find(|s| s.packets == 1)
        .expect("the probe's slot")
        .key;
    let key = |a: [u8; 4]| FlowKey4 {
        remote_addr: a,
        ..probe
    };
    let place = |a: [u8; 4]| netmon_common::tab_place(&key(a).words(), 0, PER_CPU);
    // Two sources with the same bucket and fingerprint (6 + 15 bits: a few thousand
    // candidates hold such a pair).
    let mut seen = std::collections::HashMap::new();
    let (a, b) = (1u32..1 << 20)
        .map(|i| [10, 10 + (i >> 16) as u8, (i >> 8) as u8, i as u8])
        .find_map(|a| seen.insert(place(a), a).map(|b| (a, b)))
        .expect("a colliding pair");
    let (bucket, fp) = place(a);
    for _ in 0..3 {
        run(a);
    }
    for _ in 0..5 {
        run(b);
    }
    let slots = table.get(&bucket, 0).unwrap().slots;
    let count = |src: [u8; 4]| {
        let held: Vec<u64> = slots
            .iter()
            .filter(|s| s.key == key(src))
            .map(|s| s.packets)
            .collect();
        assert_eq!(held.len(), 1, "{src:?} in one slot: {slots:?}");
        held[0]
    };
    assert_eq!((count(a), count(b)), (3, 5));
    let word = prints.get(&bucket, 0).unwrap();
    let ways_with_fp = (0..TAB_WAYS)
        .filter(|w| (word >> (16 * w)) & 0xffff == fp)
        .count();
    assert_eq!(
        ways_with_fp, 2,
        "fingerprint word {word:#x}, fingerprint {fp:#x}"
    );
}

/// CLOCK_MONOTONIC_COARSE as the programs' `bpf_ktime_get_coarse_ns` reads it.
fn coarse_now_ns() -> u64 {
    netmon::drain::clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

/// A flow's first and last times are the coarse monotonic clock of its packets, tick after
/// tick: the programs keep the clock per CPU for the tick it was read in (`coarse_now_in`)
/// and must read it again once the jiffies move on. Packets 15 ms apart (more than a tick
/// at any HZ), and at least until the coarse clock has moved: each last time lies between
/// the clock read before the packet, less one tick (a CPU may read the jiffies of a tick
/// before the timekeeper's update of it), and the clock read after it; each is later than
/// the one before; the first time stays the first packet's.
#[test]
#[ignore = "privileged: needs root; run by `cargo xtask test`"]
fn flow_times_follow_the_coarse_clock_tick_after_tick() {
    use netmon::load::FlowTable;
    use netmon_common::TabBucket;
    require_root();
    // The longest tick: HZ = 100.
    const TICK_NS: u64 = 10_000_000;
    let pins = PinDir::new("tick");
    let mut loader = small_maps(&pins, 1024);
    netmon::load::size_flow_maps(&mut loader, FlowTable::PerCpu, 256).unwrap();
    let ebpf = load_tab_xdp(&mut loader);
    let x: &Xdp = ebpf.program("netmon_xdp_tab").unwrap().try_into().unwrap();
    let table: aya::maps::Array<_, TabBucket<FlowKey4>> =
        aya::maps::Array::try_from(ebpf.map("NETMON_TAB4").unwrap()).unwrap();
    let pkt = udp4_frame([10, 9, 0, 1], [192, 0, 2, 1], &udp(40000, 53, &[0x5a; 20]));
    let slot = || {
        (0..table.len())
            .flat_map(|b| table.get(&b, 0).unwrap().slots)
            .find(|s| s.packets != 0)
            .expect("the flow's slot")
    };
    pin_to_cpu(0);
    let mut first = None;
    let mut last = 0;
    for round in 1..=6u64 {
        let before = coarse_now_ns();
        // Several packets per round: the later ones read the kept value.
        for _ in 0..3 {
            pass_once(x, &pkt);
        }
        let after = coarse_now_ns();
        let s = slot();
        assert_eq!(s.packets, 3 * round);
        assert!(
            before - TICK_NS <= s.last_seen_ns && s.last_seen_ns <= after,
            "round {round}: last seen {} not in [{before} - 1 tick, {after}]",
            s.last_seen_ns
        );
        assert!(
            s.last_seen_ns > last,
            "round {round}: the time did not move"
        );
        last = s.last_seen_ns;
        assert_eq!(*first.get_or_insert(s.first_seen_ns), s.first_seen_ns);
        // 15 ms, then until the coarse clock has moved past `after`: a tick late (in a
        // starved qemu guest, one was) must not pass for a program that kept an old time.
        std::thread::sleep(std::time::Duration::from_millis(15));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while coarse_now_ns() <= after {
            assert!(
                std::time::Instant::now() < deadline,
                "the coarse clock stood still for 5 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// The egress owner path for UDP with real sockets: a namespace `name` whose loopback's
/// egress runs the per-CPU tables' TC program, the cgroup UDP hooks attached, told that a
/// loopback interface is watched or not (`watch_loopback`; a daemon watching the namespace's
/// loopback says it is). The pin directory goes with the object.
fn udp_owner_rig(name: &str, watch_loopback: bool) -> (netmon_tests::Netns, PinDir, Ebpf) {
    use netmon::load::FlowTable;
    let ns = netmon_tests::Netns::new(name);
    let pins = PinDir::new(name);
    let mut loader = small_maps(&pins, 1024);
    netmon::load::size_flow_maps(&mut loader, FlowTable::PerCpu, 256).unwrap();
    let mut ebpf = loader
        .load(netmon::load::EBPF_OBJECT)
        .expect("load the eBPF object");
    netmon::load::load_tc(&mut ebpf, FlowTable::PerCpu, false)
        .expect("loading the egress programs");
    netmon::load::try_cgroup_udp(&mut ebpf, watch_loopback)
        .expect("attaching the cgroup UDP hooks");
    let ebpf = ns.run(move || {
        let _ = aya::programs::tc::qdisc_add_clsact("lo");
        let tc: &mut SchedClassifier = ebpf
            .program_mut("netmon_tc_tab")
            .unwrap()
            .try_into()
            .unwrap();
        tc.attach("lo", aya::programs::tc::TcAttachType::Egress)
            .expect("attaching netmon_tc_tab to lo");
        ebpf
    });
    (ns, pins, ebpf)
}

/// A UDP socket's owner is kept on the socket (`NETMON_UDP_SK`), so no number of sockets
/// fills a table and pushes older sockets' owners out (the cookie-keyed LRU hash it replaced
/// held 16,384): 17,000 sockets, all connected before any of them sends, each make this
/// process the owner of their port with their first frame.
#[test]
#[ignore = "privileged: attaches eBPF programs; run by `cargo xtask test`"]
fn more_connected_udp_sockets_than_a_table_held_each_get_their_owner() {
    const SOCKETS: usize = 17_000;
    require_root();
    // The sockets are open at once: the soft limit on open files is raised to what they
    // need, within the hard limit, or past it where this process may raise that too.
    // SAFETY: getrlimit/setrlimit with a valid struct.
    let limit = unsafe {
        let want = (SOCKETS + 512) as libc::rlim_t;
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < want {
            l.rlim_cur = want;
            l.rlim_max = l.rlim_max.max(want);
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur
    };
    assert!(
        limit as usize >= SOCKETS + 512,
        "this test holds {SOCKETS} sockets open: RLIMIT_NOFILE is {limit}, and raising it \
         failed: {}",
        std::io::Error::last_os_error()
    );
    let (ns, _pins, ebpf) = udp_owner_rig("udpmany", true);
    let ports = ns.run(|| {
        let socks: Vec<std::net::UdpSocket> = (0..SOCKETS)
            .map(|i| {
                let s = std::net::UdpSocket::bind("127.0.0.1:0")
                    .unwrap_or_else(|e| panic!("socket {i}: bind: {e}"));
                s.connect("127.0.0.1:9").expect("connect");
                s
            })
            .collect();
        for s in &socks {
            s.send(b"x").expect("send");
        }
        socks
            .iter()
            .map(|s| s.local_addr().unwrap().port())
            .collect::<Vec<u16>>()
    });
    let me = std::process::id();
    let unowned: Vec<u16> = ports
        .iter()
        .copied()
        .filter(|&p| udp_port_owner(&ebpf, p).pid != me)
        .collect();
    assert!(
        unowned.is_empty(),
        "{} of {SOCKETS} sockets' ports have another owner or none, e.g. {:?}",
        unowned.len(),
        &unowned[..unowned.len().min(5)]
    );
}

/// The egress program's owner path for UDP, with real sockets: the cgroup hooks record each
/// socket's process on the socket (`NETMON_UDP_SK`), and the per-CPU tables' TC program,
/// attached to a namespace's loopback, makes a new flow's process the owner of its local
/// port. It keeps on the socket the port and drain epoch it did that for, so a port taken
/// over by another process's socket within the same drain epoch and on the same CPU must
/// still get the new owner: this process sends from a port, closes the socket, a child
/// process binds the same port and sends, then this process again, all pinned to one CPU,
/// the epoch never moving.
#[test]
#[ignore = "privileged: attaches eBPF programs; run by `cargo xtask test`"]
fn a_udp_port_taken_over_by_another_process_gets_the_new_owner() {
    require_root();
    // Threads and children inherit the affinity of the thread that makes them.
    pin_to_cpu(0);
    let (ns, _pins, ebpf) = udp_owner_rig("udpown", true);
    const PORT: u16 = 40_111;
    let send_here = |to: u16| {
        ns.run(move || {
            let s = std::net::UdpSocket::bind(("127.0.0.1", PORT)).expect("bind");
            s.send_to(b"x", ("127.0.0.1", to)).expect("send");
        })
    };
    let me = std::process::id();
    send_here(9);
    assert_eq!(udp_port_owner(&ebpf, PORT).pid, me, "the first sender");
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(netmon_tests::testpeer_bin())
        .args(["udp-send", "--to", "127.0.0.1:10", "--count", "1"])
        .args(["--bind", &format!("127.0.0.1:{PORT}")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("netmon-testpeer");
    let child = out.id();
    let out = out.wait_with_output().unwrap();
    assert!(out.status.success(), "netmon-testpeer udp-send failed");
    assert_eq!(
        udp_port_owner(&ebpf, PORT).pid,
        child,
        "the port's new owner, in the same drain epoch on the same CPU"
    );
    send_here(11);
    assert_eq!(
        udp_port_owner(&ebpf, PORT).pid,
        me,
        "the port's owner again"
    );
}

/// While no loopback interface is watched, the cgroup UDP hooks record no owner for a
/// connect or send to a loopback address (127.0.0.0/8, ::1, ::ffff:127.0.0.0/104), whose
/// frames a daemon never sees then, and still do for any other address, a local one over
/// loopback included; once the daemon says loopback is watched, they record those too. The
/// egress program on the namespace's loopback is the probe: a socket's first frame makes
/// its process the owner of its port only where the hooks recorded one on the socket.
#[test]
#[ignore = "privileged: attaches eBPF programs; run by `cargo xtask test`"]
fn udp_sockets_to_loopback_addresses_get_owners_only_while_loopback_is_watched() {
    use std::net::{SocketAddr, UdpSocket};
    require_root();
    let (ns, _pins, mut ebpf) = udp_owner_rig("udplo", false);
    // A local address that is not a loopback one, on the namespace's own loopback.
    ns.ip(&["addr", "add", "192.0.2.1/32", "dev", "lo"]);
    let has_v6 = ns.run(|| UdpSocket::bind("[::1]:0").is_ok());
    // Each case: the address the socket binds, where it sends, and whether it connects
    // first; every socket binds a port of its own, so no port is read for a record an
    // earlier case left. Every socket's first frame leaves through the namespace's loopback.
    let mut next_port = 41_000u16;
    let mut send = |bind: &'static str, to: &'static str, connect: bool| -> u16 {
        next_port += 1;
        let port = next_port;
        ns.run(move || {
            let bind: std::net::IpAddr = bind.parse().unwrap();
            let s = UdpSocket::bind((bind, port)).expect("bind");
            let to: SocketAddr = to.parse().unwrap();
            if connect {
                s.connect(to).expect("connect");
                s.send(b"x").expect("send");
            } else {
                s.send_to(b"x", to).expect("send_to");
            }
        });
        port
    };
    let me = std::process::id();
    let mut loopback = vec![
        ("connect to 127.0.0.1", "127.0.0.1", "127.0.0.1:9", true),
        ("send to 127.0.0.53", "0.0.0.0", "127.0.0.53:9", false),
    ];
    if has_v6 {
        loopback.push(("connect to ::1", "::", "[::1]:9", true));
        loopback.push(("send to ::1", "::", "[::1]:9", false));
        loopback.push((
            "connect to ::ffff:127.0.0.1",
            "::",
            "[::ffff:127.0.0.1]:9",
            true,
        ));
    } else {
        eprintln!("the namespace has no ::1: the IPv6 cases are not run");
    }
    let other = [
        ("connect to 192.0.2.1", "0.0.0.0", "192.0.2.1:9", true),
        ("send to 192.0.2.1", "0.0.0.0", "192.0.2.1:9", false),
    ];
    // Who owns each case's port after its first frame, in turn: the loopback cases while
    // loopback is not watched, the others then, the loopback cases once it is.
    let phases = [
        ("loopback not watched", &loopback[..], 0),
        ("loopback not watched", &other[..], me),
        ("loopback watched", &loopback[..], me),
    ];
    for (i, (when, cases, owner)) in phases.into_iter().enumerate() {
        if i == 2 {
            netmon::load::set_config(&mut ebpf, netmon_common::config::LOOPBACK_WATCHED, 1)
                .unwrap();
        }
        for &(what, bind, to, connect) in cases {
            let port = send(bind, to, connect);
            assert_eq!(
                udp_port_owner(&ebpf, port).pid,
                owner,
                "{what}, {when}: port {port}'s owner (0: none)"
            );
        }
    }
}

/// The instructions of a loaded program as the verifier left them
/// (BPF_OBJ_GET_INFO_BY_FD with `xlated_prog_insns`): 8 bytes each.
fn translated_insns(fd: std::os::fd::BorrowedFd<'_>, len: u32) -> Vec<[u8; 8]> {
    use std::os::fd::AsRawFd as _;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    let mut insns = vec![[0u8; 8]; len as usize / 8];
    // struct bpf_prog_info up to xlated_prog_insns: type, id, tag[8], jited_prog_len,
    // xlated_prog_len (offset 20), jited_prog_insns, xlated_prog_insns (offset 32).
    let mut info = [0u64; 5];
    info[2] = u64::from(len) << 32;
    info[4] = insns.as_mut_ptr() as u64;
    // union bpf_attr's info: bpf_fd, info_len, info.
    let mut attr = [0u64; 2];
    attr[0] = fd.as_raw_fd() as u32 as u64 | (size_of_val(&info) as u64) << 32;
    attr[1] = info.as_mut_ptr() as u64;
    // SAFETY: attr and info are live, sized as passed; the kernel writes at most `len`
    // bytes of instructions to `insns`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            attr.as_mut_ptr(),
            size_of_val(&attr),
        )
    };
    assert_eq!(
        r,
        0,
        "BPF_OBJ_GET_INFO_BY_FD: {}",
        std::io::Error::last_os_error()
    );
    insns
}

/// The packet programs reach every map through code the verifier specialised for that map:
/// an inlined lookup or a direct call of the map's own function. It falls back to the
/// generic helper (an indirect call through the map's ops, ~15-20 ns with this host's
/// return-stack mitigation) only where one call site sees different maps on different paths,
/// as one lookup of either family's ban counters once did. Nor do they call a function of
/// their own (a BPF-to-BPF call, and its return, which that mitigation makes as dear): LLVM
/// made one of the entry points' bodies such a function once they grew past its inlining
/// threshold. Ground truth: the programs as the kernel runs them, their helper calls
/// resolved through /proc/kallsyms.
#[test]
#[ignore = "privileged: loads eBPF programs; run by `cargo xtask test`"]
fn packet_programs_never_call_the_generic_map_helpers() {
    require_root();
    let symbols = std::fs::read_to_string("/proc/kallsyms").unwrap();
    let address = |name: &str| {
        symbols
            .lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                let (a, _, n) = (f.next()?, f.next()?, f.next()?);
                (n == name).then(|| u64::from_str_radix(a, 16).unwrap())
            })
            .unwrap_or_else(|| panic!("{name} is not in /proc/kallsyms"))
    };
    let base = address("__bpf_call_base");
    assert_ne!(
        base, 0,
        "/proc/kallsyms hides addresses (kernel.kptr_restrict)"
    );
    let generic: Vec<(&str, u64)> = [
        "bpf_map_lookup_elem",
        "bpf_map_update_elem",
        "bpf_map_delete_elem",
    ]
    .map(|n| (n, address(n)))
    .to_vec();
    // Every packet program reads the coarse clock through its helper: calls resolved to it
    // prove that the kernel showed the call targets (it zeroes them for a reader who may
    // not see kernel addresses, and every call would then resolve to nothing).
    let clock = address("bpf_ktime_get_coarse_ns");
    let pins = PinDir::new("generic");
    let mut ebpf = small_maps(&pins, 1024)
        .load(netmon::load::EBPF_OBJECT)
        .expect("load the eBPF object");
    for name in ["netmon_xdp_tab", "netmon_xdp"] {
        let x: &mut Xdp = ebpf.program_mut(name).unwrap().try_into().unwrap();
        x.load()
            .unwrap_or_else(|e| panic!("verifier rejects {name}: {e}"));
    }
    for table in [
        netmon::load::FlowTable::PerCpu,
        netmon::load::FlowTable::Lru,
    ] {
        for ingress in [false, true] {
            netmon::load::load_tc(&mut ebpf, table, ingress)
                .expect("verifier accepts the TC programs");
        }
    }
    let mut checked = 0;
    for (name, prog) in ebpf.programs() {
        let Ok(fd) = prog.fd() else {
            continue; // not loaded: not a packet program
        };
        let len = prog.info().unwrap().size_translated().unwrap();
        let insns = translated_insns(fd.as_fd(), len);
        let mut clock_calls = 0;
        for (i, insn) in insns.iter().enumerate() {
            // BPF_JMP | BPF_CALL with src_reg 1 (BPF_PSEUDO_CALL): a function of the program.
            assert!(
                insn[0] != 0x85 || insn[1] >> 4 != 1,
                "{name}: instruction {i} calls a function of the program (BPF-to-BPF)"
            );
            // BPF_JMP | BPF_CALL with src_reg 0: a kernel function, at __bpf_call_base + imm.
            if insn[0] != 0x85 || insn[1] >> 4 != 0 {
                continue;
            }
            let imm = i32::from_le_bytes(insn[4..8].try_into().unwrap());
            let target = base.wrapping_add_signed(imm.into());
            clock_calls += usize::from(target == clock);
            if let Some((helper, _)) = generic.iter().find(|(_, a)| *a == target) {
                panic!("{name}: instruction {i} calls the generic {helper}");
            }
        }
        assert!(
            clock_calls > 0,
            "{name}: no call resolves to bpf_ktime_get_coarse_ns: call targets hidden, or \
             {len} bytes misread"
        );
        checked += 1;
    }
    assert_eq!(
        checked, 10,
        "XDP, TC egress and TC ingress programs of both flow stores, and their continuations"
    );
}
