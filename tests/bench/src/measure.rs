//! Timed blasts for the `live` and `skb` sections: an optional warm-up
//! (so established flows are established), a probe that sizes blasts to a
//! target duration, then rounds that alternate between the nodes under
//! comparison, so a noisy neighbour slows them alike. Every blast is
//! checked: frames arrived, and by the path the side expects.
use anyhow::{ensure, Result};
use xdplb_bench_traffic::TrafficConfig;

use super::{
    progs::BenchProgs,
    sender::{blast, Sender},
    stats,
    topo::Topo,
};

/// A node under load: its topology, what the sender sends it, and a check
/// run after every timed blast with the frames delivered.
pub struct Side<'a> {
    pub t: &'a Topo,
    pub traffic: TrafficConfig,
    pub check: Box<dyn Fn(u64) -> Result<()> + 'a>,
}

impl<'a> Side<'a> {
    /// A side whose delivered frames need no further check.
    pub fn plain(t: &'a Topo, traffic: TrafficConfig) -> Self {
        Side { t, traffic, check: Box::new(|_| Ok(())) }
    }
}

/// How to measure.
pub struct How<'a> {
    pub sender: Sender,
    pub threads: &'a [usize],
    pub rounds: usize,
    /// Seconds a timed blast should take (sized by a probe) ...
    pub target_s: f64,
    /// ... with at most this many frames per thread.
    pub max_repeat: u32,
    /// Frames per thread, without a probe (floors: fixed and large).
    pub fixed_repeat: Option<u32>,
    /// Send every established flow before timing.
    pub warm_up: bool,
}

/// Per thread count: median rate, worst delivered/sent ratio, max/min rate
/// over rounds, and every round's rate.
pub struct Measured {
    /// Frames per thread of each timed blast.
    pub repeat: u32,
    pub pps: Vec<f64>,
    pub delivered: Vec<f64>,
    pub spread: Vec<f64>,
    pub rounds: Vec<Vec<f64>>,
}

impl Measured {
    fn push(&mut self, pps: &[f64], delivered: &[f64]) {
        self.pps.push(stats::median(pps));
        self.delivered.push(stats::min(delivered));
        self.spread.push(pps.iter().copied().fold(0.0, f64::max) / stats::min(pps));
        self.rounds.push(pps.to_vec());
    }

    /// Median over rounds of this side's rate divided by `other`'s, and the
    /// smallest such ratio, at thread count index `i`.
    pub fn ratio(&self, other: &Measured, i: usize) -> (f64, f64, usize) {
        let r: Vec<f64> = self.rounds[i].iter().zip(&other.rounds[i]).map(|(a, b)| a / b).collect();
        (stats::median(&r), stats::min(&r), r.len())
    }
}

/// Measures every side, round by round in turn, at every thread count.
pub fn measure(progs: &mut BenchProgs, sides: &[Side], how: &How) -> Result<Vec<Measured>> {
    let max_threads = *how.threads.iter().max().unwrap_or(&1);
    let mut out = Vec::new();
    for s in sides {
        if how.warm_up {
            // Every established flow twice per thread.
            let frames = s.traffic.flows.saturating_mul(2).clamp(1 << 12, 1 << 16);
            blast(how.sender, progs, s.t, &s.traffic, max_threads, frames)?;
        }
        let repeat = match how.fixed_repeat {
            Some(r) => r,
            None => probe(progs, s, how)?,
        };
        out.push(Measured { repeat, pps: Vec::new(), delivered: Vec::new(), spread: Vec::new(), rounds: Vec::new() });
    }
    for &n in how.threads {
        let mut pps = vec![Vec::new(); sides.len()];
        let mut delivered = vec![Vec::new(); sides.len()];
        for _ in 0..how.rounds.max(1) {
            for (i, s) in sides.iter().enumerate() {
                let (got, secs) = blast(how.sender, progs, s.t, &s.traffic, n, out[i].repeat)?;
                if std::env::var_os("XDPLB_BENCH_DEBUG").is_some() {
                    s.t.dump();
                }
                let sent = n as u64 * out[i].repeat as u64;
                ensure!(got > 0, "no frame arrived where it was counted ({n} threads, {sent} sent)");
                (s.check)(got)?;
                pps[i].push(got as f64 / secs);
                delivered[i].push(got as f64 / sent as f64);
            }
        }
        for (i, m) in out.iter_mut().enumerate() {
            m.push(&pps[i], &delivered[i]);
        }
    }
    Ok(out)
}

/// Frames per thread for a timed blast of about `how.target_s` (at most
/// `how.max_repeat`). Two probes: their difference cancels the fixed cost
/// of a call (~20 ms here for live frames).
fn probe(progs: &mut BenchProgs, s: &Side, how: &How) -> Result<u32> {
    let (a, ta) = blast(how.sender, progs, s.t, &s.traffic, 1, 1 << 12)?;
    let (b, tb) = blast(how.sender, progs, s.t, &s.traffic, 1, 1 << 14)?;
    let rate = if tb > ta && b > a { (b - a) as f64 / (tb - ta) } else { b as f64 / tb };
    Ok(((rate * how.target_s) as u32).clamp(1 << 12, how.max_repeat))
}
