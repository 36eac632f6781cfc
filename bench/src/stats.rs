//! Latency summaries of the benchmarks' samples (milliseconds).

use serde_json::{json, Value};

/// The `p` quantile (0..=1) of sorted samples, nearest rank; 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Count, p50/p90/p99, max and mean.
pub fn percentiles(mut ms: Vec<f64>) -> Value {
    ms.sort_by(|a, b| a.total_cmp(b));
    let mean = ms.iter().sum::<f64>() / ms.len().max(1) as f64;
    json!({
        "count": ms.len(),
        "p50_ms": percentile(&ms, 0.50),
        "p90_ms": percentile(&ms, 0.90),
        "p99_ms": percentile(&ms, 0.99),
        "max_ms": ms.last().copied().unwrap_or(0.0),
        "mean_ms": mean,
    })
}

/// [`percentiles`] and the raw samples (to the microsecond, in the order
/// measured, for `--bin plot`).
pub fn summary(ms: Vec<f64>) -> Value {
    let samples_ms: Vec<f64> = ms.iter().map(|v| (v * 1e3).round() / 1e3).collect();
    let mut v = percentiles(ms);
    v["samples_ms"] = json!(samples_ms);
    v
}

/// `a[field] / b[field]` of two summaries (0 when either is missing).
pub fn ratio(a: &Value, b: &Value, field: &str) -> f64 {
    a[field].as_f64().unwrap_or(0.0) / b[field].as_f64().unwrap_or(1.0).max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = percentiles(v.clone());
        assert_eq!(s["p50_ms"], 51.0);
        assert_eq!(s["p99_ms"], 99.0);
        assert_eq!(s["max_ms"], 100.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(summary(vec![2.0, 1.0])["samples_ms"], json!([2.0, 1.0]), "samples keep their order");
        assert_eq!(ratio(&json!({"p": 4.0}), &json!({"p": 2.0}), "p"), 2.0);
    }
}
