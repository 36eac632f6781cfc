//! The client, codec and reconciler against a real ovs-vswitchd (private OVS
//! in its own namespace, removed on drop).

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result};
use lab::switch::PrivateSwitch;
use ovs_flows::client::{BundleError, Client, ClientOptions, ConnEvent};
use ovs_flows::ofp::FlowOp;
use ovs_flows::reconcile::{self, ReconcileStats};
use ovs_flows::{samples, Action, Category, Cookie, CookieFilter, Flow, FlowSet, Match, Reg};

fn start() -> Result<PrivateSwitch> {
    PrivateSwitch::start("br0").context("private switch")
}

async fn connect(sw: &PrivateSwitch) -> Result<Client> {
    Ok(Client::connect(sw.endpoint().parse().map_err(anyhow::Error::msg)?, ClientOptions::default()).await?)
}

/// A node-like desired set: per-pod classification and delivery flows.
fn desired(round: u16, pods: u32, vni: u32) -> FlowSet {
    let mut s = FlowSet::new();
    s.insert(Flow::new(0, 0, Cookie::new(round, Category::Pipeline, 0), Match::new(), vec![]));
    for p in 1..=pods {
        let ip = Ipv4Addr::new(10, 1, 0, p as u8);
        let c = Cookie::new(round, Category::Pod, p);
        s.insert(Flow::new(
            0,
            100,
            c,
            Match::new().in_port(p + 2).nw_src(ip),
            vec![Action::load_reg(Reg::R0, vni), Action::GotoTable(20)],
        ));
        s.insert(Flow::new(
            40,
            100,
            c,
            Match::new().reg(Reg::R0, vni).nw_dst(ip),
            vec![Action::Output(p + 2)],
        ));
    }
    s
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test]
async fn lab_every_feature_installs_and_reads_back_equal() -> Result<()> {
    lab::needs_root!();
    let sw = start()?;
    let client = connect(&sw).await?;
    assert!(client.features().is_some_and(|f| f.n_tables > 0));
    let want: FlowSet = samples::every_feature().into_iter().collect();
    let ops: Vec<FlowOp> = want.iter().cloned().map(FlowOp::Add).collect();
    client.bundle(&ops).await?;
    // ovs-ofctl prints exactly our Display.
    assert_eq!(sw.dump_flows()?, want.to_strings());
    // Our own read-back decodes to equal flows.
    let back: FlowSet = client.dump_flows(None, CookieFilter::ANY).await?.into_iter().collect();
    assert_eq!(back, want);
    // Filters: one table, one owner.
    let t10 = client.dump_flows(Some(10), CookieFilter::ANY).await?;
    assert_eq!(t10.len(), want.iter().filter(|f| f.table == 10).count());
    let one = client.dump_flows(None, CookieFilter::exact(Cookie::new(1, Category::Test, 4))).await?;
    assert_eq!(one.len(), 1);
    client.delete_by_cookie(CookieFilter::ours(), None).await?;
    assert_eq!(
        sw.dump_flows()?,
        vec![want.iter().find(|f| !f.cookie.is_ours()).map(|f| f.to_string()).unwrap_or_default()]
    );
    client.echo().await?;
    client.barrier().await?;
    Ok(())
}

#[tokio::test]
async fn lab_a_bundle_with_one_bad_flow_changes_nothing_and_names_it() -> Result<()> {
    lab::needs_root!();
    let sw = start()?;
    let client = connect(&sw).await?;
    let before = desired(1, 3, 5);
    reconcile::reconcile(&client, &before).await?;
    let snapshot = sw.dump_flows()?;
    assert_eq!(snapshot, before.to_strings());

    let bad_cases = [
        // goto_table may only go forward
        Flow::new(40, 7, Cookie::new(1, Category::Test, 1), Match::new(), vec![Action::GotoTable(10)]),
        // output beyond the highest valid port number
        Flow::new(
            0,
            7,
            Cookie::new(1, Category::Test, 2),
            Match::new().in_port(1),
            vec![Action::Output(0xff01)],
        ),
    ];
    for bad in bad_cases {
        let mut ops: Vec<FlowOp> = desired(2, 5, 6).into_iter().map(FlowOp::Add).collect();
        ops.insert(3, FlowOp::Add(bad.clone()));
        ops.push(FlowOp::DeleteStrict(before.iter().next().cloned().context("a flow")?));
        let err = client.bundle(&ops).await.expect_err("the bundle must fail");
        let msg = err.to_string();
        match &err {
            BundleError::Rejected { failures, .. } => {
                assert_eq!(failures.len(), 1, "{msg}");
                assert_eq!(failures[0].0, FlowOp::Add(bad.clone()));
            }
            other => panic!("unexpected error {other}"),
        }
        assert!(msg.contains(&bad.to_string()), "{msg}");
        assert_eq!(sw.dump_flows()?, snapshot, "a failed bundle must change nothing");
    }
    // The connection still works afterwards.
    reconcile::reconcile(&client, &desired(2, 5, 6)).await?;
    assert_eq!(sw.dump_flows()?, desired(2, 5, 6).to_strings());
    Ok(())
}

#[tokio::test]
async fn lab_one_reconcile_restores_exactly_the_desired_set_after_tampering() -> Result<()> {
    lab::needs_root!();
    let sw = start()?;
    let client = connect(&sw).await?;
    let want = desired(1, 4, 5);
    let first = reconcile::reconcile(&client, &want).await?;
    assert_eq!(first, ReconcileStats { added: want.len(), modified: 0, deleted: 0 });
    assert_eq!(sw.dump_flows()?, want.to_strings());
    assert!(reconcile::reconcile(&client, &want).await?.is_empty(), "a second reconcile has nothing to do");

    // Tamper: delete one flow, add a stale flow of ours, change one flow's actions,
    // and add a flow of someone else (cookie 0), which must survive.
    sw.ofctl("del-flows", &["--strict", "table=40,priority=100,ip,reg0=0x5,nw_dst=10.1.0.2"])?;
    let stale = Cookie::new(1, Category::Pod, 99);
    sw.ofctl("add-flow", &[&format!("cookie={stale},table=0,priority=100,ip,in_port=99,actions=drop")])?;
    sw.ofctl(
        "mod-flows",
        &["--strict", "table=40,priority=100,ip,reg0=0x5,nw_dst=10.1.0.3,actions=output:77"],
    )?;
    let foreign = "table=50, priority=1 actions=drop";
    sw.ofctl("add-flow", &["table=50,priority=1,actions=drop"])?;

    let stats = reconcile::reconcile(&client, &want).await?;
    assert_eq!(stats, ReconcileStats { added: 1, modified: 1, deleted: 1 });
    let mut expect = want.to_strings();
    expect.push(foreign.to_string());
    assert_eq!(sw.dump_flows()?, sorted(expect));

    // A restarted agent writes round 2: every flow re-added under the new cookie.
    let round2 = desired(2, 4, 5);
    let stats = reconcile::reconcile(&client, &round2).await?;
    assert_eq!(stats, ReconcileStats { added: round2.len(), modified: 0, deleted: 0 });
    let mut expect = round2.to_strings();
    expect.push(foreign.to_string());
    assert_eq!(sw.dump_flows()?, sorted(expect));

    // Incremental: the namespace changes VNI 5 -> 6; one pod goes away.
    let mut next = desired(2, 3, 6);
    next.retain(|f| f.cookie.category() != Some(Category::Pipeline));
    let mut old = round2.clone();
    old.retain(|f| f.cookie.category() != Some(Category::Pipeline));
    let stats = reconcile::apply_delta(&client, &old, &next).await?;
    // table 0: pods 1-3 modified (new reg0 value), pod 4 deleted; table 40 is
    // keyed by reg0: 4 old flows deleted, 3 new ones added.
    assert_eq!(stats, ReconcileStats { added: 3, modified: 3, deleted: 5 });
    let mut expect = desired(2, 3, 6).to_strings();
    expect.push(foreign.to_string());
    assert_eq!(sw.dump_flows()?, sorted(expect));
    Ok(())
}

#[tokio::test]
async fn lab_reconnects_after_the_bridge_comes_back_and_answers_echo() -> Result<()> {
    lab::needs_root!();
    let sw = start()?;
    let opts = ClientOptions { echo_interval: Duration::from_millis(100), ..ClientOptions::default() };
    let client = Client::connect(sw.endpoint().parse().map_err(anyhow::Error::msg)?, opts).await?;
    let mut events = client.events();
    // Idle for many echo intervals: our echo probes are answered, the
    // connection stays up.
    tokio::time::sleep(Duration::from_millis(600)).await;
    client.barrier().await?;
    assert_eq!(client.generation(), 1);

    sw.ovs.vsctl(&["del-br", "br0"])?;
    match tokio::time::timeout(Duration::from_secs(10), events.recv()).await? {
        Ok(ConnEvent::Disconnected { .. }) => {}
        other => panic!("expected a disconnect, got {other:?}"),
    }
    sw.ovs.add_bridge("br0", &["protocols=OpenFlow13,OpenFlow15", "fail_mode=secure"])?;
    match tokio::time::timeout(Duration::from_secs(20), events.recv()).await? {
        Ok(ConnEvent::Connected { generation: 2 }) => {}
        other => panic!("expected reconnect, got {other:?}"),
    }
    let want = desired(1, 2, 5);
    reconcile::reconcile(&client, &want).await?;
    assert_eq!(sw.dump_flows()?, want.to_strings());
    Ok(())
}

#[tokio::test]
async fn lab_connect_waits_for_the_bridge_and_reports_why_it_cannot() -> Result<()> {
    lab::needs_root!();
    let sw = start()?;
    sw.ovs.vsctl(&["del-br", "br0"])?;
    let ep: ovs_flows::client::Endpoint = sw.endpoint().parse().map_err(anyhow::Error::msg)?;

    let short = ClientOptions { connect_timeout: Duration::from_millis(300), ..ClientOptions::default() };
    let err = Client::connect(ep.clone(), short).await.err().context("connect must fail without a bridge")?;
    assert!(err.to_string().contains("br0.mgmt"), "{err}");

    // The bridge appears while connect is retrying: it succeeds.
    let pending = tokio::spawn(Client::connect(ep, ClientOptions::default()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    sw.ovs.add_bridge("br0", &["protocols=OpenFlow13,OpenFlow15", "fail_mode=secure"])?;
    let client = pending.await??;
    assert_eq!(client.generation(), 1);
    client.barrier().await?;
    Ok(())
}

/// The TCP endpoint: the switch listens on loopback inside its namespace;
/// the client runs on a thread that entered that namespace.
#[test]
fn lab_tcp_endpoint_installs_and_reads_back() -> Result<()> {
    lab::needs_root!();
    let sw = start()?;
    sw.ovs.vsctl(&["set-controller", "br0", "ptcp:16653:127.0.0.1"])?;
    let path = format!("/run/netns/{}", sw.netns.name);
    let want = desired(1, 3, 5);
    let expected = want.clone();
    let handle = std::thread::spawn(move || -> Result<Vec<Flow>> {
        let f = std::fs::File::open(&path).with_context(|| format!("open {path}"))?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async {
            let ep = "tcp:127.0.0.1:16653".parse().map_err(anyhow::Error::msg)?;
            let client = Client::connect(ep, ClientOptions::default()).await?;
            reconcile::reconcile(&client, &expected).await?;
            Ok(client.dump_flows(None, CookieFilter::ours()).await?)
        })
    });
    let back: FlowSet =
        handle.join().map_err(|_| anyhow::anyhow!("client thread panicked"))??.into_iter().collect();
    assert_eq!(back, want);
    assert_eq!(sw.dump_flows()?, want.to_strings());
    Ok(())
}

/// A flow that decodes fine but fails when the bundle commits (table 0 is
/// full): the switch rolls back and the error still names that flow.
#[tokio::test]
async fn lab_a_commit_time_failure_rolls_back_and_names_the_flow() -> Result<()> {
    lab::needs_root!();
    let sw = start()?;
    sw.ovs.vsctl(&[
        "--",
        "--id=@ft",
        "create",
        "Flow_Table",
        "flow_limit=3",
        "overflow_policy=refuse",
        "--",
        "set",
        "Bridge",
        "br0",
        "flow_tables:0=@ft",
    ])?;
    let client = connect(&sw).await?;
    let flow = |p: u32| {
        Flow::new(0, 100, Cookie::new(1, Category::Pod, p), Match::new().in_port(p), vec![Action::Output(1)])
    };
    client.bundle(&[FlowOp::Add(flow(1)), FlowOp::Add(flow(2))]).await?;
    let before = sw.dump_flows()?;
    let ops: Vec<FlowOp> = (3..=5).map(|p| FlowOp::Add(flow(p))).collect();
    let err = client.bundle(&ops).await.expect_err("the table holds 3 flows");
    match &err {
        BundleError::Rejected { failures, .. } => {
            assert_eq!(failures.len(), 1, "{err}");
            assert_eq!(failures[0].0, FlowOp::Add(flow(4)), "{err}");
            assert!(err.to_string().contains("TABLE_FULL"), "{err}");
        }
        other => panic!("unexpected error {other}"),
    }
    assert_eq!(sw.dump_flows()?, before, "nothing of the failed bundle stays");
    Ok(())
}

/// Meters (the egress policer for pods on the userspace datapath): added,
/// referenced by a flow, read back, changed and deleted; the switch's own
/// refusals (a meter that exists, a flow naming a missing meter) come back
/// as errors.
#[tokio::test]
async fn lab_meters_install_read_back_and_police_flows() -> Result<()> {
    lab::needs_root!();
    use ovs_flows::ofp::{Meter, MeterCommand};
    let sw = start()?;
    let client = connect(&sw).await?;
    let m = Meter { id: 7, kbps: 5_000, burst_kbits: 1_000 };
    client.meter_mod(MeterCommand::Add, &m).await?;
    assert!(client.meter_mod(MeterCommand::Add, &m).await.is_err(), "adding an existing meter must fail");
    assert_eq!(client.meters().await?, vec![m]);
    let f = Flow::new(
        0,
        100,
        Cookie::new(1, Category::Test, 1),
        Match::new().in_port(1),
        vec![Action::Meter(7), Action::Output(2)],
    );
    client.bundle(&[FlowOp::Add(f.clone())]).await?;
    assert_eq!(sw.dump_flows()?, vec![f.to_string()]);
    let back = client.dump_flows(None, CookieFilter::ANY).await?;
    assert_eq!(back, vec![f]);
    let missing = Flow::new(
        0,
        90,
        Cookie::new(1, Category::Test, 2),
        Match::new().in_port(2),
        vec![Action::Meter(8), Action::Output(1)],
    );
    assert!(
        client.bundle(&[FlowOp::Add(missing)]).await.is_err(),
        "a flow naming a missing meter must be refused"
    );
    let faster = Meter { kbps: 10_000, ..m };
    client.meter_mod(MeterCommand::Modify, &faster).await?;
    assert_eq!(client.meters().await?, vec![faster]);
    client.delete_by_cookie(CookieFilter::ANY, None).await?;
    client.meter_mod(MeterCommand::Delete, &faster).await?;
    assert!(client.meters().await?.is_empty());
    Ok(())
}

/// The counters the client decodes from a flow stats reply (OXS fields) are
/// the switch's own: a flow that saw a known number of packets reads back
/// with exactly the `n_packets` / `n_bytes` that `ovs-ofctl dump-flows`
/// prints, and a flow replaced by an ADD starts again from zero. The raw
/// reply is also decoded straight off the socket (the bytes of
/// `tests/golden/flow_stats_reply.bytes`; `CAPTURE_FLOW_STATS=1` prints them).
#[tokio::test]
async fn lab_flow_stats_count_what_the_switch_counts() -> Result<()> {
    lab::needs_root!();
    let sw = start()?;
    let client = connect(&sw).await?;
    let cookie = Cookie(0x1024b00000003);
    let counted = Flow::new(20, 100, cookie, Match::new().in_port(3), vec![Action::GotoTable(25)]);
    let other =
        Flow::new(0, 0, Cookie::new(1, Category::Pipeline, 0), Match::new(), vec![Action::GotoTable(20)]);
    client.bundle(&[FlowOp::Add(counted.clone()), FlowOp::Add(other.clone())]).await?;
    // 3 frames of 98 bytes, through the tables from port 3 (packet-out
    // with actions=table runs them as if the frame arrived there).
    let frame = format!("{}{}", "0a580a0000020a580a0000010800", "45".to_string() + &"00".repeat(83));
    assert_eq!(frame.len(), 2 * 98);
    for _ in 0..3 {
        sw.ofctl("packet-out", &[&format!("in_port=3 packet={frame} actions=table")])?;
    }
    let read = || async {
        let got = client.flow_stats(Some(20), CookieFilter::exact(cookie)).await?;
        anyhow::Ok(got.into_iter().next().context("the counted flow")?)
    };
    let c = read().await?;
    assert_eq!(c.flow, counted);
    assert_eq!((c.stats.packets, c.stats.bytes), (Some(3), Some(294)), "{:?}", c.stats);
    assert!(c.stats.duration.is_some_and(|d| d < Duration::from_secs(60)));
    // ovs-ofctl's own reading of the same counters.
    let text = sw.ofctl("dump-flows", &["table=20"])?;
    assert!(text.contains("n_packets=3,") && text.contains("n_bytes=294,"), "{text}");
    // The raw reply off the socket decodes the same.
    let raw = raw_flow_stats_reply(&sw, 20).await?;
    if std::env::var_os("CAPTURE_FLOW_STATS").is_some() {
        let hex: Vec<String> = raw.iter().map(|b| format!("{b:#04x}")).collect();
        eprintln!("vec![{}]", hex.join(", "));
    }
    let ovs_flows::ofp::Message::FlowStatsReply { flows, .. } = ovs_flows::ofp::decode(&raw)?.msg else {
        anyhow::bail!("not a flow stats reply");
    };
    assert_eq!(flows.len(), 1);
    assert_eq!((flows[0].stats.packets, flows[0].stats.bytes), (Some(3), Some(294)));
    // Modified in place the counters stay; replaced by an ADD they restart.
    let mut changed = counted.clone();
    changed.actions = vec![Action::GotoTable(30)];
    client.bundle(&[FlowOp::ModifyStrict(changed.clone())]).await?;
    assert_eq!(read().await?.stats.packets, Some(3));
    client.bundle(&[FlowOp::DeleteStrict(changed.clone()), FlowOp::Add(changed)]).await?;
    assert_eq!(read().await?.stats.packets, Some(0));
    Ok(())
}

/// One OFPMP_FLOW_DESC request of `table` over a fresh connection, and the
/// reply's bytes as the switch sent them.
async fn raw_flow_stats_reply(sw: &PrivateSwitch, table: u8) -> Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(sw.ovs.mgmt_sock(&sw.bridge)).await?;
    let mut out = Vec::new();
    ovs_flows::ofp::encode_hello(&mut out, 1);
    ovs_flows::ofp::encode_flow_stats_request(&mut out, 77, Some(table), CookieFilter::ANY);
    s.write_all(&out).await?;
    let mut buf = Vec::new();
    loop {
        while let Some(n) = ovs_flows::ofp::frame_len(&buf)? {
            let frame: Vec<u8> = buf.drain(..n).collect();
            if frame[1] == 19 && frame[4..8] == 77u32.to_be_bytes() {
                return Ok(frame);
            }
        }
        let mut chunk = [0u8; 4096];
        let k = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await??;
        anyhow::ensure!(k > 0, "switch closed the connection");
        buf.extend_from_slice(&chunk[..k]);
    }
}
