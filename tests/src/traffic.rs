//! Traffic between lab namespaces: ping verdicts and iperf3 rates.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::{self, Netns};

/// Replies received for `count` pings from `from` to `ip` (interval 0.2 s,
/// each waiting at most `wait_s` seconds).
pub fn ping_count(from: &Netns, ip: &str, count: u32, wait_s: u32) -> Result<u32> {
    let c = count.to_string();
    let w = wait_s.to_string();
    let out = from.exec_full(
        &["ping", "-n", "-q", "-c", &c, "-i", "0.2", "-W", &w, ip],
        Duration::from_secs(u64::from(count * (wait_s + 1)) + 5),
    )?;
    // "3 packets transmitted, 2 received, ..."
    let received = out
        .stdout
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok());
    match received {
        Some(n) => Ok(n),
        None => bail!("ping {ip} from {}: unexpected output: {}{}", from.name, out.stdout, out.stderr),
    }
}

/// True once a ping from `from` to `ip` is answered within `within`. The
/// first packet to a new tunnel neighbour is dropped while OVS resolves its
/// MAC, so one lost ping is not a verdict.
pub fn reachable(from: &Netns, ip: &str, within: Duration) -> Result<bool> {
    let deadline = Instant::now() + within;
    loop {
        if ping_count(from, ip, 1, 1)? == 1 {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
    }
}

/// True when none of `count` pings is answered.
pub fn unreachable(from: &Netns, ip: &str, count: u32) -> Result<bool> {
    Ok(ping_count(from, ip, count, 1)? == 0)
}

static PORT: AtomicU16 = AtomicU16::new(0);

/// Runs an iperf3 server in `server` bound to `server_ip` and a client in
/// `client` for `secs` seconds (the first second omitted, so slow start and
/// token-bucket bursts do not count); returns the receiver's Mbit/s.
/// `reverse` makes the server send (`-R`).
pub fn iperf3(server: &Netns, server_ip: &str, client: &Netns, secs: u32, reverse: bool) -> Result<f64> {
    iperf3_omitting(server, server_ip, client, secs, reverse, 1)
}

/// [`iperf3`] with the number of leading seconds left out of the result
/// chosen (`0` counts from the first byte: what a token bucket's initial
/// burst adds shows up).
pub fn iperf3_omitting(
    server: &Netns,
    server_ip: &str,
    client: &Netns,
    secs: u32,
    reverse: bool,
    omit_secs: u32,
) -> Result<f64> {
    // Namespaces are private, so ports only need to differ within a process.
    let port = 5201 + PORT.fetch_add(1, Ordering::SeqCst) % 1000;
    let p = port.to_string();
    let srv_argv = server.wrap(&["iperf3", "-s", "-1", "-B", server_ip, "-p", &p]);
    let mut srv = Command::new(srv_argv[0])
        .args(&srv_argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn iperf3 server")?;
    let result = (|| {
        // Wait for the server socket instead of sleeping a guessed time.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !server
            .exec(&["ss", "-Hltn", &format!("sport = :{port}")])
            .map(|s| !s.trim().is_empty())
            .unwrap_or(false)
        {
            if Instant::now() > deadline {
                bail!("iperf3 server did not listen on {server_ip}:{port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let t = secs.to_string();
        let o = omit_secs.to_string();
        let mut args =
            vec!["iperf3", "-c", server_ip, "-p", &p, "-t", &t, "-O", &o, "-J", "--connect-timeout", "3000"];
        if reverse {
            args.push("-R");
        }
        let out = client.exec_full(&args, Duration::from_secs(u64::from(secs) + 20))?;
        let v: serde_json::Value = serde_json::from_str(&out.stdout)
            .with_context(|| format!("iperf3 JSON: {}{}", out.stdout, out.stderr))?;
        if let Some(e) = v.get("error") {
            bail!("iperf3: {e}");
        }
        let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3: no sum_received")?;
        Ok(bps / 1e6)
    })();
    netns::terminate_pids(&[srv.id() as i32], Duration::from_secs(1));
    let _ = srv.wait();
    result
}

/// One ping with a short deadline (`wait`, fractional seconds allowed):
/// whether it was answered.
pub fn probe(from: &Netns, ip: &str, wait: Duration) -> Result<bool> {
    let w = format!("{:.3}", wait.as_secs_f64());
    let out =
        from.exec_full(&["ping", "-n", "-q", "-c", "1", "-W", &w, ip], wait + Duration::from_secs(5))?;
    Ok(out.success())
}

/// Probes `ip` from `from` every few milliseconds until reachability equals
/// `want`; returns how long after `since` the first such probe was sent, or
/// `None` if that did not happen before `since + within`.
/// For pairs that should reach each other but failed a first probe: probes
/// each (in parallel) until it answers or `within` passes; returns how long
/// each took (None: never). A pod whose ARP for a peer failed moments ago
/// (before an edit allowed the pair) answers only after the kernel's next
/// ARP retry, up to ~3 s later. Only for pairs that should connect: a pair
/// that should stay apart never gets a second chance.
pub fn retry_reach(pairs: &[(&Netns, &str)], within: Duration) -> Result<Vec<Option<Duration>>> {
    let start = Instant::now();
    std::thread::scope(|s| {
        let handles: Vec<_> = pairs
            .iter()
            .map(|(from, ip)| s.spawn(move || time_until(from, ip, true, start, within)))
            .collect();
        handles.into_iter().map(|h| h.join().map_err(|_| anyhow::anyhow!("probe thread panicked"))?).collect()
    })
}

pub fn time_until(
    from: &Netns,
    ip: &str,
    want: bool,
    since: Instant,
    within: Duration,
) -> Result<Option<Duration>> {
    loop {
        let sent = since.elapsed();
        if probe(from, ip, Duration::from_millis(200))? == want {
            return Ok(Some(sent));
        }
        if sent > within {
            return Ok(None);
        }
    }
}

/// Pings `ip` from `from` every 10 ms until `finish`: (sent, received).
pub struct Prober {
    child: Option<Child>,
}

impl Prober {
    pub fn start(from: &Netns, ip: &str) -> Result<Prober> {
        // `ip netns exec` execs ping in place: the child's PID is ping's.
        // Flood mode with an interval: every 10 ms whether answered or not
        // (plain ping paces unanswered probes down to a few per second).
        let argv = from.wrap(&["ping", "-n", "-q", "-f", "-i", "0.01", "-W", "1", ip]);
        let child = Command::new(argv[0]).args(&argv[1..]).stdout(Stdio::piped()).spawn()?;
        Ok(Prober { child: Some(child) })
    }

    /// SIGINT (ping prints its summary), then the counts.
    pub fn finish(mut self) -> Result<(u32, u32)> {
        let child = self.child.take().context("prober already finished")?;
        Command::new("kill").args(["-INT", &child.id().to_string()]).status()?;
        let out = child.wait_with_output()?;
        let s = String::from_utf8_lossy(&out.stdout);
        let line = s.lines().find(|l| l.contains("packets transmitted")).unwrap_or_default().to_string();
        let nums: Vec<u32> =
            line.split(',').filter_map(|p| p.split_whitespace().next()?.parse().ok()).collect();
        anyhow::ensure!(nums.len() >= 2, "ping summary: {s}");
        Ok((nums[0], nums[1]))
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
