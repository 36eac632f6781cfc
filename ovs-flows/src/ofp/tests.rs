use super::*;
use crate::cookie::{Category, Cookie};
use crate::samples;

fn one(op: &FlowOp, xid: u32) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_flow_op(&mut buf, xid, op).expect("encode");
    buf
}

#[test]
fn flow_ops_round_trip_through_the_decoder() {
    for (i, f) in samples::every_feature().into_iter().enumerate() {
        let ops = [
            FlowOp::Add(f.clone()),
            FlowOp::ModifyStrict(f.clone()),
            FlowOp::DeleteStrict(Flow { cookie: Cookie(0), actions: vec![], ..f.clone() }),
        ];
        for op in ops {
            let buf = one(&op, i as u32);
            assert_eq!(frame_len(&buf), Ok(Some(buf.len())));
            assert_eq!(buf.len() % 8, 0, "flow_mods are 8-byte aligned for bundle_add");
            let frame = decode(&buf).expect("decode");
            let Message::FlowMod(fm) = frame.msg else { panic!("not a flow mod: {frame:?}") };
            assert_eq!(fm.to_op(), Some(op.clone()), "{op}");
        }
    }
    let del = FlowOp::DeleteByCookie { filter: CookieFilter::owner(Category::Pod, 7), table: None };
    let Message::FlowMod(fm) = decode(&one(&del, 9)).expect("decode").msg else { panic!("not a flow mod") };
    assert_eq!(fm.to_op(), Some(del));
    assert_eq!(fm.table, OFPTT_ALL);
}

#[test]
fn bundle_messages_round_trip() {
    let f = samples::every_feature().remove(3);
    let mut buf = Vec::new();
    encode_bundle_control(&mut buf, 1, 7, BundleCtrlType::OpenRequest, BUNDLE_ATOMIC | BUNDLE_ORDERED);
    encode_bundle_add(&mut buf, 2, 7, BUNDLE_ATOMIC | BUNDLE_ORDERED, &FlowOp::Add(f.clone()))
        .expect("encode");
    let n = frame_len(&buf).expect("len").expect("complete");
    let open = decode(&buf[..n]).expect("open");
    assert_eq!(
        open.msg,
        Message::BundleControl {
            bundle_id: 7,
            kind: BundleCtrlType::OpenRequest,
            flags: BUNDLE_ATOMIC | BUNDLE_ORDERED
        }
    );
    let add = decode(&buf[n..]).expect("add");
    let Message::BundleAdd { bundle_id: 7, inner, .. } = add.msg else { panic!("{add:?}") };
    assert_eq!(inner.xid, 2);
    let Message::FlowMod(fm) = inner.msg else { panic!("inner") };
    assert_eq!(fm.to_op(), Some(FlowOp::Add(f)));
}

#[test]
fn flow_stats_request_round_trips() {
    let mut buf = Vec::new();
    encode_flow_stats_request(&mut buf, 5, Some(3), CookieFilter::round(9));
    let msg = decode(&buf).expect("decode").msg;
    assert_eq!(msg, Message::FlowStatsRequest { table: 3, cookie: CookieFilter::round(9), m: Match::new() });
}

#[test]
fn hello_negotiates_the_highest_common_version() {
    let mut buf = Vec::new();
    encode_hello(&mut buf, 1);
    let Message::Hello { version_bitmap } = decode(&buf).expect("hello").msg else { panic!() };
    assert_eq!(version_bitmap, Some(0x50));
    assert_eq!(negotiate(6, version_bitmap), Some(6));
    assert_eq!(negotiate(6, Some(0x12)), Some(4)); // 1.0 + 1.3
    assert_eq!(negotiate(6, Some(0x02)), None); // 1.0 only
    assert_eq!(negotiate(4, None), Some(4));
    assert_eq!(negotiate(5, None), None); // 1.4 is not one of ours
}

#[test]
fn errors_read_as_names() {
    let e = OfpError { err_type: 2, code: 4, experimenter: None, data: vec![] };
    assert_eq!(e.to_string(), "BAD_ACTION/BAD_OUT_PORT (type 2, code 4)");
    let e = OfpError { err_type: 17, code: 13, experimenter: None, data: vec![] };
    assert_eq!(e.to_string(), "BUNDLE_FAILED/MSG_FAILED (type 17, code 13)");
    assert_eq!(error_code_name(3, 2), "BAD_TABLE_ID");
    assert_eq!(error_code_name(99, 2), "UNKNOWN_CODE");
}

#[test]
fn nicira_reg_load_decodes_to_set_field() {
    let dst = crate::flow::Field::Reg(crate::flow::Reg::R3).bits(4, 11).expect("range");
    let mut acts = Vec::new();
    action::encode_reg_load(&mut acts, dst, 0x5a);
    let mut ins = Vec::new();
    put_u16(&mut ins, 4);
    put_u16(&mut ins, (8 + acts.len()) as u16);
    put_u32(&mut ins, 0);
    ins.extend_from_slice(&acts);
    let mut r = Reader::new(&ins, "test");
    assert_eq!(action::decode_instructions(&mut r), Ok(vec![Action::SetField { dst, value: 0x5a }]));
}

/// xorshift64*: a tiny deterministic PRNG (no dependency for a fuzz loop).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn valid_messages() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for (i, f) in samples::every_feature().into_iter().enumerate() {
        out.push(one(&FlowOp::Add(f.clone()), i as u32));
        let mut b = Vec::new();
        encode_bundle_add(&mut b, 1, 1, 3, &FlowOp::ModifyStrict(f)).expect("encode");
        out.push(b);
    }
    let mut b = Vec::new();
    encode_hello(&mut b, 1);
    out.push(b);
    let mut b = Vec::new();
    encode_flow_stats_request(&mut b, 1, Some(3), CookieFilter::ours());
    out.push(b);
    // A flow stats reply built by hand from the sample flows' match + instructions.
    let mut body = Vec::new();
    for f in samples::every_feature() {
        let start = body.len();
        put_u16(&mut body, 0);
        put_u16(&mut body, 0);
        body.push(f.table);
        body.push(0);
        put_u16(&mut body, f.priority);
        body.extend_from_slice(&[0; 8]);
        put_u64(&mut body, f.cookie.0);
        oxm::encode_match(&mut body, &f.m).expect("match");
        // ofp_stats as OVS sends it: duration, idle time, packets, bytes
        // (the figures: the sample's index).
        let n = body.len() - start;
        put_u16(&mut body, 0);
        put_u16(&mut body, 4 + 4 * 12);
        for (field, value) in
            [(0u32, (7u64 << 32) | 5_000), (1, 3 << 32), (4, n as u64), (5, 1000 + n as u64)]
        {
            put_u32(&mut body, (0x8002 << 16) | (field << 9) | 8);
            put_u64(&mut body, value);
        }
        body.extend_from_slice(&[0; 4]);
        action::encode_instructions(&mut body, &f.actions).expect("instructions");
        let len = (body.len() - start) as u16;
        wire::patch_u16(&mut body, start, len);
    }
    let mut b = vec![OFP_VERSION_1_5, msg_type::MULTIPART_REPLY, 0, 0, 0, 0, 0, 9];
    put_u16(&mut b, OFPMP_FLOW_DESC);
    put_u16(&mut b, 0);
    put_u32(&mut b, 0);
    b.extend_from_slice(&body);
    let len = b.len() as u16;
    wire::patch_u16(&mut b, 2, len);
    out.push(b);
    out
}

#[test]
fn a_hand_built_flow_stats_reply_decodes_to_the_flows() {
    let reply = valid_messages().pop().expect("reply");
    let Message::FlowStatsReply { more: false, flows } = decode(&reply).expect("decode").msg else {
        panic!()
    };
    let plain: Vec<Flow> = flows.iter().map(|c| c.flow.clone()).collect();
    assert_eq!(plain, samples::every_feature());
    for c in &flows {
        let p = c.stats.packets.expect("packets");
        assert_eq!(c.stats.bytes, Some(1000 + p));
        assert_eq!(c.stats.duration, Some(std::time::Duration::new(7, 5_000)));
    }
}

/// A flow stats reply part captured from ovs-vswitchd 3.1 (Debian 12;
/// `lab_flow_stats_count_what_the_switch_counts` checks the same against a
/// running one): `table=20, priority=100, cookie=0x1024b00000003,
/// in_port=3 actions=goto_table:25` after 3 packets of 98 bytes, with the
/// OXS fields duration, idle time, packet count, byte count.
#[test]
fn a_flow_stats_reply_of_ovs_decodes_with_its_counters() {
    let reply = captured_ovs_reply();
    let Message::FlowStatsReply { more: false, flows } = decode(&reply).expect("decode").msg else {
        panic!("not a flow stats reply")
    };
    assert_eq!(flows.len(), 1);
    let c = &flows[0];
    assert_eq!(
        c.flow.to_string(),
        "cookie=0x1024b00000003, table=20, priority=100,in_port=3 actions=goto_table:25"
    );
    assert_eq!(c.stats.packets, Some(3));
    assert_eq!(c.stats.bytes, Some(294));
    assert!(c.stats.duration.is_some_and(|d| d.as_secs() < 3600), "{:?}", c.stats);
}

fn captured_ovs_reply() -> Vec<u8> {
    include!("../../tests/golden/flow_stats_reply.bytes")
}

#[test]
fn unknown_counts_and_foreign_oxs_fields_are_none_or_skipped() {
    let mut f = Reader::new(&[], "x");
    assert_eq!(decode_oxs_stats(&mut f).expect("empty"), FlowStats::default());
    let mut b = Vec::new();
    put_u32(&mut b, (0x8002 << 16) | (4 << 9) | 8);
    put_u64(&mut b, u64::MAX);
    put_u32(&mut b, (0xffff << 16) | (5 << 9) | 4);
    put_u32(&mut b, 77);
    put_u32(&mut b, (0x8002 << 16) | (5 << 9) | 8);
    put_u64(&mut b, 42);
    let s = decode_oxs_stats(&mut Reader::new(&b, "x")).expect("decode");
    assert_eq!(s, FlowStats { packets: None, bytes: Some(42), duration: None });
    // A counter of the wrong length is malformed, not misread.
    let mut b = Vec::new();
    put_u32(&mut b, (0x8002 << 16) | (4 << 9) | 4);
    put_u32(&mut b, 1);
    assert!(decode_oxs_stats(&mut Reader::new(&b, "x")).is_err());
}

#[test]
fn malformed_input_is_an_error_never_a_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let valid = valid_messages();
    let mut errors = 0usize;
    for round in 0..20_000 {
        let mut m = valid[round % valid.len()].clone();
        match rng.below(4) {
            // truncate, then fix the header length so the body parser sees it
            0 => {
                let n = rng.below(m.len() + 1);
                m.truncate(n);
                if m.len() >= 4 {
                    let l = m.len() as u16;
                    m[2..4].copy_from_slice(&l.to_be_bytes());
                }
            }
            // flip bytes
            1 => {
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(m.len());
                    m[i] = rng.next() as u8;
                }
            }
            // random garbage with a plausible header
            2 => {
                let n = 8 + rng.below(200);
                m = (0..n).map(|_| rng.next() as u8).collect();
                m[0] = OFP_VERSION_1_5;
                m[1] = [1, 6, 14, 19, 33, 34, 0][rng.below(7)];
                m[2..4].copy_from_slice(&(n as u16).to_be_bytes());
            }
            // corrupt a length field somewhere inside
            _ => {
                if m.len() > 12 {
                    let i = 8 + rng.below(m.len() - 9);
                    m[i] = [0, 1, 3, 0xff, 0x80][rng.below(5)];
                }
            }
        }
        match frame_len(&m) {
            Ok(Some(n)) => {
                if decode(&m[..n]).is_err() {
                    errors += 1;
                }
            }
            Ok(None) => {}
            Err(_) => errors += 1,
        }
    }
    // The mutations must actually reach the error paths, not just pass through.
    assert!(errors > 1000, "only {errors} inputs were rejected");
}
