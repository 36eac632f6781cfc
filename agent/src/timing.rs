//! Where a CNI request's time goes, stage by stage: the dataplane records
//! each step of an ADD or DEL (netlink, OVSDB, the flow bundle, tc, ...),
//! the socket server what it adds around it, and both go to one debug line
//! per request (target `k8s_ovs_agent::timing`). `bench --bin cni --profile`
//! turns on that target and reads the lines back with [`parse`]; nothing
//! else depends on them, and recording costs a clock read per stage.
//!
//! The line is `cni timing kind=<kind> <stage>=<microseconds> ...`, stages
//! in the order recorded. Steps that run at once are recorded each with
//! its own time, so stages need not add up to the total.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::time::{Duration, Instant};

/// The tracing target of the timing lines.
pub const TARGET: &str = "k8s_ovs_agent::timing";
/// Their message.
pub const MESSAGE: &str = "cni timing";

/// The stages of one request, in the order they were recorded.
#[derive(Debug, Clone)]
pub struct Stages {
    started: Instant,
    lap: Instant,
    entries: Vec<(&'static str, Duration)>,
}

impl Default for Stages {
    fn default() -> Stages {
        Stages::new()
    }
}

impl Stages {
    pub fn new() -> Stages {
        let now = Instant::now();
        Stages { started: now, lap: now, entries: Vec::new() }
    }

    /// Records `d` for `stage` (added to what the stage has already).
    pub fn record(&mut self, stage: &'static str, d: Duration) {
        match self.entries.iter_mut().find(|(s, _)| *s == stage) {
            Some((_, total)) => *total += d,
            None => self.entries.push((stage, d)),
        }
    }

    /// Records the time since the previous lap (or the start) for `stage`.
    pub fn lap(&mut self, stage: &'static str) {
        let now = Instant::now();
        self.record(stage, now - self.lap);
        self.lap = now;
    }

    /// Restarts the lap clock without recording (time not worth a stage).
    pub fn skip(&mut self) {
        self.lap = Instant::now();
    }

    /// Since [`Stages::new`].
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Logs the stages and the total at debug level.
    pub fn log(&self, kind: &str) {
        tracing::debug!(target: TARGET, "{MESSAGE} kind={kind} {self} total={}", self.elapsed().as_micros());
    }
}

impl fmt::Display for Stages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (stage, d)) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{stage}={}", d.as_micros())?;
        }
        Ok(())
    }
}

/// Runs `fut` and returns its output with how long it took (for steps
/// that run at once, each timed on its own).
pub async fn timed<F: Future>(fut: F) -> (F::Output, Duration) {
    let t = Instant::now();
    let out = fut.await;
    (out, t.elapsed())
}

/// One timing line read back: its kind and every stage (with `total`) in
/// microseconds. `None` for any other line.
pub fn parse(line: &str) -> Option<(String, BTreeMap<String, u64>)> {
    let rest = &line[line.find(MESSAGE)? + MESSAGE.len()..];
    let mut kind = None;
    let mut stages = BTreeMap::new();
    for word in rest.split_whitespace() {
        // Log lines may carry ANSI colour codes around fields.
        let word: String = strip_ansi(word);
        let Some((k, v)) = word.split_once('=') else { continue };
        if k == "kind" {
            kind = Some(v.to_string());
        } else if let Ok(us) = v.parse::<u64>() {
            stages.insert(k.to_string(), us);
        }
    }
    Some((kind?, stages))
}

/// `s` without terminal colour sequences (ESC [ ... letter).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_print_and_parse_back() {
        let mut s = Stages::new();
        s.record("link", Duration::from_micros(1500));
        s.record("port", Duration::from_micros(40));
        s.record("link", Duration::from_micros(500));
        assert_eq!(s.to_string(), "link=2000 port=40");
        let line = format!("2026-12-01T14:42:30Z DEBUG {TARGET}: {MESSAGE} kind=ADD {s} total=2100");
        let (kind, stages) = parse(&line).expect("a timing line");
        assert_eq!(kind, "ADD");
        assert_eq!(stages.get("link"), Some(&2000));
        assert_eq!(stages.get("port"), Some(&40));
        assert_eq!(stages.get("total"), Some(&2100));
        assert_eq!(parse("2026 INFO pod added"), None);
    }

    #[test]
    fn colour_codes_are_ignored() {
        let line = "\u{1b}[2mk8s_ovs_agent::timing\u{1b}[0m: cni timing kind=DEL flows=12 total=30";
        let (kind, stages) = parse(line).expect("a timing line");
        assert_eq!(kind, "DEL");
        assert_eq!(stages.get("flows"), Some(&12));
    }
}
