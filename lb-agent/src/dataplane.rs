//! Typed access to the pinned maps: what the agent writes, and what the CLI,
//! metrics and tests read. Opening by pin path works whether or not an agent
//! is running. The per-family maps are one generic [`FamilyMaps`], read and
//! written by the same code for IPv4 and IPv6; the IPv6 ones are optional
//! (`None` when the pinned programs predate them).
use std::{
    os::fd::{AsFd as _, BorrowedFd},
    path::Path,
};

use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, DevMapHash, HashMap, Map, MapData, PerCpuArray,
};
use lb_common::{
    maps, Addr4, Addr6, AffinityKey, AffinityV4, Backend, BackendId, Config, Flow, FlowKey, NatConfig,
    ServiceKey, ServiceStats, ServiceV4, SlotKey, SourceRange,
};

use crate::{bpfsys, diff::MapContents, family::Family};

/// One family's maps (`…_v4` or `…_v6`).
pub struct FamilyMaps<A: Family> {
    pub services: HashMap<MapData, ServiceKey<A>, ServiceV4>,
    /// Indexed by backend id; an empty slot ([`Backend::is_empty`]) holds
    /// no backend.
    pub backends: Array<MapData, Backend<A>>,
    /// An LRU hash; aya's `HashMap` handles both hash kinds.
    pub conntrack: HashMap<MapData, FlowKey<A>, Flow<A>>,
    pub affinity: HashMap<MapData, AffinityKey<A>, AffinityV4>,
    pub source_ranges: LpmTrie<MapData, SourceRange<A>, u8>,
    /// Index 0: this family's SNAT address and ports.
    pub nat_config: Array<MapData, NatConfig<A>>,
}

/// A family whose maps the dataplane holds.
pub trait MapFamily: Family {
    /// This family's maps of `dp`, when the pinned programs have them.
    fn maps(dp: &Dataplane) -> Option<&FamilyMaps<Self>>;
    /// This family's maps and the shared slots, borrowed together.
    fn split(dp: &mut Dataplane) -> (Option<&mut FamilyMaps<Self>>, &mut HashMap<MapData, SlotKey, BackendId>);
}

impl MapFamily for Addr4 {
    fn maps(dp: &Dataplane) -> Option<&FamilyMaps<Self>> {
        Some(&dp.v4)
    }
    fn split(dp: &mut Dataplane) -> (Option<&mut FamilyMaps<Self>>, &mut HashMap<MapData, SlotKey, BackendId>) {
        (Some(&mut dp.v4), &mut dp.slots)
    }
}

impl MapFamily for Addr6 {
    fn maps(dp: &Dataplane) -> Option<&FamilyMaps<Self>> {
        dp.v6.as_ref()
    }
    fn split(dp: &mut Dataplane) -> (Option<&mut FamilyMaps<Self>>, &mut HashMap<MapData, SlotKey, BackendId>) {
        (dp.v6.as_mut(), &mut dp.slots)
    }
}

/// A failed step on the pinned maps: which map, what was being done, and,
/// when a map is full, the `lb-agent run` flag that sizes it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening pinned map {} (is the agent installed, with this --pin-path?)", .path.display())]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("{map}: unexpected map type (pinned by another xdplb version?)")]
    WrongType {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("{map} is full: {what} does not fit; raise {flag}")]
    Full {
        map: &'static str,
        what: String,
        flag: &'static str,
    },
    #[error("writing {what} to {map}")]
    Write {
        map: &'static str,
        what: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("reading {map}")]
    Read {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("adding ifindex {ifindex} to {}", maps::REDIRECT_IFACES)]
    Redirect {
        ifindex: u32,
        #[source]
        source: aya::maps::xdp::XdpMapError,
    },
    #[error("backend {id} cannot be written to {}: id 0 and address 0.0.0.0 mean no backend", maps::BACKENDS_V4)]
    NoBackend { id: BackendId },
    /// A lookup or removal aya refused (a syscall error, a key of the wrong size).
    #[error("accessing a pinned map")]
    Map(#[from] aya::maps::MapError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub struct Dataplane {
    pub v4: FamilyMaps<Addr4>,
    /// `None` when the pinned programs have no IPv6 maps yet: nothing of
    /// IPv6 is written (logged once per sync that wanted to).
    pub v6: Option<FamilyMaps<Addr6>>,
    pub slots: HashMap<MapData, SlotKey, BackendId>,
    pub service_stats: PerCpuArray<MapData, ServiceStats>,
    pub counters: PerCpuArray<MapData, u64>,
    pub config: Array<MapData, Config>,
    pub backend_load: Array<MapData, u64>,
    pub redirect_ifaces: DevMapHash<MapData>,
    pub sock_netns: Array<MapData, u64>,
    /// Per backend id: new flows refused for want of a SNAT port.
    pub snat_exhausted: PerCpuArray<MapData, u64>,
    /// The source ports replies may have (`replyports`); `None` when the
    /// pinned programs predate it.
    pub reply_ports: Option<crate::replyports::ReplyPorts>,
    /// The destination ports of frontends (`serviceports`); `None` when
    /// the pinned programs predate it.
    pub service_ports: Option<crate::portbits::PortBits>,
    /// The generation of the programs' cached next hops (`lb_common::hop`);
    /// `None` when the pinned programs predate the cache.
    pub next_hop_gen: Option<Array<MapData, u32>>,
}

/// The fd of an opened map, for [`bpfsys`] calls.
fn fd<M: aya::maps::IterableMap<K, V>, K: aya::Pod, V>(map: &M) -> BorrowedFd<'_> {
    map.map().fd().as_fd()
}

/// The pinned port bitmap `name`, mapped; `None` when it is not pinned.
fn open_bits(dir: &Path, name: &'static str) -> Result<Option<crate::portbits::PortBits>> {
    let path = dir.join(name);
    if !path.exists() {
        return Ok(None);
    }
    let data = MapData::from_pin(&path).map_err(|source| Error::Open { path, source })?;
    let bits = crate::portbits::PortBits::map(data.fd().as_fd()).map_err(|source| Error::Read { map: name, source })?;
    Ok(Some(bits))
}

fn open<T>(dir: &Path, name: &'static str) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(|source| Error::Open { path, source })?;
    let map = Map::from_map_data(data).map_err(|source| Error::WrongType { map: name, source })?;
    T::try_from(map).map_err(|source| Error::WrongType { map: name, source })
}

impl<A: MapFamily> FamilyMaps<A> {
    /// Opens family `A`'s maps pinned under `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            services: open(dir, A::MAPS.services)?,
            backends: open(dir, A::MAPS.backends)?,
            conntrack: open(dir, A::MAPS.conntrack)?,
            affinity: open(dir, A::MAPS.affinity)?,
            source_ranges: open(dir, A::MAPS.source_ranges)?,
            nat_config: open(dir, A::MAPS.nat_config)?,
        })
    }

    /// Every backend (the non-empty slots of the array), by id, read in
    /// batches (a few syscalls for the whole array).
    pub fn backends(&self) -> Result<std::collections::BTreeMap<BackendId, Backend<A>>> {
        let mut out = std::collections::BTreeMap::new();
        bpfsys::for_each_batch(fd(&self.backends), |id: &BackendId, b: &Backend<A>| {
            if !b.is_empty() {
                out.insert(*id, *b);
            }
        })
        .map_err(|source| Error::Read { map: A::MAPS.backends, source })?;
        Ok(out)
    }

    /// Every conntrack entry, read in batches.
    pub fn flows(&self) -> Result<Vec<(FlowKey<A>, Flow<A>)>> {
        let mut out = Vec::new();
        bpfsys::for_each_batch(fd(&self.conntrack), |k: &FlowKey<A>, f: &Flow<A>| out.push((*k, *f)))
            .map_err(|source| Error::Read { map: A::MAPS.conntrack, source })?;
        Ok(out)
    }

    /// What the agent-owned maps of the family hold now, with the entries
    /// of `slots` that belong to its service ids (`orphans` too: slots no
    /// service of either family names, so a sync removes them).
    fn contents(&self, slots: &std::collections::BTreeMap<SlotKey, BackendId>, other_ids: &std::collections::BTreeSet<u32>, orphans: bool) -> Result<MapContents<A>> {
        let services: std::collections::BTreeMap<ServiceKey<A>, ServiceV4> = self.services.iter().collect::<Result<_, _>>()?;
        let ids: std::collections::BTreeSet<u32> = services.values().map(|v| v.id).collect();
        Ok(MapContents {
            slots: slots
                .iter()
                .filter(|(k, _)| ids.contains(&k.service_id) || (orphans && !other_ids.contains(&k.service_id)))
                .map(|(k, v)| (*k, *v))
                .collect(),
            services,
            backends: self.backends()?,
            source_ranges: self
                .source_ranges
                .iter()
                .map(|r| r.map(|(k, v)| ((k.prefix_len(), k.data()), v)))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Adds the family's live forward flows per backend id to `live`;
    /// returns the family's backend ids.
    fn count_live(&self, cfg: &Config, now: u64, live: &mut std::collections::BTreeMap<BackendId, u64>) -> Result<Vec<BackendId>> {
        for (k, f) in self.flows()? {
            if f.direction != lb_common::direction::FORWARD || f.flags & lb_common::flow_flags::CLOSING != 0 {
                continue;
            }
            let timeout = cfg.idle_timeout_s(k.proto);
            if now.saturating_sub(f.last_seen_ns) <= timeout as u64 * 1_000_000_000 {
                *live.entry(f.backend_id).or_default() += 1;
            }
        }
        Ok(self.backends()?.into_keys().collect())
    }

    /// The service ids the family's frontends name, read in batches.
    fn service_ids(&self) -> std::collections::BTreeSet<u32> {
        let mut ids = std::collections::BTreeSet::new();
        // A failed read leaves the set short; callers treat it as advisory.
        let _ = bpfsys::for_each_batch(fd(&self.services), |_: &ServiceKey<A>, v: &ServiceV4| {
            ids.insert(v.id);
        });
        ids
    }

    /// Removes the ClientIP affinity entries of `service_ids`; returns how
    /// many went.
    pub fn forget_affinity(&mut self, service_ids: &std::collections::BTreeSet<u32>) -> Result<usize> {
        let stale: Vec<AffinityKey<A>> = self
            .affinity
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| service_ids.contains(&k.service_id))
            .collect();
        for k in &stale {
            ignore_missing(self.affinity.remove(k))?;
        }
        Ok(stale.len())
    }

    /// The affinity entry of a client, if any.
    pub fn affinity(&self, key: &AffinityKey<A>) -> Result<Option<AffinityV4>> {
        match self.affinity.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

impl Dataplane {
    /// Opens every map pinned under `dir`; the IPv6 ones only when pinned.
    pub fn open(dir: &Path) -> Result<Self> {
        let v6 = if dir.join(maps::SERVICES_V6).exists() { Some(FamilyMaps::open(dir)?) } else { None };
        Ok(Self {
            v4: FamilyMaps::open(dir)?,
            v6,
            slots: open(dir, maps::SERVICE_SLOTS)?,
            service_stats: open(dir, maps::SERVICE_STATS)?,
            counters: open(dir, maps::COUNTERS)?,
            config: open(dir, maps::CONFIG)?,
            backend_load: open(dir, maps::BACKEND_LOAD)?,
            redirect_ifaces: open(dir, maps::REDIRECT_IFACES)?,
            sock_netns: open(dir, maps::SOCK_NETNS)?,
            snat_exhausted: open(dir, maps::SNAT_EXHAUSTED)?,
            reply_ports: open_bits(dir, maps::REPLY_PORTS)?,
            service_ports: open_bits(dir, maps::SERVICE_PORTS)?,
            next_hop_gen: if dir.join(maps::NEXT_HOP_GEN).exists() { Some(open(dir, maps::NEXT_HOP_GEN)?) } else { None },
        })
    }

    /// The per-CPU counters of `lb_common::counter`, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<u64>> {
        (0..lb_common::counter::COUNT).map(|i| self.counter(i)).collect()
    }

    /// One per-CPU counter of `lb_common::counter`, summed over CPUs.
    pub fn counter(&self, idx: u32) -> Result<u64> {
        Ok(self.counters.get(&idx, 0)?.iter().sum())
    }

    /// The stats of `service_id`, summed over CPUs.
    pub fn service_stats(&self, service_id: u32) -> Result<ServiceStats> {
        let mut total = ServiceStats::default();
        for s in self.service_stats.get(&service_id, 0)?.iter() {
            total += *s;
        }
        Ok(total)
    }

    /// The service ids the frontends of both families name (0, a ClusterIP
    /// address entry, left out): what a metrics scrape needs, without the
    /// slots.
    pub fn service_ids(&self) -> std::collections::BTreeSet<u32> {
        let mut ids = self.v4.service_ids();
        if let Some(v6) = &self.v6 {
            ids.extend(v6.service_ids());
        }
        ids.remove(&0);
        ids
    }

    /// Every IPv4 backend, by id (see [`FamilyMaps::backends`]).
    pub fn backends(&self) -> Result<std::collections::BTreeMap<BackendId, lb_common::BackendV4>> {
        self.v4.backends()
    }

    /// Every IPv4 conntrack entry (see [`FamilyMaps::flows`]).
    pub fn flows(&self) -> Result<Vec<(lb_common::FlowKeyV4, lb_common::FlowV4)>> {
        self.v4.flows()
    }

    /// The entries of `map` (one of these hashes, pinned as `name`),
    /// counted in batches.
    pub fn count<M, K, V>(map: &M, name: &'static str) -> Result<usize>
    where
        M: aya::maps::IterableMap<K, V>,
        K: aya::Pod + bytemuck::Pod,
        V: bytemuck::Pod,
    {
        bpfsys::count::<K, V>(fd(map)).map_err(|source| Error::Read { map: name, source })
    }
}

impl Dataplane {
    /// What the IPv4 agent-owned maps hold now ([`Dataplane::family_contents`] for either).
    pub fn contents(&self) -> Result<MapContents> {
        self.family_contents::<Addr4>()
    }

    /// What family `A`'s agent-owned maps hold now (empty when the family's
    /// maps are not pinned). Slots go to the family of the service naming
    /// them; those no service names go to IPv4, so a sync removes them.
    pub fn family_contents<A: MapFamily>(&self) -> Result<MapContents<A>> {
        let Some(maps) = A::maps(self) else { return Ok(MapContents::default()) };
        // In batches: with thousands of Maglev services the slots run to
        // millions, two syscalls each when read key by key.
        let mut slots = std::collections::BTreeMap::new();
        bpfsys::for_each_batch(fd(&self.slots), |k: &SlotKey, b: &BackendId| {
            slots.insert(*k, *b);
        })
        .map_err(|source| Error::Read { map: lb_common::maps::SERVICE_SLOTS, source })?;
        let ipv4 = A::FAMILY == crate::family::IpFamily::IPv4;
        // Orphan slots go to IPv4: those IPv6 service ids name are not orphans.
        let other_ids = if ipv4 { self.v6.as_ref().map(|v6| v6.service_ids()).unwrap_or_default() } else { Default::default() };
        maps.contents(&slots, &other_ids, ipv4)
    }

    /// Applies `diff` in an order where no packet meets a dangling reference,
    /// and where removals free their space before upserts need it (a full
    /// map must not block the removals that would make room):
    /// 1. removed frontends go, then the slots and source ranges of service
    ///    ids no frontend refers to any more (checked against the maps);
    /// 2. upserts: source ranges, backends, slots, then services — a
    ///    service's count grows only after its slots exist;
    /// 3. the other removals: slots (above a shrunk count, now unread),
    ///    backends (no slot points to them any more), source ranges.
    ///
    /// The port bitmaps around them: backends' and frontends' ports are
    /// marked before anything is written; a removed frontend's port is
    /// cleared last, when no frontend of either family has it any more.
    pub fn apply<A: MapFamily>(&mut self, diff: &crate::diff::Diff<A>) -> Result<()> {
        // A backend's port first: its replies are looked for at tc egress
        // only on marked ports (`replyports`).
        if let Some(rp) = &self.reply_ports {
            for (_, v) in &diff.backends.upsert {
                rp.mark(v.port);
            }
        }
        // A frontend's port too: XDP looks only marked ports up (`serviceports`).
        if let Some(sp) = &self.service_ports {
            for (k, _) in diff.services.upsert.iter().filter(|(k, _)| !k.is_address()) {
                sp.mark(k.port);
            }
        }
        self.write::<A>(diff)?;
        // After the removals: a port goes when no frontend has it any more.
        let Some(sp) = &self.service_ports else { return Ok(()) };
        let kept: std::collections::BTreeSet<[u8; 2]> = diff.services.upsert.iter().map(|(k, _)| k.port).collect();
        let gone = diff.services.remove.iter().filter(|k| !k.is_address()).map(|k| k.port).filter(|p| !kept.contains(p)).collect();
        crate::serviceports::unmark_unused(sp, gone, fd(&self.v4.services), self.v6.as_ref().map(|v6| fd(&v6.services)))
            .map_err(|source| Error::Read { map: A::MAPS.services, source })
    }

    /// [`Dataplane::apply`]'s writes, in its order.
    fn write<A: MapFamily>(&mut self, diff: &crate::diff::Diff<A>) -> Result<()> {
        let (family, slots) = A::split(self);
        let Some(fm) = family else {
            // Once per process: every sync with IPv6 Services would repeat it.
            static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if !diff.is_empty() && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(writes = diff.len(), "the loaded programs have no {} maps: {} frontends are not programmed (an lb-ebpf with them is needed)", A::FAMILY, A::FAMILY);
            }
            return Ok(());
        };
        for k in &diff.services.remove {
            ignore_missing(fm.services.remove(k))?;
        }
        // Ids a frontend still refers to: as the upserts will leave them, and
        // as the maps hold them until those upserts (only these may differ;
        // an unchanged frontend reads no slot that is being removed).
        let mut referenced: std::collections::BTreeSet<u32> = diff.services.upsert.iter().map(|(_, v)| v.id).collect();
        if !diff.slots.remove.is_empty() || !diff.source_ranges.remove.is_empty() {
            for (k, _) in &diff.services.upsert {
                if let Ok(v) = fm.services.get(k, 0) {
                    referenced.insert(v.id);
                }
            }
        }
        let early_slot = |k: &SlotKey| !referenced.contains(&k.service_id);
        let early_range = |r: &SourceRange<A>| !referenced.contains(&u32::from_be_bytes(r.service_id));
        for k in diff.slots.remove.iter().filter(|k| early_slot(k)) {
            ignore_missing(slots.remove(k))?;
        }
        for (len, r) in diff.source_ranges.remove.iter().filter(|(_, r)| early_range(r)) {
            ignore_missing(fm.source_ranges.remove(&Key::new(*len, *r)))?;
        }

        for ((len, r), v) in &diff.source_ranges.upsert {
            let res = fm.source_ranges.insert(&Key::new(*len, *r), v, 0);
            write_result(res, A::MAPS.source_ranges, || {
                format!("source range {}/{} of service {}", r.addr.to_ip(), len - 32, u32::from_be_bytes(r.service_id))
            })?;
        }
        // Id 0 (no backend) and 0.0.0.0 (an empty slot) are never written.
        if let Some((k, _)) = diff.backends.upsert.iter().find(|(k, v)| *k == 0 || v.is_empty()) {
            return Err(Error::NoBackend { id: *k });
        }
        let ups = &diff.backends.upsert;
        write_batch(fd(&fm.backends), ups, A::MAPS.backends, |i| format!("backend {}", ups[i].0))?;
        let ups = &diff.slots.upsert;
        write_batch(fd(slots), ups, maps::SERVICE_SLOTS, |i| format!("slot {} of service {}", ups[i].0.slot, ups[i].0.service_id))?;
        // Services whose ClientIP affinity is switched off: their affinity
        // entries go, so switching it on again starts afresh, as kube-proxy's
        // affinity sets (nftables) or recent lists (iptables) are deleted.
        let mut affinity_off = std::collections::BTreeSet::new();
        for (k, v) in &diff.services.upsert {
            if v.affinity_timeout_s == 0 {
                if let Ok(old) = fm.services.get(k, 0) {
                    if old.affinity_timeout_s != 0 && old.id == v.id {
                        affinity_off.insert(v.id);
                    }
                }
            }
        }
        let ups = &diff.services.upsert;
        write_batch(fd(&fm.services), ups, A::MAPS.services, |i| format!("service {}", ups[i].0))?;
        if !affinity_off.is_empty() {
            fm.forget_affinity(&affinity_off)?;
        }

        for k in diff.slots.remove.iter().filter(|k| !early_slot(k)) {
            ignore_missing(slots.remove(k))?;
        }
        for k in &diff.backends.remove {
            // Removing is emptying the slot; an id past the end is already gone.
            match fm.backends.set(*k, Backend::<A>::EMPTY, 0) {
                Err(aya::maps::MapError::OutOfBounds { .. }) => {}
                r => r.map_err(|source| Error::Write { map: A::MAPS.backends, what: format!("the emptying of backend {k}"), source })?,
            }
        }
        for (len, r) in diff.source_ranges.remove.iter().filter(|(_, r)| !early_range(r)) {
            ignore_missing(fm.source_ranges.remove(&Key::new(*len, *r)))?;
        }
        Ok(())
    }

    /// Live flows of a backend, as the dataplane counts them.
    pub fn backend_load(&self, id: BackendId) -> Result<u64> {
        Ok(self.backend_load.get(&id, 0)?)
    }

    /// Sets a backend's live flow count (the agent's recount from conntrack).
    pub fn set_backend_load(&mut self, id: BackendId, flows: u64) -> Result<()> {
        let r = self.backend_load.set(id, flows, 0);
        write_result(r, maps::BACKEND_LOAD, || format!("the load of backend {id}"))
    }

    /// Recounts every backend's live flows from conntrack and corrects the
    /// counts. The dataplane counts flows up on creation and down on
    /// FIN/RST; flows that end by idling out or by LRU eviction are only
    /// forgotten here. Returns how many counts changed.
    ///
    /// The dataplane keeps counting while this reads (a walk of both
    /// conntrack maps takes milliseconds), so the counts are read before the
    /// walk and each correction is applied as a difference to the count as
    /// it is just before the write: writing the walk's figure outright
    /// erased the flows created during the walk (20 live connections read
    /// as 0, and least-connections sent new ones to their backend).
    pub fn recount_backend_load(&mut self) -> Result<usize> {
        let cfg = match self.config.get(&0, 0)? {
            c if c.layout_version != 0 => c,
            _ => Config::default(),
        };
        let mut before = std::collections::BTreeMap::<BackendId, u64>::new();
        bpfsys::for_each_batch(fd(&self.backend_load), |id: &BackendId, n: &u64| {
            before.insert(*id, *n);
        })
        .map_err(|source| Error::Read { map: maps::BACKEND_LOAD, source })?;
        let now = monotonic_ns();
        // Backend ids are one space: both families' flows count into one map.
        let mut live = std::collections::BTreeMap::<BackendId, u64>::new();
        let mut ids: Vec<BackendId> = self.v4.count_live(&cfg, now, &mut live)?;
        if let Some(v6) = &self.v6 {
            ids.extend(v6.count_live(&cfg, now, &mut live)?);
        }
        let mut changed = 0;
        for id in ids {
            let (was, seen) = (before.get(&id).copied().unwrap_or(0), live.get(&id).copied().unwrap_or(0));
            if was == seen {
                continue;
            }
            let current = self.backend_load(id)?;
            let want = corrected_load(was, seen, current);
            if want != current {
                self.set_backend_load(id, want)?;
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// The affinity entry of an IPv4 client, if any ([`FamilyMaps::affinity`] for either).
    pub fn affinity(&self, key: &lb_common::AffinityKeyV4) -> Result<Option<AffinityV4>> {
        self.v4.affinity(key)
    }

    /// Makes `ifindexes` the interfaces XDP may redirect to (and only them).
    pub fn set_redirect_ifaces(&mut self, ifindexes: &[u32]) -> Result<()> {
        let old: Vec<u32> = self.redirect_ifaces.iter().filter_map(|r| r.ok().map(|(k, _)| k)).collect();
        for k in old.iter().filter(|k| !ifindexes.contains(k)) {
            ignore_missing(self.redirect_ifaces.remove(*k))?;
        }
        for &i in ifindexes {
            self.redirect_ifaces.insert(i, i, None, 0).map_err(|source| Error::Redirect { ifindex: i, source })?;
        }
        Ok(())
    }

    /// Sets the network namespace whose sockets are balanced at connect (0: none).
    pub fn set_sock_netns(&mut self, cookie: u64) -> Result<()> {
        write_result(self.sock_netns.set(0, cookie, 0), maps::SOCK_NETNS, || "the balanced network namespace".into())
    }

    /// Makes every next hop the programs cached stale (after a route,
    /// neighbour, link or address change) and turns the cache on if it
    /// was off: the next packet to each destination asks the FIB again.
    /// Returns the new generation.
    pub fn bump_next_hop_gen(&mut self) -> Result<u32> {
        self.write_next_hop_gen(lb_common::next_generation)
    }

    /// Turns the next-hop cache off (`lb_common::NEXT_HOP_OFF`): every
    /// cached next hop is stale at once and nothing is cached until the
    /// next [`Self::bump_next_hop_gen`]; XDP asks the FIB for every
    /// packet it forwards. For while no routing change would be heard.
    /// Returns the new generation.
    pub fn next_hops_off(&mut self) -> Result<u32> {
        self.write_next_hop_gen(|g| g | lb_common::NEXT_HOP_OFF)
    }

    /// The current `next_hop_gen[0]` (0 when the pinned programs have no cache).
    pub fn next_hop_gen(&self) -> Result<u32> {
        Ok(match &self.next_hop_gen {
            Some(gen) => gen.get(&0, 0)?,
            None => 0,
        })
    }

    fn write_next_hop_gen(&mut self, next: impl FnOnce(u32) -> u32) -> Result<u32> {
        let Some(gen) = self.next_hop_gen.as_mut() else { return Ok(0) };
        let next = next(gen.get(&0, 0)?);
        write_result(gen.set(0, next, 0), maps::NEXT_HOP_GEN, || "the next-hop generation".into())?;
        Ok(next)
    }

    /// Writes the node-wide config.
    pub fn set_config(&mut self, cfg: &Config) -> Result<()> {
        write_result(self.config.set(0, cfg, 0), maps::CONFIG, || "the node-wide config".into())
    }

    /// Sets this node's SNAT address and port range of family `A` (nothing
    /// for IPv6 when the pinned programs have no IPv6 maps).
    pub fn set_nat_config<A: MapFamily>(&mut self, nat: &NatConfig<A>) -> Result<()> {
        match A::split(self).0 {
            Some(m) => write_result(m.nat_config.set(0, nat, 0), A::MAPS.nat_config, || "the SNAT settings".into()),
            None => Ok(()),
        }
    }

    /// The SNAT settings of family `A` the programs use now (off without its maps).
    pub fn nat_config<A: MapFamily>(&self) -> Result<NatConfig<A>> {
        match A::maps(self) {
            Some(m) => Ok(m.nat_config.get(&0, 0)?),
            None => Ok(NatConfig::default()),
        }
    }

    /// New flows refused for want of a SNAT port, per backend id (non-zero
    /// only). The per-backend array is walked only when the node-wide
    /// counter says something was refused at all (a walk is one syscall
    /// per backend slot).
    pub fn snat_exhausted(&self) -> Result<Vec<(BackendId, u64)>> {
        let mut out = Vec::new();
        if self.counter(lb_common::counter::DROP_SNAT_EXHAUSTED)? == 0 {
            return Ok(out);
        }
        for id in 1..self.snat_exhausted.len() {
            let n: u64 = self.snat_exhausted.get(&id, 0)?.iter().sum();
            if n > 0 {
                out.push((id, n));
            }
        }
        Ok(out)
    }
}

/// A failed map write as an error that names the map and the entry, and says
/// what to do when the map is full (the kernel's E2BIG).
fn write_result(
    r: std::result::Result<(), aya::maps::MapError>,
    map: &'static str,
    what: impl FnOnce() -> String,
) -> Result<()> {
    let Err(source) = r else { return Ok(()) };
    // A full hash (the kernel's E2BIG), or an index past an array's end.
    let full = matches!(&source, aya::maps::MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::E2BIG))
        || matches!(&source, aya::maps::MapError::OutOfBounds { .. });
    if full {
        return Err(Error::Full { map, what: what(), flag: size_flag(map) });
    }
    Err(Error::Write { map, what: what(), source })
}

/// Writes `entries` in order with [`bpfsys::update_batch`] (a few syscalls
/// for a whole sync's backends, slots or services); an error names the
/// entry (`what` of its index) as [`write_result`] does.
fn write_batch<K: aya::Pod + bytemuck::Pod, V: aya::Pod + bytemuck::Pod>(fd: BorrowedFd<'_>, entries: &[(K, V)], map: &'static str, what: impl FnOnce(usize) -> String) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let (keys, values): (Vec<K>, Vec<V>) = entries.iter().copied().unzip();
    let Err((at, io_error)) = bpfsys::update_batch(fd, &keys, &values) else { return Ok(()) };
    let source = aya::maps::MapError::SyscallError(aya::sys::SyscallError { call: "bpf_map_update_batch", io_error });
    write_result(Err(source), map, || what(at))
}

/// The `lb-agent run` flag that sizes `map`, for error messages.
pub fn size_flag(map: &str) -> &'static str {
    match map {
        maps::SERVICES_V4 | maps::SERVICES_V6 => "--max-services",
        maps::BACKENDS_V4 | maps::BACKENDS_V6 => "--max-backends",
        maps::SERVICE_SLOTS => "--max-slots",
        maps::CONNTRACK_V4 | maps::CONNTRACK_V6 => "--max-flows",
        maps::AFFINITY_V4 | maps::AFFINITY_V6 => "--max-affinity",
        maps::SOCK_REVNAT_V4 => "--max-sockets",
        maps::SOCK_REVNAT_V6 => "--max-sockets-v6",
        _ => "the map's size (it has no flag yet: lb_common::maps::default_size)",
    }
}

/// A removal of a key that is already gone is a success.
fn ignore_missing(r: std::result::Result<(), aya::maps::MapError>) -> Result<()> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        other => Ok(other?),
    }
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_coarse_ns`.
/// A backend's corrected live-flow count: `was` counted before the walk
/// of conntrack, `seen` live in it, `current` counted now. More counted
/// than seen: flows ended unnoticed (idled out, evicted), taken off what is
/// counted now, which keeps the flows made since. Fewer: flows the count
/// missed (an earlier map of another size), raised to at least what was
/// seen; flows made during the walk are both seen and counted, not twice.
fn corrected_load(was: u64, seen: u64, current: u64) -> u64 {
    if was > seen {
        current.saturating_sub(was - seen)
    } else {
        current.max(seen)
    }
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_recount_corrects_by_difference_and_keeps_flows_made_during_the_walk() {
        // 5 counted, 3 live: 2 idled out; one more made since: 4.
        assert_eq!(super::corrected_load(5, 3, 6), 4);
        // Counted 0 before the walk, 20 made during it (seen or not): 20 stay.
        assert_eq!(super::corrected_load(0, 20, 20), 20);
        assert_eq!(super::corrected_load(0, 12, 20), 20);
        // Undercounted (a resized map): raised to what was seen.
        assert_eq!(super::corrected_load(3, 7, 3), 7);
        // Never below zero.
        assert_eq!(super::corrected_load(9, 0, 4), 0);
    }

    use super::*;

    /// A full map's error names the map, the entry and the flag that sizes it.
    #[test]
    fn a_full_map_names_the_flag_to_raise() {
        let e2big = || aya::maps::MapError::SyscallError(aya::sys::SyscallError { call: "bpf_map_update_elem", io_error: std::io::Error::from_raw_os_error(libc::E2BIG) });
        for (map, flag) in [
            (maps::SERVICES_V4, "--max-services"),
            (maps::BACKENDS_V4, "--max-backends"),
            (maps::SERVICE_SLOTS, "--max-slots"),
            (maps::CONNTRACK_V4, "--max-flows"),
            (maps::AFFINITY_V4, "--max-affinity"),
        ] {
            let e = write_result(Err(e2big()), map, || "slot 3 of service 7".into()).unwrap_err();
            assert!(matches!(e, Error::Full { flag: f, .. } if f == flag), "{e:?}");
            assert_eq!(e.to_string(), format!("{map} is full: slot 3 of service 7 does not fit; raise {flag}"));
        }
        // An array index past the end is a full array too.
        let e = write_result(Err(aya::maps::MapError::OutOfBounds { index: 9, max_entries: 8 }), maps::BACKENDS_V4, || "backend 9".into()).unwrap_err();
        assert_eq!(e.to_string(), "backends_v4 is full: backend 9 does not fit; raise --max-backends");
    }

    /// Other write failures keep the kernel's error as their source.
    #[test]
    fn another_write_failure_names_the_step_and_keeps_its_cause() {
        let eperm = aya::maps::MapError::SyscallError(aya::sys::SyscallError { call: "bpf_map_update_elem", io_error: std::io::Error::from_raw_os_error(libc::EPERM) });
        let e = write_result(Err(eperm), maps::CONFIG, || "the node-wide config".into()).unwrap_err();
        assert_eq!(e.to_string(), "writing the node-wide config to config");
        let cause = std::error::Error::source(&e).expect("a source").to_string();
        assert!(cause.contains("bpf_map_update_elem"), "{cause}");
        assert!(write_result(Ok(()), maps::CONFIG, String::new).is_ok());
    }
}
