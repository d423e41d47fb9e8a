//! Leader election for the allocator: one `coordination.k8s.io/v1` Lease,
//! taken and renewed with optimistic concurrency (every write carries the
//! resourceVersion read, so of two agents racing for it one gets 409 and
//! stays a follower). As client-go's elector: expiry is judged by the
//! follower's own clock from when it last saw the record change, not from
//! the holder's timestamps, so clock skew between nodes does not matter;
//! the holder stops acting once it has failed to renew for the renew
//! deadline, which is shorter than the lease, so two leaders never act at
//! once unless a clock runs more than (duration - deadline) fast.
use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{api::PostParams, Api, Client};

/// Lease timings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timings {
    /// How long a lease not renewed stays the holder's.
    pub duration: Duration,
    /// How long the holder keeps acting without a successful renew.
    pub renew_deadline: Duration,
    /// How often the holder renews and followers retry.
    pub retry: Duration,
}

impl Timings {
    /// client-go's defaults scaled to `duration`: deadline 2/3, retry 2/15.
    pub fn for_duration(duration: Duration) -> Self {
        Self {
            duration,
            renew_deadline: duration * 2 / 3,
            retry: (duration * 2 / 15).max(Duration::from_millis(200)),
        }
    }
}

impl Default for Timings {
    fn default() -> Self {
        Self::for_duration(Duration::from_secs(15))
    }
}

/// One agent's view of the election.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timings: Timings,
    /// The record last read: (resourceVersion, holder, when it was first seen).
    observed: Option<(String, String, Instant)>,
    /// When this agent last wrote the lease as holder.
    renewed: Option<Instant>,
}

impl Elector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timings: Timings,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            timings,
            observed: None,
            renewed: None,
        }
    }

    /// Whether this agent may act as leader now.
    pub fn is_leader(&self) -> bool {
        self.renewed
            .is_some_and(|t| t.elapsed() < self.timings.renew_deadline)
    }

    /// The holder last seen ("" for none).
    pub fn holder(&self) -> &str {
        self.observed.as_ref().map_or("", |(_, h, _)| h.as_str())
    }

    pub fn timings(&self) -> Timings {
        self.timings
    }

    /// One round: create the lease, renew it, or take it over once expired.
    /// Returns whether this agent holds it afterwards. An API error leaves
    /// the state as it was (the holder keeps acting until its deadline).
    pub async fn step(&mut self) -> Result<bool, kube::Error> {
        let now = Instant::now();
        let current = match self.api.get_opt(&self.name).await? {
            None => {
                let lease = self.record(None, 0);
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(l) => Ok(self.won(&l, now)),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e),
                };
            }
            Some(l) => l,
        };
        let rv = current
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default();
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        if self
            .observed
            .as_ref()
            .is_none_or(|(seen, _, _)| *seen != rv)
        {
            self.observed = Some((rv.clone(), holder.clone(), now));
        }
        let seen_at = self.observed.as_ref().map_or(now, |(_, _, t)| *t);
        let duration = spec
            .lease_duration_seconds
            .map_or(self.timings.duration, |s| {
                Duration::from_secs(s.max(1) as u64)
            });
        let mine = holder == self.identity;
        let expired = holder.is_empty() || now.duration_since(seen_at) >= duration;
        if !mine && !expired {
            self.renewed = None;
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let mut lease = self.record(
            if mine {
                spec.acquire_time.clone()
            } else {
                None
            },
            transitions,
        );
        lease.metadata.resource_version = Some(rv);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(l) => {
                if !mine {
                    tracing::info!(lease = %self.name, previous = %holder, "took over the allocator lease");
                }
                Ok(self.won(&l, now))
            }
            // Someone else wrote first: they hold it (or renewed).
            Err(kube::Error::Api(e)) if e.code == 409 => {
                self.renewed = None;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn won(&mut self, l: &Lease, at: Instant) -> bool {
        let rv = l.metadata.resource_version.clone().unwrap_or_default();
        self.observed = Some((rv, self.identity.clone(), at));
        self.renewed = Some(at);
        true
    }

    /// The lease as this agent writes it.
    fn record(&self, acquired: Option<MicroTime>, transitions: i32) -> Lease {
        let now = MicroTime(Timestamp::now());
        Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(self.timings.duration.as_secs().max(1) as i32),
                acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
                renew_time: Some(now),
                lease_transitions: Some(transitions),
                ..Default::default()
            }),
        }
    }
}
