//! What we encode, `ovs-ofctl ofp-parse` (OVS's own decoder) reads back as the
//! intended message.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use ovs_flows::ofp::{self, BundleCtrlType, FlowOp, BUNDLE_ATOMIC, BUNDLE_ORDERED};
use ovs_flows::{samples, Category, Cookie, CookieFilter, Flow};

/// How `ofputil_flow_mod_format` prints a flow_mod: command, table, match,
/// cookie, actions.
fn expected(cmd: &str, f: &Flow, show_cookie: bool) -> String {
    let line = f.to_string();
    // Flow's Display is "cookie=.., table=.., <match> actions=..": reuse its
    // match and actions parts.
    let rest = line.split_once(", table=").map_or(line.as_str(), |(_, r)| r);
    let rest = rest.split_once(", ").map_or(rest, |(_, r)| r);
    let rest = rest.strip_prefix(&format!("cookie={:#x}, ", f.cookie.0)).unwrap_or(rest);
    let (m, actions) = rest.rsplit_once("actions=").expect("actions");
    let mut s = cmd.to_string();
    if f.table != 0 {
        s.push_str(&format!(" table:{}", f.table));
    }
    s.push(' ');
    s.push_str(m);
    if show_cookie && f.cookie.0 != 0 {
        s.push_str(&format!("cookie:{:#x} ", f.cookie.0));
    }
    s.push_str("actions=");
    s.push_str(actions);
    s
}

fn ofp_parse(buf: &[u8]) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("ovs-flows-ofp-parse-{}-{seq}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join("msgs.bin");
    std::fs::write(&path, buf).expect("write");
    let out = Command::new("ovs-ofctl").arg("ofp-parse").arg(&path).output().expect("run ovs-ofctl");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "ofp-parse failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn ofp_parse_reads_our_flow_mods_as_the_intended_flows() {
    let flows = samples::every_feature();
    let mut buf = Vec::new();
    let mut want = Vec::new();
    for (i, f) in flows.iter().enumerate() {
        let xid = 100 + i as u32;
        ofp::encode_flow_op(&mut buf, xid, &FlowOp::Add(f.clone())).expect("encode");
        want.push(format!("OFPT_FLOW_MOD (OF1.5) (xid={xid:#x}): {}", expected("ADD", f, true)));
    }
    let out = ofp_parse(&buf);
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got, want);
}

#[test]
fn ofp_parse_reads_a_bundle_and_the_other_requests() {
    let f = samples::every_feature().remove(3);
    let flags = BUNDLE_ATOMIC | BUNDLE_ORDERED;
    let mut buf = Vec::new();
    ofp::encode_hello(&mut buf, 1);
    ofp::encode_features_request(&mut buf, 2);
    ofp::encode_echo(&mut buf, 3, false, b"ping").expect("echo");
    ofp::encode_bundle_control(&mut buf, 4, 9, BundleCtrlType::OpenRequest, flags);
    ofp::encode_bundle_add(&mut buf, 5, 9, flags, &FlowOp::ModifyStrict(f.clone())).expect("add");
    ofp::encode_bundle_add(&mut buf, 6, 9, flags, &FlowOp::DeleteStrict(f.clone())).expect("del");
    ofp::encode_bundle_control(&mut buf, 7, 9, BundleCtrlType::CommitRequest, flags);
    ofp::encode_bundle_control(&mut buf, 8, 10, BundleCtrlType::DiscardRequest, flags);
    let del = FlowOp::DeleteByCookie { filter: CookieFilter::owner(Category::Pod, 7), table: Some(3) };
    ofp::encode_flow_op(&mut buf, 9, &del).expect("del by cookie");
    ofp::encode_barrier(&mut buf, 10);
    // ofp-parse does not print a stats request's cookie; the unit tests check it.
    ofp::encode_flow_stats_request(&mut buf, 11, Some(3), CookieFilter::exact(Cookie(0x42)));
    let out = ofp_parse(&buf);
    let got: Vec<&str> = out.lines().map(str::trim_end).collect();
    let owner = CookieFilter::owner(Category::Pod, 7);
    let want = [
        "OFPT_HELLO (OF1.5) (xid=0x1):".to_string(),
        " version bitmap: 0x04, 0x06".into(),
        "OFPT_FEATURES_REQUEST (OF1.5) (xid=0x2):".into(),
        "OFPT_ECHO_REQUEST (OF1.5) (xid=0x3): 4 bytes of payload".into(),
        "00000000  70 69 6e 67                                     |ping            |".into(),
        "OFPT_BUNDLE_CONTROL (OF1.5) (xid=0x4):".into(),
        " bundle_id=0x9 type=OPEN_REQUEST flags=atomic ordered".into(),
        "OFPT_BUNDLE_ADD_MESSAGE (OF1.5) (xid=0x5):".into(),
        " bundle_id=0x9 flags=atomic ordered".into(),
        format!("OFPT_FLOW_MOD (OF1.5) (xid=0x5): {}", expected("MOD_STRICT", &f, false)),
        "OFPT_BUNDLE_ADD_MESSAGE (OF1.5) (xid=0x6):".into(),
        " bundle_id=0x9 flags=atomic ordered".into(),
        format!(
            "OFPT_FLOW_MOD (OF1.5) (xid=0x6): {}",
            expected("DEL_STRICT", &Flow { cookie: Cookie(0), actions: vec![], ..f.clone() }, false)
        ),
        "OFPT_BUNDLE_CONTROL (OF1.5) (xid=0x7):".into(),
        " bundle_id=0x9 type=COMMIT_REQUEST flags=atomic ordered".into(),
        "OFPT_BUNDLE_CONTROL (OF1.5) (xid=0x8):".into(),
        " bundle_id=0xa type=DISCARD_REQUEST flags=atomic ordered".into(),
        format!(
            "OFPT_FLOW_MOD (OF1.5) (xid=0x9): DEL table:3 cookie:{:#x}/{:#x} actions=drop",
            owner.cookie, owner.mask
        ),
        "OFPT_BARRIER_REQUEST (OF1.5) (xid=0xa):".into(),
        "OFPST_FLOW request (OF1.5) (xid=0xb): table=3".into(),
    ];
    assert_eq!(got, want);
}
