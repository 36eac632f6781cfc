//! Pod egress on the userspace (netdev) datapath: an OpenFlow meter in the
//! switch, named by the pod's SPOOF_GUARD flows (docs/pipeline.md, table 20).
//!
//! Why not tc: ovs-vswitchd reads a netdev port through an AF_PACKET socket,
//! which sees frames before the veth's tc ingress hook, so the ifb path of
//! the kernel datapath limits nothing there; and a tbf inside the pod's
//! namespace belongs to the pod, which deletes it with `CAP_NET_ADMIN`. A
//! meter sits in ovs-vswitchd, out of the pod's reach.
//!
//! A meter drops what exceeds its band; it does not queue as tbf does. So
//! its bucket must hold more than tbf's: a TCP sender whose whole window
//! is dropped at the end of a burst waits for its retransmission timeout
//! (at least 200 ms on Linux), and with a 20 ms bucket a 5 Mbit/s limit
//! delivered 0.43 Mbit/s (measured on the lab: 100 kbit 0.43, 200 kbit
//! 0.95, 400 kbit 1.82, 1000 kbit 4.61, 2000 kbit 4.77). The meter's bucket
//! is therefore at least [`MIN_METER_BURST`] at the rate, and TCP runs a
//! little below the rate. One meter per pod, its id the pod's
//! ofport: unique on the bridge for as long as the pod lives, and known
//! again after a restart without any record of its own.
//!
//! Pure: the agent's dataplane adds, changes and deletes the meters.

use std::time::Duration;

use ovs_flows::ofp::Meter;

use super::Rate;

/// The least a meter's bucket holds, as time at the rate: longer than TCP's
/// minimum retransmission timeout (see the module doc).
pub const MIN_METER_BURST: Duration = Duration::from_millis(250);

/// The meter policing a pod's egress at `rate`: kbit/s rounded down (never
/// above the limit), at least 1; the burst in kbit rounded up, and at least
/// [`MIN_METER_BURST`] at the rate (a larger burst asked for is kept).
pub fn egress_meter(ofport: u32, rate: &Rate) -> Meter {
    let kbps = u32::try_from(rate.bits_per_sec / 1000).unwrap_or(u32::MAX).max(1);
    let floor = u128::from(kbps) * MIN_METER_BURST.as_millis() / 1000;
    let burst = u128::from(rate.burst_bits.div_ceil(1000)).max(floor);
    let burst_kbits = u32::try_from(burst).unwrap_or(u32::MAX).max(1);
    Meter { id: ofport, kbps, burst_kbits }
}

/// The limit a meter enforces, as a [`Rate`] (for pods adopted after a
/// restart: the meter is the only record of their egress limit; its burst
/// is the meter's, so `egress_meter` of it gives the same meter back).
pub fn rate_of(meter: &Meter) -> Rate {
    Rate { bits_per_sec: u64::from(meter.kbps) * 1000, burst_bits: u64::from(meter.burst_kbits) * 1000 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_bursts_convert_to_kbit() {
        // The default 20 ms burst is raised to 250 ms at the rate.
        let r = Rate::with_default_burst(5_000_000, 1450);
        assert_eq!(egress_meter(7, &r), Meter { id: 7, kbps: 5_000, burst_kbits: 1_250 });
        // Two-frame minimum burst (2 x 1464 B = 23 424 bit) rounds up, and
        // is above 250 ms at 64 kbit/s (16 kbit).
        let slow = Rate::with_default_burst(64_000, 1450);
        assert_eq!(egress_meter(3, &slow), Meter { id: 3, kbps: 64, burst_kbits: 24 });
        // A larger burst asked for (runtimeConfig) is kept.
        let big = Rate { bits_per_sec: 5_000_000, burst_bits: 4_000_000 };
        assert_eq!(egress_meter(7, &big).burst_kbits, 4_000);
    }

    #[test]
    fn odd_rates_round_towards_the_limit() {
        let r = Rate { bits_per_sec: 1_999, burst_bits: 1 };
        assert_eq!(egress_meter(3, &r), Meter { id: 3, kbps: 1, burst_kbits: 1 });
        let r = Rate { bits_per_sec: 10_999, burst_bits: 1 };
        assert_eq!(egress_meter(3, &r), Meter { id: 3, kbps: 10, burst_kbits: 2 });
        let huge = Rate { bits_per_sec: 1_000_000_000_000_000, burst_bits: u64::MAX };
        let m = egress_meter(3, &huge);
        assert_eq!((m.kbps, m.burst_kbits), (u32::MAX, u32::MAX));
    }

    #[test]
    fn a_meter_reads_back_as_the_rate_it_came_from() {
        let r = Rate::with_default_burst(5_000_000, 1450);
        assert_eq!(rate_of(&egress_meter(4, &r)), Rate { bits_per_sec: 5_000_000, burst_bits: 1_250_000 });
        assert_eq!(egress_meter(4, &rate_of(&egress_meter(4, &r))), egress_meter(4, &r));
    }
}
