//! Enforcing [`Limits`] with Linux tc through netlink (no `tc` process).
//!
//! - Pod ingress (traffic to the pod): tbf as the root qdisc of the host
//!   veth, on both datapaths.
//! - Pod egress, kernel datapath: the host veth's ingress hook redirects
//!   every frame (u32 match-all + mirred) to an ifb device whose root qdisc
//!   is a tbf, as the upstream CNI bandwidth plugin does.
//! - Pod egress, userspace (netdev) datapath: not tc's. ovs-vswitchd reads
//!   the veth through an AF_PACKET socket, which sees frames before the tc
//!   ingress hook, so the ifb path limits nothing there (measured); an
//!   OpenFlow meter in the switch polices it (`meter.rs`). Here the
//!   functions leave egress alone on that datapath, except that a tbf an
//!   earlier version put inside the pod is taken over ([`take_pod_tbf`]).
//!
//! [`apply`] converges a pod to the wanted limits (install, change or
//! remove, idempotent), [`installed`] reads back what the kernel holds,
//! [`check`] compares the two, [`remove`] takes everything away.

use std::path::Path;

use netlink_packet_route::tc::{TcHandle, TcOption};
use rtnetlink::packet_core::{DefaultNla, NlaBuffer, NlasIterator};

use super::{Limits, Rate, MAX_BURST_BITS};
use crate::config::DatapathType;
use crate::netlink::{Netlink, NetlinkError, Qdisc};

const TBF: &str = "tbf";
// Attributes inside tbf's TCA_OPTIONS (linux/pkt_sched.h).
const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;
/// `struct tc_tbf_qopt`: rate and peakrate `tc_ratespec`s (12 bytes each),
/// then limit, buffer and mtu (u32 each).
const QOPT_LEN: usize = 36;
const RATESPEC_RATE: usize = 8;
const QOPT_LIMIT: usize = 24;
const QOPT_BUFFER: usize = 28;
/// `TC_LINKLAYER_ETHERNET`: tells the kernel no rate table follows.
const LINKLAYER_ETHERNET: u8 = 1;
/// The kernel's scheduler tick (`PSCHED_SHIFT` = 6): tbf reports its
/// bucket size as time in these units.
const TICK_NS: u128 = 64;
/// tbf reports the bucket time as a u32 of ticks (about 274.9 s); a longer
/// bucket would read back wrapped, so bursts are capped at this much time.
const MAX_BUCKET_SECS: u128 = 274;

/// Why shaping could not be installed, read or confirmed.
#[derive(Debug, thiserror::Error)]
pub enum ShapingError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("{direction} shaping on {dev}: wanted {wanted}, installed {installed}")]
    Mismatch { direction: &'static str, dev: String, wanted: String, installed: String },
}

/// Where a pod's shaping lives.
#[derive(Debug, Clone, Copy)]
pub struct PodDevices<'a> {
    /// Host end of the pod's veth, in the agent's namespace.
    pub host_veth: &'a str,
    /// The pod's network namespace (`CNI_NETNS`).
    pub pod_netns: &'a Path,
    /// The pod-side interface (`CNI_IFNAME`).
    pub pod_ifname: &'a str,
    pub datapath: DatapathType,
}

/// The ifb device carrying a pod's egress on the kernel datapath: `ifb` +
/// the veth name's last 12 characters (at most 15 in all, the kernel's
/// limit). Unique as long as veth names differ in their last 12 characters,
/// as the agent's `kov<12 hex>` names do.
pub fn ifb_name(host_veth: &str) -> String {
    let chars: Vec<char> = host_veth.chars().collect();
    let tail: String = chars[chars.len().saturating_sub(12)..].iter().collect();
    format!("ifb{tail}")
}

/// tbf's TCA_OPTIONS for a rate: `tc_tbf_qopt` plus the burst in bytes
/// (and the rate as u64 when it does not fit the u32 field).
pub fn tbf_options(rate: &Rate) -> Vec<TcOption> {
    let rate_bytes = rate.bits_per_sec / 8;
    let burst_bytes = bucket_bytes(rate);
    let mut qopt = [0u8; QOPT_LEN];
    qopt[1] = LINKLAYER_ETHERNET;
    let rate32 = u32::try_from(rate_bytes).unwrap_or(u32::MAX);
    qopt[RATESPEC_RATE..RATESPEC_RATE + 4].copy_from_slice(&rate32.to_ne_bytes());
    qopt[QOPT_LIMIT..QOPT_LIMIT + 4].copy_from_slice(&rate.queue_limit_bytes().to_ne_bytes());
    // The kernel derives the bucket time from TCA_TBF_BURST; the buffer
    // field is filled the way tc fills it, for readers of the request.
    let buffer_ticks = u128::from(burst_bytes) * 1_000_000_000 / u128::from(rate_bytes.max(1)) / TICK_NS;
    let buffer_ticks = u32::try_from(buffer_ticks).unwrap_or(u32::MAX);
    qopt[QOPT_BUFFER..QOPT_BUFFER + 4].copy_from_slice(&buffer_ticks.to_ne_bytes());
    let mut options = vec![
        TcOption::Other(DefaultNla::new(TCA_TBF_PARMS, qopt.to_vec())),
        TcOption::Other(DefaultNla::new(TCA_TBF_BURST, burst_bytes.to_ne_bytes().to_vec())),
    ];
    if rate_bytes > u64::from(u32::MAX) {
        options.push(TcOption::Other(DefaultNla::new(TCA_TBF_RATE64, rate_bytes.to_ne_bytes().to_vec())));
    }
    options
}

/// The bucket in bytes as installed: the burst, capped by what tbf can
/// report back (see [`MAX_BUCKET_SECS`]) and by the u32 it is sent in.
fn bucket_bytes(rate: &Rate) -> u32 {
    let by_time = u128::from(rate.bits_per_sec / 8) * MAX_BUCKET_SECS;
    let bytes = u128::from(rate.burst_bits.min(MAX_BURST_BITS) / 8).min(by_time);
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// Rate and burst of a tbf from the raw attributes of its TCA_OPTIONS, as
/// the kernel reports them (the burst is derived from the bucket time, so
/// it may differ from the one set by the tick's rounding).
pub fn parse_tbf(raw: &[u8]) -> Option<Rate> {
    let mut qopt = None;
    let mut rate64 = None;
    for nla in NlasIterator::new(raw) {
        let nla: NlaBuffer<&[u8]> = nla.ok()?;
        match nla.kind() {
            TCA_TBF_PARMS if nla.value().len() >= QOPT_LEN => qopt = Some(nla.value().to_vec()),
            TCA_TBF_RATE64 => rate64 = Some(u64::from_ne_bytes(nla.value().get(..8)?.try_into().ok()?)),
            _ => {}
        }
    }
    let qopt = qopt?;
    let u32_at =
        |at: usize| -> Option<u32> { Some(u32::from_ne_bytes(qopt.get(at..at + 4)?.try_into().ok()?)) };
    let rate_bytes = rate64.unwrap_or(u64::from(u32_at(RATESPEC_RATE)?));
    let ticks = u128::from(u32_at(QOPT_BUFFER)?);
    let burst_bytes = ticks * TICK_NS * u128::from(rate_bytes) / 1_000_000_000;
    Some(Rate { bits_per_sec: rate_bytes * 8, burst_bits: u64::try_from(burst_bytes * 8).ok()? })
}

/// Whether an installed tbf enforces `wanted`: the same rate (the kernel
/// keeps bytes/s) and the same bucket within the tick's rounding.
pub fn tbf_matches(wanted: &Rate, installed: &Rate) -> bool {
    let want_bytes = u128::from(bucket_bytes(wanted));
    let got_bytes = u128::from(installed.burst_bits / 8);
    // One tick either way at the rate, the kernel's fixed-point rate
    // reciprocal (relative error well under 0.1%), and a few bytes.
    let tick_bytes = u128::from(wanted.bits_per_sec / 8) * TICK_NS * 2 / 1_000_000_000;
    let tolerance = tick_bytes + want_bytes / 1000 + 8;
    wanted.bits_per_sec / 8 == installed.bits_per_sec / 8 && want_bytes.abs_diff(got_bytes) <= tolerance
}

/// Whether tc shapes the pod's egress on this datapath (on netdev a meter does).
pub fn shapes_egress(datapath: DatapathType) -> bool {
    datapath == DatapathType::System
}

/// Compares wanted and installed limits per direction tc shapes.
pub fn compare(devices: &PodDevices<'_>, wanted: &Limits, installed: &Limits) -> Result<(), ShapingError> {
    let show = |r: Option<Rate>| r.map_or_else(|| "none".to_string(), |r| r.to_string());
    let mut directions = vec![("ingress", devices.host_veth.to_string(), wanted.ingress, installed.ingress)];
    if shapes_egress(devices.datapath) {
        directions.push(("egress", ifb_name(devices.host_veth), wanted.egress, installed.egress));
    }
    for (direction, dev, want, got) in directions {
        let same = match (want, got) {
            (None, None) => true,
            (Some(w), Some(g)) => tbf_matches(&w, &g),
            _ => false,
        };
        if !same {
            return Err(ShapingError::Mismatch { direction, dev, wanted: show(want), installed: show(got) });
        }
    }
    Ok(())
}

async fn link_index(nl: &Netlink, name: &str) -> Result<u32, NetlinkError> {
    Ok(nl.link(name).await?.ok_or_else(|| NetlinkError::NoSuchLink(name.to_string()))?.index)
}

async fn root_qdisc(nl: &Netlink, index: u32) -> Result<Option<Qdisc>, NetlinkError> {
    Ok(nl.qdiscs(index).await?.into_iter().find(Qdisc::is_root))
}

/// The tbf at the root of a link, if that is what is there.
async fn root_tbf(nl: &Netlink, index: u32) -> Result<Option<Rate>, NetlinkError> {
    Ok(root_qdisc(nl, index)
        .await?
        .filter(|q| q.kind == TBF)
        .and_then(|q| q.raw_options.as_deref().and_then(parse_tbf)))
}

/// Installs or changes a tbf at the root of a link; unchanged is a no-op.
async fn set_root_tbf(nl: &Netlink, index: u32, rate: &Rate) -> Result<(), NetlinkError> {
    if root_tbf(nl, index).await?.is_some_and(|got| tbf_matches(rate, &got)) {
        return Ok(());
    }
    nl.replace_root_qdisc(index, TBF, tbf_options(rate)).await
}

/// Removes a tbf at the root of a link (anything else is left alone).
async fn clear_root_tbf(nl: &Netlink, index: u32) -> Result<(), NetlinkError> {
    if root_qdisc(nl, index).await?.is_some_and(|q| q.kind == TBF) {
        nl.del_qdisc(index, TcHandle::ROOT).await?;
    }
    Ok(())
}

/// Converges the pod's shaping to `limits`: installs, changes or removes
/// the qdiscs, filter and ifb of the directions tc shapes (egress on the
/// netdev datapath is the meter's). Idempotent; a rate that is already
/// installed is not touched (no burst of a fresh bucket). Never enters the
/// pod's namespace: nothing of the pod's limits lives there.
pub async fn apply(host: &Netlink, devices: &PodDevices<'_>, limits: &Limits) -> Result<(), ShapingError> {
    let veth = link_index(host, devices.host_veth).await?;
    match &limits.ingress {
        Some(rate) => set_root_tbf(host, veth, rate).await?,
        None => clear_root_tbf(host, veth).await?,
    }
    match (devices.datapath, &limits.egress) {
        (DatapathType::System, Some(rate)) => {
            // Shaper first, then the redirect: no moment of redirected but
            // unshaped (or dropped) traffic.
            let ifb = ifb_name(devices.host_veth);
            host.ensure_ifb(&ifb).await?;
            host.set_up(&ifb).await?;
            let ifb_index = link_index(host, &ifb).await?;
            set_root_tbf(host, ifb_index, rate).await?;
            let redirects = host.ingress_redirects(veth).await?;
            if redirects != [ifb_index] {
                // Missing, or left pointing elsewhere: start the hook afresh.
                if !redirects.is_empty() {
                    host.del_qdisc(veth, TcHandle::INGRESS).await?;
                }
                host.ensure_ingress_qdisc(veth).await?;
                host.add_ingress_redirect(veth, ifb_index).await?;
            }
        }
        _ => remove_ifb_path(host, devices.host_veth, Some(veth)).await?,
    }
    Ok(())
}

/// Netdev datapath, at adoption after an upgrade: the root tbf an earlier
/// version put on the pod's interface (inside the pod, where the pod could
/// delete it), removed, and its rate returned so the meter takes over.
/// `None` when there is none (or the pod is gone).
pub async fn take_pod_tbf(devices: &PodDevices<'_>) -> Result<Option<Rate>, ShapingError> {
    if !devices.pod_netns.exists() {
        return Ok(None);
    }
    let pod = Netlink::in_netns(devices.pod_netns)?;
    let Some(link) = pod.link(devices.pod_ifname).await? else { return Ok(None) };
    let rate = root_tbf(&pod, link.index).await?;
    if rate.is_some() {
        pod.del_qdisc(link.index, TcHandle::ROOT).await?;
    }
    Ok(rate)
}

/// The ingress hook of the veth (with its filter) and the ifb.
async fn remove_ifb_path(host: &Netlink, host_veth: &str, veth: Option<u32>) -> Result<(), NetlinkError> {
    if let Some(veth) = veth {
        if host.qdiscs(veth).await?.iter().any(Qdisc::is_ingress) {
            host.del_qdisc(veth, TcHandle::INGRESS).await?;
        }
    }
    host.del_link(&ifb_name(host_veth)).await?;
    Ok(())
}

/// What the kernel enforces for the pod now, read back from the qdiscs
/// (egress on the kernel datapath counts only when the redirect to the
/// ifb is in place too; on the netdev datapath it is `None`: the meter's).
pub async fn installed(host: &Netlink, devices: &PodDevices<'_>) -> Result<Limits, ShapingError> {
    let veth = link_index(host, devices.host_veth).await?;
    let ingress = root_tbf(host, veth).await?;
    let egress = match devices.datapath {
        DatapathType::System => match host.link(&ifb_name(devices.host_veth)).await? {
            Some(ifb) if host.ingress_redirects(veth).await?.contains(&ifb.index) => {
                root_tbf(host, ifb.index).await?
            }
            _ => None,
        },
        DatapathType::Netdev => None,
    };
    Ok(Limits { ingress, egress })
}

/// CNI CHECK: the installed shaping is the wanted one.
pub async fn check(host: &Netlink, devices: &PodDevices<'_>, wanted: &Limits) -> Result<(), ShapingError> {
    compare(devices, wanted, &installed(host, devices).await?)
}

/// Removes all tc shaping of the pod: the qdiscs on the host veth, the
/// filter and the ifb. Whatever is already gone is success, so DEL may
/// call it after the veth went away.
pub async fn remove(host: &Netlink, devices: &PodDevices<'_>) -> Result<(), ShapingError> {
    let veth = host.link(devices.host_veth).await?.map(|l| l.index);
    if let Some(veth) = veth {
        clear_root_tbf(host, veth).await?;
    }
    remove_ifb_path(host, devices.host_veth, veth).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::Emitable;

    fn raw(options: &[TcOption]) -> Vec<u8> {
        // The nest's payload as the kernel would return it.
        let mut out = Vec::new();
        for o in options {
            let mut buf = vec![0; o.buffer_len()];
            o.emit(&mut buf);
            out.extend_from_slice(&buf);
        }
        out
    }

    /// What the kernel reports: the same qopt with the bucket as time.
    fn as_reported(rate: &Rate) -> Rate {
        parse_tbf(&raw(&tbf_options(rate))).expect("parses")
    }

    #[test]
    fn ifb_names_fit_the_kernel_limit() {
        assert_eq!(ifb_name("kov0123456789ab"), "ifb0123456789ab");
        assert_eq!(ifb_name("vethbw1"), "ifbvethbw1");
        assert!(ifb_name("kov0123456789ab").len() <= 15);
        assert_ne!(ifb_name("kov0123456789ab"), ifb_name("kov0123456789ac"));
    }

    #[test]
    fn tbf_options_encode_rate_burst_and_limit() {
        let rate = Rate { bits_per_sec: 10_000_000, burst_bits: 200_000 };
        let opts = tbf_options(&rate);
        assert_eq!(opts.len(), 2, "no RATE64 below 2^32 bytes/s");
        let bytes = raw(&opts);
        // PARMS: 4-byte header + 36-byte qopt, then BURST.
        assert_eq!(u16::from_ne_bytes([bytes[2], bytes[3]]), TCA_TBF_PARMS);
        let qopt = &bytes[4..40];
        assert_eq!(qopt[1], LINKLAYER_ETHERNET);
        assert_eq!(u32::from_ne_bytes(qopt[8..12].try_into().expect("4")), 1_250_000);
        assert_eq!(u32::from_ne_bytes(qopt[24..28].try_into().expect("4")), 25_000 + 31_250);
        // 25 000 B at 1.25 MB/s = 20 ms = 312 500 ticks.
        assert_eq!(u32::from_ne_bytes(qopt[28..32].try_into().expect("4")), 312_500);
        assert_eq!(u16::from_ne_bytes([bytes[42], bytes[43]]), TCA_TBF_BURST);
        assert_eq!(u32::from_ne_bytes(bytes[44..48].try_into().expect("4")), 25_000);
        assert_eq!(as_reported(&rate), rate);
    }

    #[test]
    fn rates_above_u32_bytes_use_rate64() {
        let rate = Rate { bits_per_sec: 100_000_000_000, burst_bits: 2_000_000_000 };
        let opts = tbf_options(&rate);
        assert_eq!(opts.len(), 3);
        let got = as_reported(&rate);
        assert_eq!(got.bits_per_sec, rate.bits_per_sec);
        assert!(tbf_matches(&rate, &got), "{got}");
    }

    #[test]
    fn matching_tolerates_rounding_only() {
        let want = Rate { bits_per_sec: 5_000_000, burst_bits: 100_000 };
        assert!(tbf_matches(&want, &Rate { bits_per_sec: 5_000_000, burst_bits: 99_992 }));
        assert!(!tbf_matches(&want, &Rate { bits_per_sec: 5_000_008, burst_bits: 100_000 }));
        assert!(!tbf_matches(&want, &Rate { bits_per_sec: 5_000_000, burst_bits: 120_000 }));
        // Bits/s below a byte are lost in the kernel: not a mismatch.
        assert!(tbf_matches(&Rate { bits_per_sec: 5_000_007, burst_bits: 100_000 }, &want));
    }

    #[test]
    fn huge_bursts_are_capped_to_what_tbf_reports() {
        // containerd's u32::MAX bits at 1 Mbit/s would be 4295 s of bucket.
        let rate = Rate { bits_per_sec: 1_000_000, burst_bits: u64::from(u32::MAX) };
        let got = as_reported(&rate);
        assert_eq!(got.burst_bits, 1_000_000 * 274);
        assert!(tbf_matches(&rate, &got));
    }

    #[test]
    fn compare_names_direction_and_device() {
        let devices = PodDevices {
            host_veth: "kov0123456789ab",
            pod_netns: Path::new("/run/netns/p"),
            pod_ifname: "eth0",
            datapath: DatapathType::System,
        };
        let r = Rate { bits_per_sec: 5_000_000, burst_bits: 100_000 };
        let want = Limits { ingress: None, egress: Some(r) };
        assert!(compare(&devices, &want, &want).is_ok());
        let e = compare(&devices, &want, &Limits::NONE).expect_err("egress missing");
        assert_eq!(
            e.to_string(),
            "egress shaping on ifb0123456789ab: wanted 5000000 bit/s burst 100000 bit, installed none"
        );
        // On the netdev datapath egress is the meter's: tc does not judge it.
        let netdev = PodDevices { datapath: DatapathType::Netdev, ..devices };
        assert!(compare(&netdev, &want, &Limits::NONE).is_ok());
        let ingress = Limits { ingress: Some(r), egress: None };
        let e = compare(&netdev, &ingress, &Limits::NONE).expect_err("ingress missing");
        assert!(e.to_string().starts_with("ingress shaping on kov0123456789ab"), "{e}");
    }
}
