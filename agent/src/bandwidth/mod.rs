//! Pod bandwidth limits: what a pod asks for (annotations, CNI
//! `runtimeConfig.bandwidth`) and how it is enforced with tc (`tc.rs`).
//!
//! This module is pure: it turns the pod's requests into [`Limits`] (rates
//! and token-bucket bursts) or a [`BandwidthError`] naming the pod, the
//! source and the value. `docs/bandwidth.md` explains the choices.
//!
//! ## Sources and precedence
//! Per direction, the annotation (`kubernetes.io/ingress-bandwidth`,
//! `kubernetes.io/egress-bandwidth`) wins over `runtimeConfig.bandwidth`:
//! the annotation is the live, editable source the agent watches, while
//! runtimeConfig is frozen at ADD, and runtimes that derive it from the
//! annotation (containerd, CRI-O) add a burst of `u32::MAX` bits, the
//! overshoot of kubernetes#90838. A direction without annotation falls back
//! to runtimeConfig, so the agent keeps the ADD's runtimeConfig with the pod
//! and passes it again on every live change.
//!
//! ## Default burst and queue (annotations carry a rate only)
//! - burst = max(rate x [`DEFAULT_BURST_TIME`], 2 frames of the pod MTU),
//!   at most [`MAX_BURST_BITS`]:
//!   a bucket that starts full lets at most 20 ms of extra traffic through,
//!   so the first second stays within 2% of the limit (plus two frames);
//!   two frames because tbf drops a packet larger than its bucket;
//! - queue limit = burst + rate x [`QUEUE_LATENCY`] (25 ms, as the upstream
//!   bandwidth plugin), so a TCP flow sees drops, not seconds of delay.

pub mod meter;
pub mod quantity;
pub mod tc;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::pods::PodName;
pub use quantity::{parse_bits_per_sec, QuantityError, MAX_BITS_PER_SEC, MIN_BITS_PER_SEC};

/// The pod annotation limiting traffic to the pod.
pub const INGRESS_ANNOTATION: &str = "kubernetes.io/ingress-bandwidth";
/// The pod annotation limiting traffic from the pod.
pub const EGRESS_ANNOTATION: &str = "kubernetes.io/egress-bandwidth";

/// Tokens a bucket holds by default, as time at the rate (see module doc).
pub const DEFAULT_BURST_TIME: Duration = Duration::from_millis(20);
/// How long a packet may wait in the shaper's queue before it is dropped.
pub const QUEUE_LATENCY: Duration = Duration::from_millis(25);
/// The largest burst, in bits: tbf holds it in bytes as a u32 (the upstream
/// plugin's "4 GB" bound).
pub const MAX_BURST_BITS: u64 = 8 * (u32::MAX as u64 - 1);
/// Ethernet header bytes on top of the MTU in a frame.
const ETH_HEADER: u64 = 14;

/// One direction's token bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub bits_per_sec: u64,
    pub burst_bits: u64,
}

impl Rate {
    /// A rate with the default burst for a pod interface of `mtu`.
    pub fn with_default_burst(bits_per_sec: u64, mtu: u32) -> Rate {
        let by_time = u128::from(bits_per_sec) * DEFAULT_BURST_TIME.as_nanos() / 1_000_000_000;
        let two_frames = 2 * 8 * (u64::from(mtu) + ETH_HEADER);
        let burst = u64::try_from(by_time).unwrap_or(MAX_BURST_BITS).max(two_frames).min(MAX_BURST_BITS);
        Rate { bits_per_sec, burst_bits: burst }
    }

    /// Queue limit in bytes: the burst plus [`QUEUE_LATENCY`] at the rate.
    pub fn queue_limit_bytes(&self) -> u32 {
        let latency = u128::from(self.bits_per_sec) * QUEUE_LATENCY.as_nanos() / 8 / 1_000_000_000;
        let total = u128::from(self.burst_bits / 8) + latency;
        u32::try_from(total).unwrap_or(u32::MAX)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bit/s burst {} bit", self.bits_per_sec, self.burst_bits)
    }
}

/// A pod's shaping: `None` = that direction is not shaped. Ingress is
/// traffic to the pod, egress traffic from it (the annotations' meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    pub ingress: Option<Rate>,
    pub egress: Option<Rate>,
}

impl Limits {
    /// No shaping at all.
    pub const NONE: Limits = Limits { ingress: None, egress: None };

    pub fn is_none(&self) -> bool {
        self.ingress.is_none() && self.egress.is_none()
    }

    /// The pod's limits from its annotations and the ADD's runtimeConfig
    /// (either may be absent), annotation first per direction.
    /// `mtu` is the pod interface's, for the default burst.
    pub fn resolve(
        pod: &PodName,
        annotations: &BTreeMap<String, String>,
        runtime: Option<&RuntimeBandwidth>,
        mtu: u32,
    ) -> Result<Limits, BandwidthError> {
        let from_annotations = Limits::from_annotations(pod, annotations, mtu)?;
        let from_runtime = match runtime {
            Some(r) => r.limits(pod, mtu)?,
            None => Limits::NONE,
        };
        Ok(Limits {
            ingress: from_annotations.ingress.or(from_runtime.ingress),
            egress: from_annotations.egress.or(from_runtime.egress),
        })
    }

    /// The limits the two annotations ask for, with default bursts.
    pub fn from_annotations(
        pod: &PodName,
        annotations: &BTreeMap<String, String>,
        mtu: u32,
    ) -> Result<Limits, BandwidthError> {
        let read = |key: &'static str| -> Result<Option<Rate>, BandwidthError> {
            let Some(value) = annotations.get(key) else {
                return Ok(None);
            };
            let bps = parse_bits_per_sec(value).map_err(|e| BandwidthError {
                pod: pod.to_string(),
                origin: Source::Annotation(key),
                value: value.clone(),
                reason: e.to_string(),
            })?;
            Ok(Some(Rate::with_default_burst(bps, mtu)))
        };
        Ok(Limits { ingress: read(INGRESS_ANNOTATION)?, egress: read(EGRESS_ANNOTATION)? })
    }
}

impl fmt::Display for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |r: Option<Rate>| r.map_or_else(|| "unshaped".to_string(), |r| r.to_string());
        write!(f, "ingress {}, egress {}", show(self.ingress), show(self.egress))
    }
}

/// `runtimeConfig.bandwidth` of a CNI request (rates in bit/s, bursts in
/// bits; 0 or absent = not set), as the CNI bandwidth capability defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeBandwidth {
    #[serde(default)]
    pub ingress_rate: u64,
    #[serde(default)]
    pub ingress_burst: u64,
    #[serde(default)]
    pub egress_rate: u64,
    #[serde(default)]
    pub egress_burst: u64,
}

impl RuntimeBandwidth {
    /// The `bandwidth` member of a request's `runtimeConfig` (`None` when
    /// the runtime passed none).
    pub fn from_runtime_config(
        pod: &PodName,
        runtime_config: &serde_json::Value,
    ) -> Result<Option<RuntimeBandwidth>, BandwidthError> {
        let Some(bw) = runtime_config.get("bandwidth") else {
            return Ok(None);
        };
        if bw.is_null() {
            return Ok(None);
        }
        // Field by field, so an error names the field and its value.
        let mut out = RuntimeBandwidth::default();
        let Some(fields) = bw.as_object() else {
            return Err(BandwidthError {
                pod: pod.to_string(),
                origin: Source::RuntimeConfig("bandwidth"),
                value: bw.to_string(),
                reason: "not an object".into(),
            });
        };
        for (name, slot) in [
            ("ingressRate", &mut out.ingress_rate),
            ("ingressBurst", &mut out.ingress_burst),
            ("egressRate", &mut out.egress_rate),
            ("egressBurst", &mut out.egress_burst),
        ] {
            match fields.get(name) {
                None | Some(serde_json::Value::Null) => {}
                Some(v) => {
                    *slot = v.as_u64().ok_or_else(|| BandwidthError {
                        pod: pod.to_string(),
                        origin: Source::RuntimeConfig(name),
                        value: v.to_string(),
                        reason: "not a non-negative integer".into(),
                    })?
                }
            }
        }
        Ok(Some(out))
    }

    /// The limits asked for; bursts below two frames of `mtu` are refused
    /// (tbf would drop every full-size packet).
    pub fn limits(&self, pod: &PodName, mtu: u32) -> Result<Limits, BandwidthError> {
        let direction = |rate: u64, burst: u64, rate_field: &'static str, burst_field: &'static str| {
            let err = |field: &'static str, value: u64, reason: String| BandwidthError {
                pod: pod.to_string(),
                origin: Source::RuntimeConfig(field),
                value: value.to_string(),
                reason,
            };
            match (rate, burst) {
                (0, 0) => Ok(None),
                (_, 0) => {
                    Err(err(burst_field, burst, format!("{rate_field} is set, so {burst_field} must be too")))
                }
                (0, _) => {
                    Err(err(rate_field, rate, format!("{burst_field} is set, so {rate_field} must be too")))
                }
                _ => {
                    if rate < MIN_BITS_PER_SEC {
                        return Err(err(rate_field, rate, QuantityError::TooSmall.to_string()));
                    }
                    if rate > MAX_BITS_PER_SEC {
                        return Err(err(rate_field, rate, QuantityError::TooLarge.to_string()));
                    }
                    if burst > MAX_BURST_BITS {
                        return Err(err(burst_field, burst, "burst above 4 GB".into()));
                    }
                    let frame_bits = 8 * (u64::from(mtu) + ETH_HEADER);
                    if burst < frame_bits {
                        return Err(err(
                            burst_field,
                            burst,
                            format!("burst below one {frame_bits}-bit frame: every full-size packet would be dropped"),
                        ));
                    }
                    Ok(Some(Rate { bits_per_sec: rate, burst_bits: burst }))
                }
            }
        };
        Ok(Limits {
            ingress: direction(self.ingress_rate, self.ingress_burst, "ingressRate", "ingressBurst")?,
            egress: direction(self.egress_rate, self.egress_burst, "egressRate", "egressBurst")?,
        })
    }
}

/// Where a bad value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A pod annotation (its key).
    Annotation(&'static str),
    /// A field of `runtimeConfig.bandwidth`.
    RuntimeConfig(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Annotation(key) => write!(f, "annotation {key}"),
            Source::RuntimeConfig(field) => write!(f, "runtimeConfig.bandwidth.{field}"),
        }
    }
}

/// A bandwidth request the agent cannot honour: becomes a CNI error at ADD,
/// a log line and Event on a live change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pod {pod}: {origin} = {value:?}: {reason}")]
pub struct BandwidthError {
    /// `namespace/name`.
    pub pod: String,
    pub origin: Source,
    /// The value as given.
    pub value: String,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTU: u32 = 1450;

    fn pod() -> PodName {
        PodName::new("shop", "web-1")
    }

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn annotations_give_rates_with_short_default_bursts() {
        let a = annotations(&[(INGRESS_ANNOTATION, "10M"), (EGRESS_ANNOTATION, "5M"), ("other", "x")]);
        let l = Limits::from_annotations(&pod(), &a, MTU).expect("valid");
        // 20 ms at the rate.
        assert_eq!(l.ingress, Some(Rate { bits_per_sec: 10_000_000, burst_bits: 200_000 }));
        assert_eq!(l.egress, Some(Rate { bits_per_sec: 5_000_000, burst_bits: 100_000 }));
        assert_eq!(Limits::from_annotations(&pod(), &BTreeMap::new(), MTU), Ok(Limits::NONE));
        assert!(Limits::NONE.is_none());
    }

    #[test]
    fn default_burst_holds_two_frames_and_at_most_4_gb() {
        // 1 kbit/s: 20 ms is 20 bits, less than a frame.
        assert_eq!(Rate::with_default_burst(1_000, 1450).burst_bits, 2 * 8 * 1464);
        assert_eq!(Rate::with_default_burst(1_000, 9000).burst_bits, 2 * 8 * 9014);
        // 1 Gbit/s: 20 ms = 2.5 MB.
        assert_eq!(Rate::with_default_burst(1_000_000_000, MTU).burst_bits, 20_000_000);
        // 1 Pbit/s: 20 ms would be 2.5 TB; capped at tbf's 4 GB.
        assert_eq!(Rate::with_default_burst(MAX_BITS_PER_SEC, MTU).burst_bits, MAX_BURST_BITS);
    }

    #[test]
    fn queue_limit_is_burst_plus_latency() {
        let r = Rate::with_default_burst(10_000_000, MTU);
        // 25 000 B burst + 25 ms * 1.25 MB/s = 31 250 B.
        assert_eq!(r.queue_limit_bytes(), 25_000 + 31_250);
        let huge = Rate { bits_per_sec: MAX_BITS_PER_SEC, burst_bits: MAX_BURST_BITS };
        assert_eq!(huge.queue_limit_bytes(), u32::MAX);
    }

    #[test]
    fn bad_annotations_name_pod_annotation_and_value() {
        for (value, reason) in [
            ("abc", "not a Kubernetes quantity"),
            ("-5M", "negative"),
            ("0", "zero or below 1 kbit/s"),
            ("1E", "above 1 Pbit/s"),
            ("", "empty"),
            ("999999999999999999999999999999999999999999", "above 1 Pbit/s"),
        ] {
            let a = annotations(&[(EGRESS_ANNOTATION, value)]);
            let e = Limits::from_annotations(&pod(), &a, MTU).expect_err(value);
            assert_eq!(e.pod, "shop/web-1");
            assert_eq!(e.origin, Source::Annotation(EGRESS_ANNOTATION));
            assert_eq!(e.value, value);
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("pod shop/web-1: annotation {EGRESS_ANNOTATION} = {value:?}: "))
            );
            assert!(text.contains(reason), "{text}");
        }
    }

    fn runtime(json: &str) -> Result<Option<RuntimeBandwidth>, BandwidthError> {
        RuntimeBandwidth::from_runtime_config(&pod(), &serde_json::from_str(json).expect("json"))
    }

    #[test]
    fn runtime_config_parses_and_zero_means_unset() {
        assert_eq!(runtime(r#"{"portMappings":[]}"#), Ok(None));
        assert_eq!(runtime(r#"{"bandwidth":null}"#), Ok(None));
        let bw = runtime(r#"{"bandwidth":{"ingressRate":10000000,"ingressBurst":80000}}"#)
            .expect("valid")
            .expect("present");
        let l = bw.limits(&pod(), MTU).expect("valid");
        assert_eq!(l.ingress, Some(Rate { bits_per_sec: 10_000_000, burst_bits: 80_000 }));
        assert_eq!(l.egress, None);
        let zero = runtime(r#"{"bandwidth":{"ingressRate":0,"ingressBurst":0}}"#).expect("ok").expect("some");
        assert_eq!(zero.limits(&pod(), MTU), Ok(Limits::NONE));
    }

    #[test]
    fn runtime_config_errors_name_the_field() {
        let check = |json: &str, field: &str, value: &str, reason: &str| {
            let e = match runtime(json) {
                Err(e) => e,
                Ok(bw) => bw.expect("present").limits(&pod(), MTU).expect_err(json),
            };
            assert_eq!(e.origin.to_string(), format!("runtimeConfig.bandwidth.{field}"), "{json}");
            assert_eq!(e.value, value, "{json}");
            assert!(e.reason.contains(reason), "{json}: {e}");
            assert!(e.to_string().starts_with("pod shop/web-1: runtimeConfig.bandwidth."), "{e}");
        };
        check(r#"{"bandwidth":{"egressRate":5000000}}"#, "egressBurst", "0", "egressRate is set");
        check(r#"{"bandwidth":{"ingressBurst":5000000}}"#, "ingressRate", "0", "ingressBurst is set");
        check(
            r#"{"bandwidth":{"ingressRate":-5,"ingressBurst":1}}"#,
            "ingressRate",
            "-5",
            "non-negative integer",
        );
        check(r#"{"bandwidth":{"ingressRate":"10M","ingressBurst":1}}"#, "ingressRate", "\"10M\"", "integer");
        check(
            r#"{"bandwidth":{"egressRate":999,"egressBurst":100000}}"#,
            "egressRate",
            "999",
            "below 1 kbit/s",
        );
        check(
            r#"{"bandwidth":{"egressRate":2000000000000000,"egressBurst":100000}}"#,
            "egressRate",
            "2000000000000000",
            "above 1 Pbit/s",
        );
        check(
            r#"{"bandwidth":{"egressRate":1000000,"egressBurst":34359738361}}"#,
            "egressBurst",
            "34359738361",
            "4 GB",
        );
        check(r#"{"bandwidth":{"egressRate":1000000,"egressBurst":8000}}"#, "egressBurst", "8000", "frame");
        check(r#"{"bandwidth":[1,2]}"#, "bandwidth", "[1,2]", "not an object");
    }

    #[test]
    fn annotation_wins_per_direction() {
        // containerd's runtimeConfig: the annotation's rate with a u32::MAX burst.
        let containerd = RuntimeBandwidth {
            ingress_rate: 10_000_000,
            ingress_burst: u64::from(u32::MAX),
            egress_rate: 2_000_000,
            egress_burst: u64::from(u32::MAX),
        };
        let a = annotations(&[(INGRESS_ANNOTATION, "10M")]);
        let l = Limits::resolve(&pod(), &a, Some(&containerd), MTU).expect("valid");
        assert_eq!(l.ingress, Some(Rate::with_default_burst(10_000_000, MTU)), "annotation's short burst");
        assert_eq!(l.egress, Some(Rate { bits_per_sec: 2_000_000, burst_bits: u64::from(u32::MAX) }));
        // Without runtimeConfig only the annotations count.
        assert_eq!(Limits::resolve(&pod(), &BTreeMap::new(), None, MTU), Ok(Limits::NONE));
        // A bad annotation is an error even when runtimeConfig is fine.
        let bad = annotations(&[(EGRESS_ANNOTATION, "fast")]);
        assert!(Limits::resolve(&pod(), &bad, Some(&containerd), MTU).is_err());
    }
}
