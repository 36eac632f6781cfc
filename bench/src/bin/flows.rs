//! Flow-programming benchmark against a real ovs-vswitchd (a private OVS
//! started the way the lab does).
//!
//! For N flows (`table=0,priority=100,ip,nw_dst=10.x.y.z,actions=output:1`)
//! it times, in the same run and in rotating order:
//! - (a) our client: one bundle (`Client::bundle`), encoding included;
//! - (b) `ovs-ofctl -O OpenFlow15 --bundle add-flows` from a file;
//! - raw: pre-encoded bundle bytes written to the socket, the switch's own
//!   limit (what (a) is compared with);
//! - (c) one `ovs-ofctl add-flow` process per flow (K8S-OVS's way), capped;
//! - delete by cookie: our client vs `ovs-ofctl del-flows cookie=C/-1`;
//! - the delta of "a namespace with 200 pods changes VNI" by (a), (b), (c).
//!
//! Medians of `--runs` runs; ratios come from the same run. Results as JSON.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bench::loadavg;
use clap::Parser;
use lab::switch::PrivateSwitch;
use ovs_flows::client::{Client, ClientOptions};
use ovs_flows::ofp::{self, BundleCtrlType, FlowOp, Message, BUNDLE_ATOMIC, BUNDLE_ORDERED};
use ovs_flows::reconcile;
use ovs_flows::{Action, Category, Cookie, CookieFilter, Field, Flow, FlowSet, Ipv4Prefix, Mac, Match, Reg};
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(about = "Times flow programming: our OpenFlow client vs ovs-ofctl")]
struct Args {
    /// Shorter run: 3 runs, N = 1,000 and 10,000, per-process cap 100.
    #[arg(long)]
    quick: bool,
    /// Runs per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Flow counts.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000")]
    sizes: Vec<usize>,
    /// At most this many `ovs-ofctl add-flow` processes per run.
    #[arg(long, default_value_t = 1000)]
    per_process_cap: usize,
    /// Pods in the namespace whose VNI changes.
    #[arg(long, default_value_t = 200)]
    pods: u32,
    /// Where to write the JSON results.
    #[arg(long, default_value = "bench/results/flows.json")]
    out: PathBuf,
}

const COOKIE: Cookie = Cookie(0x0001_fe4b_0000_0001);

fn bench_flow(i: usize) -> Flow {
    let ip = Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8);
    Flow::new(0, 100, COOKIE, Match::new().nw_dst(ip), vec![Action::Output(1)])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn stats(v: &[f64]) -> Value {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    json!({ "median_ms": median(v), "min_ms": min, "max_ms": max, "runs_ms": v })
}

/// Runs ovs-ofctl (from this namespace: the socket is a plain path) and
/// returns its wall time.
fn ofctl(target: &str, args: &[&str]) -> Result<Duration> {
    // ovs-ofctl [options] <command> <switch> [args]: the switch goes after
    // the first argument that is not an option.
    let cmd_at = args.iter().position(|a| !a.starts_with("--")).unwrap_or(args.len());
    let (head, tail) = args.split_at((cmd_at + 1).min(args.len()));
    let t0 = Instant::now();
    let out = Command::new("ovs-ofctl")
        .args(["-O", "OpenFlow15"])
        .args(head)
        .arg(target)
        .args(tail)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("run ovs-ofctl")?;
    let dt = t0.elapsed();
    if !out.status.success() {
        bail!("ovs-ofctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(dt)
}

/// The switch's own limit: connect + HELLO untimed, then the pre-encoded
/// bundle written while replies are read; time until the commit reply.
fn raw_bundle(mgmt: &Path, flows: &[Flow]) -> Result<Duration> {
    let flags = BUNDLE_ATOMIC | BUNDLE_ORDERED;
    let mut buf = Vec::with_capacity(flows.len() * 112 + 32);
    ofp::encode_bundle_control(&mut buf, 1, 1, BundleCtrlType::OpenRequest, flags);
    for (i, f) in flows.iter().enumerate() {
        ofp::encode_bundle_add(&mut buf, 2 + i as u32, 1, flags, &FlowOp::Add(f.clone()))?;
    }
    let commit_xid = 2 + flows.len() as u32;
    ofp::encode_bundle_control(&mut buf, commit_xid, 1, BundleCtrlType::CommitRequest, flags);

    let mut s = UnixStream::connect(mgmt).with_context(|| format!("connect {}", mgmt.display()))?;
    let mut hello = Vec::new();
    ofp::encode_hello(&mut hello, 0);
    s.write_all(&hello)?;
    let mut rbuf = Vec::new();
    read_until(&mut s, &mut rbuf, |m| matches!(m, Message::Hello { .. }), 0, true)?;
    let mut w = s.try_clone()?;
    let t0 = Instant::now();
    let writer = std::thread::spawn(move || w.write_all(&buf));
    read_until(
        &mut s,
        &mut rbuf,
        |m| matches!(m, Message::BundleControl { kind: BundleCtrlType::CommitReply, .. }),
        commit_xid,
        false,
    )?;
    let dt = t0.elapsed();
    writer.join().map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
    Ok(dt)
}

fn read_until(
    s: &mut UnixStream,
    buf: &mut Vec<u8>,
    done: impl Fn(&Message) -> bool,
    xid: u32,
    any_xid: bool,
) -> Result<()> {
    let mut chunk = vec![0u8; 65536];
    loop {
        while let Some(n) = ofp::frame_len(buf)? {
            let frame = ofp::decode(&buf[..n])?;
            buf.drain(..n);
            if let Message::Error(e) = &frame.msg {
                bail!("switch error for xid {}: {e}", frame.xid);
            }
            if done(&frame.msg) && (any_xid || frame.xid == xid) {
                return Ok(());
            }
        }
        let k = s.read(&mut chunk)?;
        if k == 0 {
            bail!("switch closed the connection");
        }
        buf.extend_from_slice(&chunk[..k]);
    }
}

async fn count(client: &Client) -> Result<usize> {
    Ok(client.dump_flows(None, CookieFilter::ANY).await?.len())
}

fn flow_file(dir: &Path, name: &str, lines: impl Iterator<Item = String>) -> Result<PathBuf> {
    let p = dir.join(name);
    let mut text = String::new();
    for l in lines {
        text.push_str(&l);
        text.push('\n');
    }
    std::fs::write(&p, text).with_context(|| format!("write {}", p.display()))?;
    Ok(p)
}

/// `table=.., priority=..,<match>` without cookie or actions, for deletes.
fn key_text(f: &Flow) -> String {
    let s = Flow { cookie: Cookie(0), actions: vec![], ..f.clone() }.to_string();
    s.strip_suffix("actions=drop").unwrap_or(&s).trim_end().trim_end_matches(',').to_string()
}

/// A node's per-pod flows for `pods` pods of one namespace with `vni`, plus
/// the same for `others` pods of another namespace (which do not change).
fn namespace_flows(pods: u32, vni: u32, others: u32) -> FlowSet {
    let mut s = FlowSet::new();
    let pod = |s: &mut FlowSet, idx: u32, vni: u32| {
        let port = 10 + idx;
        let ip = Ipv4Addr::new(10, 1, (idx / 250) as u8, (idx % 250 + 2) as u8);
        let b = idx.to_be_bytes();
        let mac = Mac([0x0a, 0x58, b[0], b[1], b[2], b[3]]);
        let c = Cookie::new(1, Category::Pod, port);
        s.insert(Flow::new(
            0,
            100,
            c,
            Match::new().in_port(port).dl_src(mac).nw_src(ip),
            vec![Action::load_reg(Reg::R0, vni), Action::GotoTable(20)],
        ));
        s.insert(Flow::new(
            0,
            100,
            c,
            Match::new().in_port(port).arp_spa(ip).arp_sha(mac),
            vec![Action::load_reg(Reg::R0, vni), Action::GotoTable(20)],
        ));
        s.insert(Flow::new(
            40,
            100,
            c,
            Match::new().arp_tpa(ip),
            vec![Action::load_reg(Reg::R1, vni), Action::load_reg(Reg::R2, port), Action::GotoTable(80)],
        ));
        s.insert(Flow::new(
            70,
            100,
            c,
            Match::new().nw_dst(ip),
            vec![Action::load_reg(Reg::R1, vni), Action::load_reg(Reg::R2, port), Action::GotoTable(80)],
        ));
    };
    for i in 0..pods {
        pod(&mut s, i, vni);
    }
    for i in 0..others {
        pod(&mut s, pods + i, 99);
    }
    for v in [vni, 99] {
        s.insert(Flow::new(
            80,
            100,
            Cookie::new(1, Category::Namespace, v),
            Match::new().reg(Reg::R0, v).reg(Reg::R1, v),
            vec![Action::OutputReg(Field::Reg(Reg::R2).all())],
        ));
    }
    // The cluster-wide part: remote subnets over the tunnel, keyed by prefix.
    let vni_bits = Field::TunId.bits(0, 31).unwrap_or(Field::TunId.all());
    for n in 0..20u8 {
        s.insert(Flow::new(
            90,
            100,
            Cookie::new(1, Category::RemoteNode, u32::from(n)),
            Match::new().nw_dst(Ipv4Prefix::new(Ipv4Addr::new(10, 2, n, 0), 24)),
            vec![
                Action::Move { src: Field::Reg(Reg::R0).all(), dst: vni_bits },
                Action::set_tun_dst(Ipv4Addr::new(172, 30, 0, 10 + n)),
                Action::Output(1),
            ],
        ));
    }
    s
}

fn op_text(op: &FlowOp) -> String {
    match op {
        FlowOp::Add(f) => format!("add {f}"),
        FlowOp::ModifyStrict(f) => format!("modify_strict {f}"),
        FlowOp::DeleteStrict(f) => format!("delete_strict {}", key_text(f)),
        FlowOp::DeleteByCookie { filter, .. } => {
            format!("delete cookie={:#x}/{:#x}", filter.cookie, filter.mask)
        }
    }
}

fn op_process(target: &str, op: &FlowOp) -> Result<Duration> {
    match op {
        FlowOp::Add(f) => ofctl(target, &["add-flow", &f.to_string()]),
        FlowOp::ModifyStrict(f) => ofctl(target, &["mod-flows", "--strict", &f.to_string()]),
        FlowOp::DeleteStrict(f) => ofctl(target, &["del-flows", "--strict", &key_text(f)]),
        FlowOp::DeleteByCookie { filter, .. } => {
            ofctl(target, &["del-flows", &format!("cookie={:#x}/{:#x}", filter.cookie, filter.mask)])
        }
    }
}

async fn reset(client: &Client, sw_count_expect: usize) -> Result<()> {
    client.delete_by_cookie(CookieFilter::ANY, None).await?;
    let n = count(client).await?;
    if n != sw_count_expect {
        bail!("{n} flows left after delete-all");
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    let load_start = loadavg();
    if args.quick {
        args.runs = args.runs.min(3);
        args.sizes = vec![1000, 10000];
        args.per_process_cap = args.per_process_cap.min(100);
    }
    let sw = PrivateSwitch::start("br0")?;
    let target = sw.endpoint();
    let vsw_pid = sw.vswitchd_pid();
    let mgmt = sw.ovs.mgmt_sock("br0");
    let client =
        Client::connect(target.parse().map_err(anyhow::Error::msg)?, ClientOptions::default()).await?;
    let tmp = sw.dir.join("bench");
    std::fs::create_dir_all(&tmp)?;
    println!(
        "flows benchmark: {} runs, sizes {:?}, ovs-vswitchd pid {:?}",
        args.runs,
        args.sizes,
        sw.vswitchd_pid()
    );

    // (c) one process per flow: measured once per run at the cap, per flow.
    let cap = args.per_process_cap;
    let mut c_runs = Vec::new();
    for run in 0..args.runs {
        reset(&client, 0).await?;
        let flows: Vec<String> = (0..cap).map(|i| bench_flow(i).to_string()).collect();
        let t0 = Instant::now();
        for f in &flows {
            ofctl(&target, &["add-flow", f])?;
        }
        let dt = t0.elapsed();
        if count(&client).await? != cap {
            bail!("per-process adds left the wrong flow count");
        }
        println!("  run {} (c) {cap} x ovs-ofctl add-flow: {:.0} ms", run + 1, ms(dt));
        c_runs.push(ms(dt));
    }
    let c_per_flow_ms = median(&c_runs) / cap as f64;
    reset(&client, 0).await?;

    let mut sizes_json = serde_json::Map::new();
    let mut table = Vec::new();
    for &n in &args.sizes {
        let flows: Vec<Flow> = (0..n).map(bench_flow).collect();
        let ops: Vec<FlowOp> = flows.iter().cloned().map(FlowOp::Add).collect();
        let file = flow_file(&tmp, &format!("flows{n}.txt"), flows.iter().map(ToString::to_string))?;
        let file_s = file.to_string_lossy().into_owned();
        let cookie_arg = format!("cookie={COOKIE}/-1");
        let (mut a, mut b, mut raw, mut del_a, mut del_b) = (vec![], vec![], vec![], vec![], vec![]);
        // ovs-vswitchd main-thread CPU during each add: near the wall time
        // means the switch, not the client, is the bottleneck.
        let mut vsw_cpu: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
        let mut reference: Option<Vec<Flow>> = None;
        for run in 0..args.runs {
            let methods = ["a", "b", "raw"];
            for k in 0..methods.len() {
                let m = methods[(run + k) % methods.len()];
                tokio::time::sleep(Duration::from_millis(200)).await;
                let cpu0 = vsw_pid.and_then(main_thread_cpu);
                let dt = match m {
                    "a" => {
                        let t0 = Instant::now();
                        client.bundle(&ops).await?;
                        t0.elapsed()
                    }
                    "b" => ofctl(&target, &["--bundle", "add-flows", &file_s])?,
                    _ => {
                        let mgmt = mgmt.clone();
                        let fl = flows.clone();
                        tokio::task::spawn_blocking(move || raw_bundle(&mgmt, &fl)).await??
                    }
                };
                if let (Some(c0), Some(c1)) = (cpu0, vsw_pid.and_then(main_thread_cpu)) {
                    vsw_cpu.entry(m).or_default().push(ms(c1.saturating_sub(c0)));
                }
                let mut got = client.dump_flows(None, CookieFilter::ANY).await?;
                got.sort_by_key(|f| f.key());
                if got.len() != n {
                    bail!("{m}: {} flows installed, want {n}", got.len());
                }
                match &reference {
                    None => reference = Some(got),
                    Some(r) if *r != got => bail!("{m}: flow table differs from the first method's"),
                    Some(_) => {}
                }
                match m {
                    "a" => a.push(ms(dt)),
                    "b" => b.push(ms(dt)),
                    _ => raw.push(ms(dt)),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                // delete by cookie, alternating the tool
                let ours = (run * methods.len() + k).is_multiple_of(2);
                let dd = if ours {
                    let t0 = Instant::now();
                    client.delete_by_cookie(CookieFilter::exact(COOKIE), None).await?;
                    t0.elapsed()
                } else {
                    ofctl(&target, &["del-flows", &cookie_arg])?
                };
                if count(&client).await? != 0 {
                    bail!("delete by cookie left flows");
                }
                if ours {
                    del_a.push(ms(dd));
                } else {
                    del_b.push(ms(dd));
                }
                println!(
                    "  N={n} run {} {m:>3} add {:8.1} ms | del {} {:6.1} ms",
                    run + 1,
                    ms(dt),
                    if ours { "client" } else { "ofctl " },
                    ms(dd)
                );
            }
        }
        let (ma, mb, mr) = (median(&a), median(&b), median(&raw));
        let a_per_flow = ma / n as f64;
        let row = json!({
            "n": n,
            "a_client_bundle": stats(&a),
            "b_ofctl_bundle_add_flows": stats(&b),
            "raw_pre_encoded_bundle": stats(&raw),
            "c_ofctl_per_flow_ms": c_per_flow_ms,
            "c_ofctl_process_per_flow_estimated_total_ms": c_per_flow_ms * n as f64,
            "delete_by_cookie_client": stats(&del_a),
            "delete_by_cookie_ofctl": stats(&del_b),
            "flows_per_s": { "a": n as f64 / ma * 1e3, "b": n as f64 / mb * 1e3, "raw": n as f64 / mr * 1e3, "c": 1e3 / c_per_flow_ms },
            "ratio_a_over_b": ma / mb,
            "ratio_c_over_a_per_flow": c_per_flow_ms / a_per_flow,
            "ratio_a_over_raw": ma / mr,
            "vswitchd_main_thread_cpu_ms_median": vsw_cpu.iter().map(|(k, v)| (k.to_string(), json!(median(v)))).collect::<serde_json::Map<_, _>>(),
            "ratio_del_ofctl_over_client": median(&del_b) / median(&del_a),
        });
        table.push(row.clone());
        sizes_json.insert(n.to_string(), row);
    }

    // The delta: a namespace with `pods` pods changes VNI 5 -> 6 (plus 300
    // pods of another namespace and remote-node flows that stay).
    let old = namespace_flows(args.pods, 5, 300);
    let new = namespace_flows(args.pods, 6, 300);
    let delta_ops = reconcile::delta(&old, &new);
    let delta_file = flow_file(&tmp, "delta.txt", delta_ops.iter().map(op_text))?;
    let delta_file_s = delta_file.to_string_lossy().into_owned();
    let install_old: Vec<FlowOp> = old.iter().cloned().map(FlowOp::Add).collect();
    let (mut da, mut db, mut dc) = (vec![], vec![], vec![]);
    let per_process_ops = delta_ops.len().min(cap);
    for run in 0..args.runs {
        for m in ["a", "b", "c"] {
            reset(&client, 0).await?;
            client.bundle(&install_old).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let dt = match m {
                "a" => {
                    let t0 = Instant::now();
                    reconcile::apply_delta(&client, &old, &new).await?;
                    t0.elapsed()
                }
                "b" => ofctl(&target, &["--bundle", "add-flows", &delta_file_s])?,
                _ => {
                    let t0 = Instant::now();
                    for op in delta_ops.iter().take(per_process_ops) {
                        op_process(&target, op)?;
                    }
                    t0.elapsed()
                }
            };
            if m != "c" || per_process_ops == delta_ops.len() {
                let got: FlowSet = client.dump_flows(None, CookieFilter::ANY).await?.into_iter().collect();
                if got != new {
                    bail!("delta by {m}: the switch does not hold the new flow set");
                }
            }
            println!("  delta run {} {m} {} ops: {:.1} ms", run + 1, delta_ops.len(), ms(dt));
            match m {
                "a" => da.push(ms(dt)),
                "b" => db.push(ms(dt)),
                _ => dc.push(ms(dt) / per_process_ops as f64 * delta_ops.len() as f64),
            }
        }
    }
    let delta_stats = ofp_stats(&delta_ops);
    let delta_json = json!({
        "pods": args.pods,
        "ops": delta_ops.len(),
        "ops_by_kind": delta_stats,
        "installed_flows": old.len(),
        "a_client_bundle": stats(&da),
        "b_ofctl_bundle_file": stats(&db),
        "c_ofctl_process_per_op": stats(&dc),
        "ratio_a_over_b": median(&da) / median(&db),
        "ratio_c_over_a": median(&dc) / median(&da),
    });

    println!(
        "\n{:>7} | {:>10} {:>10} {:>10} | {:>9} {:>9} {:>8} | {:>8} {:>8} | {:>9}",
        "N", "a ms", "b ms", "raw ms", "a/b", "c/a", "a/raw", "del a", "del b", "a flows/s"
    );
    for r in &table {
        println!(
            "{:>7} | {:>10.1} {:>10.1} {:>10.1} | {:>9.2} {:>9.0} {:>8.2} | {:>8.1} {:>8.1} | {:>9.0}",
            r["n"].as_u64().unwrap_or(0),
            r["a_client_bundle"]["median_ms"].as_f64().unwrap_or(f64::NAN),
            r["b_ofctl_bundle_add_flows"]["median_ms"].as_f64().unwrap_or(f64::NAN),
            r["raw_pre_encoded_bundle"]["median_ms"].as_f64().unwrap_or(f64::NAN),
            r["ratio_a_over_b"].as_f64().unwrap_or(f64::NAN),
            r["ratio_c_over_a_per_flow"].as_f64().unwrap_or(f64::NAN),
            r["ratio_a_over_raw"].as_f64().unwrap_or(f64::NAN),
            r["delete_by_cookie_client"]["median_ms"].as_f64().unwrap_or(f64::NAN),
            r["delete_by_cookie_ofctl"]["median_ms"].as_f64().unwrap_or(f64::NAN),
            r["flows_per_s"]["a"].as_f64().unwrap_or(f64::NAN),
        );
    }
    println!(
        "(c) one ovs-ofctl add-flow per flow: {:.2} ms/flow ({} flows x {} runs)",
        c_per_flow_ms, cap, args.runs
    );
    println!(
        "delta ({} pods change VNI, {} ops): a {:.1} ms, b {:.1} ms, c {:.0} ms; a/b {:.2}, c/a {:.0}",
        args.pods,
        delta_ops.len(),
        median(&da),
        median(&db),
        median(&dc),
        median(&da) / median(&db),
        median(&dc) / median(&da)
    );

    let result = json!({
        "benchmark": "flows",
        "runs": args.runs,
        "quick": args.quick,
        "flow": bench_flow(0).to_string(),
        "c_per_process_cap": cap,
        "c_ofctl_add_flow_runs_ms": c_runs,
        "sizes": sizes_json,
        "delta_namespace_vni_change": delta_json,
        // Other work on the machine slows the switch and ovs-ofctl alike;
        // the ratios are from the same run, the absolute figures are not.
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "note": "a = ovs-flows Client::bundle (encoding included); b = ovs-ofctl -O OpenFlow15 --bundle add-flows FILE; raw = pre-encoded bundle bytes (switch limit); c = one ovs-ofctl add-flow process per flow, measured at the cap, per flow",
    });
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&result)? + "\n")
        .with_context(|| format!("write {}", args.out.display()))?;
    println!("wrote {}", args.out.display());
    Ok(())
}

/// CPU time of a process's main thread (`/proc/<pid>/task/<pid>/schedstat`).
fn main_thread_cpu(pid: i32) -> Option<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/schedstat")).ok()?;
    s.split_whitespace().next()?.parse().ok().map(Duration::from_nanos)
}

fn ofp_stats(ops: &[FlowOp]) -> Value {
    let s = reconcile::ReconcileStats::of(ops);
    json!({ "add": s.added, "modify_strict": s.modified, "delete_strict": s.deleted })
}
