//! Representative flows covering every match field and action the model and
//! codec support, for codec round-trip tests, switch tests and benchmarks.

use std::net::Ipv4Addr;

use crate::cookie::{Category, Cookie};
use crate::flow::{ct_state, port, Action, Field, Flow, Ipv4Prefix, Mac, Match, Reg, IP_PROTO_ICMP};

fn range(f: Field, a: u16, b: u16) -> crate::flow::FieldRange {
    // The constants below are in range; fall back to the whole field rather
    // than panicking if one is ever edited wrongly.
    f.bits(a, b).unwrap_or_else(|| f.all())
}

/// Flows valid on a bridge with ports 1 and 2, in tables 0..=40.
pub fn every_feature() -> Vec<Flow> {
    let ip = Ipv4Addr::new;
    let mac = |b: u8| Mac([0x0a, 0x58, 0x0a, 0x01, 0x00, b]);
    let c = |o: u32| Cookie::new(1, Category::Test, o);
    vec![
        Flow::new(
            0,
            100,
            c(1),
            Match::new().in_port(1).nw_src(Ipv4Prefix::new(ip(10, 1, 0, 0), 16)),
            vec![Action::GotoTable(10)],
        ),
        Flow::new(
            0,
            200,
            c(2),
            Match::new().in_port(2).arp_spa(ip(10, 1, 2, 3)).arp_sha(mac(3)).arp_op(1),
            vec![Action::load_reg(Reg::R0, 7), Action::GotoTable(20)],
        ),
        Flow::new(
            0,
            150,
            c(3),
            Match::new().in_port(1).tun_id(5).tun_src(ip(172, 30, 0, 12)),
            vec![
                Action::Move { src: range(Field::TunId, 0, 31), dst: Field::Reg(Reg::R0).all() },
                Action::Resubmit(30),
            ],
        ),
        Flow::new(
            10,
            100,
            c(4),
            Match::new().reg(Reg::R0, 5).nw_dst(Ipv4Prefix::new(ip(10, 1, 2, 0), 24)),
            vec![
                Action::set_tun_dst(ip(172, 30, 0, 12)),
                Action::Move { src: Field::Reg(Reg::R0).all(), dst: range(Field::TunId, 0, 31) },
                Action::Output(1),
            ],
        ),
        Flow::new(
            10,
            90,
            c(5),
            Match::new().tcp().nw_dst(ip(172, 16, 0, 1)).tp_dst(80).reg_masked(Reg::R0, 0, 0xff),
            vec![Action::OutputReg(Field::Reg(Reg::R2).all())],
        ),
        Flow::new(
            10,
            80,
            c(6),
            Match::new().udp().nw_dst(ip(172, 16, 0, 2)).tp_dst(53),
            vec![
                Action::set_eth_dst(mac(0xff)),
                Action::set_eth_src(mac(1)),
                Action::DecTtl,
                Action::Output(2),
            ],
        ),
        Flow::new(
            10,
            70,
            c(7),
            Match::new().arp_op(1).arp_tpa(Ipv4Prefix::new(ip(10, 1, 0, 0), 16)),
            vec![Action::InPort],
        ),
        Flow::new(10, 60, c(8), Match::new().dl_src(mac(1)).dl_dst(Mac::BROADCAST), vec![]),
        Flow::new(
            10,
            50,
            c(9),
            Match::new().ip().reg(Reg::R3, 0x10).reg_masked(Reg::R7, 7, 0xf).tun_dst(ip(1, 2, 3, 4)),
            vec![Action::set_tun_id(5), Action::load_reg(Reg::R1, 6), Action::Output(2)],
        ),
        Flow::new(
            10,
            40,
            c(10),
            Match::new(),
            vec![
                Action::SetField { dst: range(Field::TunId, 0, 31), value: 5 },
                Action::SetField { dst: range(Field::Reg(Reg::R4), 8, 15), value: 0xab },
                Action::Resubmit(40),
            ],
        ),
        Flow::new(
            10,
            30,
            c(11),
            Match::new().nw_dst(Ipv4Prefix::new(ip(10, 0, 0, 0), 8)).nw_src(ip(10, 2, 3, 4)),
            vec![
                Action::Move {
                    src: range(Field::Reg(Reg::R0), 0, 15),
                    dst: range(Field::Reg(Reg::R1), 16, 31),
                },
                Action::GotoTable(20),
            ],
        ),
        Flow::new(
            20,
            5,
            c(12),
            Match::new().ip_proto(IP_PROTO_ICMP).tun_id_masked(5, 0xff).in_port(2).reg(Reg::R0, 0),
            vec![Action::Output(port::LOCAL)],
        ),
        Flow::new(20, 0, c(13), Match::new(), vec![Action::Output(port::NORMAL)]),
        Flow::new(30, crate::flow::DEFAULT_PRIORITY, c(14), Match::new().ip_proto(47), vec![]),
        Flow::new(
            40,
            1,
            Cookie(0x1234),
            Match::new().udp().tp_dst(4789),
            vec![
                Action::Move { src: Field::TunSrc.all(), dst: Field::Reg(Reg::R5).all() },
                Action::Move { src: range(Field::Reg(Reg::R1), 5, 5), dst: range(Field::Reg(Reg::R2), 3, 3) },
                Action::OutputReg(range(Field::Reg(Reg::R3), 0, 15)),
            ],
        ),
        // Connection tracking: commit with a mark, look up and recirculate,
        // match the state and the mark.
        Flow::new(
            20,
            61,
            c(15),
            Match::new().ip().in_port(2),
            vec![Action::ct_commit(64000, 1), Action::GotoTable(30)],
        ),
        Flow::new(
            20,
            60,
            c(16),
            Match::new().ip().ct_state(0, ct_state::TRK),
            vec![Action::ct_lookup(64000, 30)],
        ),
        Flow::new(
            30,
            100,
            c(17),
            Match::new()
                .ip()
                .ct_state(ct_state::TRK | ct_state::EST | ct_state::RPL, ct_state::NEW)
                .ct_mark(1, 1),
            vec![Action::set_eth_dst(mac(2)), Action::Output(2)],
        ),
        // Conjunctive match (NetworkPolicy): clauses over sources, ports
        // (a masked port range, SCTP) and the flow that completes it.
        Flow::new(
            30,
            90,
            c(18),
            Match::new().nw_src(ip(10, 2, 0, 5)),
            vec![
                Action::Conjunction { id: 7, clause: 1, n_clauses: 2 },
                Action::Conjunction { id: 0x1_0002, clause: 1, n_clauses: 3 },
            ],
        ),
        Flow::new(
            30,
            90,
            c(19),
            Match::new().tcp().tp_dst_masked(0x1f40, 0xffc0),
            vec![Action::Conjunction { id: 7, clause: 2, n_clauses: 2 }],
        ),
        Flow::new(
            30,
            90,
            c(20),
            Match::new().sctp().tp_dst(9999),
            vec![Action::Conjunction { id: 0x1_0002, clause: 3, n_clauses: 3 }],
        ),
        Flow::new(30, 90, c(21), Match::new().ip().conj_id(7), vec![Action::GotoTable(40)]),
    ]
}

/// A deterministic xorshift sequence for randomized tests: each call, a
/// number below its argument (the same seed, the same sequence).
pub fn random_below(mut seed: u64) -> impl FnMut(u64) -> u64 {
    move |n| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    }
}

/// A multi-tenant node (`192.0.2.11`, subnet `172.11.0.0/22` of the cluster
/// `172.11.0.0/16`, services `10.96.0.0/12`) with a pod at each
/// `(ofport, namespace)`, the namespaces' `vnis`, and its namespace ids
/// assigned: for tests of what the pipeline's flows mean.
pub fn tenant_node(pods: &[(u32, &str)], vnis: &[(&str, u32)]) -> crate::pipeline::NodeState {
    use crate::pipeline::{LocalPod, Mode, NodeState};
    let mut s = NodeState::new(
        Mode::MultiTenant,
        Ipv4Addr::new(192, 0, 2, 11),
        Ipv4Prefix::new(Ipv4Addr::new(172, 11, 0, 0), 22),
        Ipv4Prefix::new(Ipv4Addr::new(172, 11, 0, 0), 16),
        Ipv4Prefix::new(Ipv4Addr::new(10, 96, 0, 0), 12),
    );
    for &(ofport, namespace) in pods {
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 11, 0, 0)) + ofport);
        let pod = LocalPod {
            ofport,
            ip,
            mac: Mac::for_ipv4(ip),
            namespace: namespace.into(),
            name: format!("pod{ofport}"),
            egress_meter: None,
        };
        s.pods.insert(ofport, pod);
    }
    s.vnis = vnis.iter().map(|(ns, v)| (ns.to_string(), *v)).collect();
    s.assign_namespace_ids();
    s
}
