//! Steady UDP traffic at a known rate, each datagram a new flow, with a log
//! of what was sent when: a test compares a rate measured elsewhere (by
//! `lb-agent top`, by Prometheus) with what was really sent in the same
//! wall-clock window.
use std::{
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use crate::netns::Netns;

/// The first source port; each datagram takes the next one, so every
/// datagram is a flow the dataplane has not seen (until 55,000 datagrams).
const FIRST_PORT: u16 = 10_000;
/// The sender catches up with the clock this often.
const TICK: Duration = Duration::from_millis(10);

/// A sender running in a namespace until dropped.
pub struct UdpFlows {
    stop: Arc<AtomicBool>,
    /// (Unix ms, datagrams sent so far), one entry per tick.
    log: Arc<Mutex<Vec<(u64, u64)>>>,
    thread: Option<JoinHandle<()>>,
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

impl UdpFlows {
    /// Sends `per_s` 64-byte datagrams a second from `ns` to `to`, each from
    /// a new source port, paced on the clock (a late tick sends what it owes).
    pub fn start(ns: &Netns, to: SocketAddr, per_s: u32) -> Self {
        Self::start_at(ns, to, per_s, FIRST_PORT)
    }

    /// As [`UdpFlows::start`], with source ports from `first_port` up (two
    /// senders in one namespace need ranges of their own).
    pub fn start_at(ns: &Netns, to: SocketAddr, per_s: u32, first_port: u16) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(vec![(unix_ms(), 0)]));
        let (st, lg) = (stop.clone(), log.clone());
        let thread = ns.spawn(move || {
            let start = Instant::now();
            let mut sent = 0u64;
            let mut port = first_port;
            while !st.load(Ordering::Relaxed) {
                let owed = (start.elapsed().as_secs_f64() * per_s as f64) as u64;
                while sent < owed && port < u16::MAX {
                    // A port in use (unlikely in a fresh namespace) is skipped.
                    if let Ok(s) = UdpSocket::bind(("0.0.0.0", port)) {
                        if s.send_to(&[0x5a; 64], to).is_ok() {
                            sent += 1;
                        }
                    }
                    port += 1;
                }
                lg.lock().unwrap().push((unix_ms(), sent));
                std::thread::sleep(TICK);
            }
        });
        Self { stop, log, thread: Some(thread) }
    }

    /// Datagrams sent so far.
    pub fn sent(&self) -> u64 {
        self.log.lock().unwrap().last().map_or(0, |e| e.1)
    }

    /// Datagrams per second sent between two Unix times (ms), from the log
    /// (accurate to one tick at each end).
    pub fn rate_between(&self, start_ms: u64, end_ms: u64) -> f64 {
        let log = self.log.lock().unwrap();
        let at = |t: u64| log.iter().take_while(|e| e.0 <= t).last().map_or(0, |e| e.1);
        (at(end_ms) - at(start_ms)) as f64 * 1000.0 / (end_ms - start_ms).max(1) as f64
    }
}

impl Drop for UdpFlows {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
