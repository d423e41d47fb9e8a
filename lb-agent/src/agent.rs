//! `lb-agent run`: load, attach, then keep the maps in step with the source.
//!
//! Each sync is model → `plan()` → diff → ordered apply. The diff is against
//! what the agent last wrote (`lb_agent::sync`), not a read of the maps: the
//! maps are read at start, after a failed apply, and every
//! `--reconcile-interval` to repair what someone else touched. The id
//! allocator is seeded from the pinned maps on start, so a restarted agent
//! adopts the ids already there and its first sync rewrites nothing that
//! has not changed.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use lb_agent::{
    control::{
        ids::Ids,
        incremental::Incremental,
        model::Model,
        plan::{health_checks, replan, PlanConfig, Warning},
        source::{file, kube, SourceSpec},
    },
    dataplane::Dataplane,
    error::RunError,
    healthcheck::HealthServer,
    loader,
    ops::{checks, metrics::Metrics, names},
    pins::MapSizes,
    snat::{self, SnatSettings},
    sync::{Outcome, Syncer},
};
use lb_agent::diff::Diff;
use lb_common::{Addr4, Addr6};
use tokio::signal::unix::SignalKind;

use lb_agent::{
    hopwatch::{self, HopWatch},
    podifaces::PodIfaces,
};

use crate::cli::RunArgs;


pub fn plan_config(inputs: &crate::cli::PlanInputs) -> PlanConfig {
    PlanConfig {
        node_name: inputs.node_name.clone(),
        node_addresses: inputs.node_addresses.clone(),
        default_algorithm: inputs.default_algorithm,
        service_cidrs: inputs.service_cidrs.clone(),
    }
}

pub async fn run(args: RunArgs) -> Result<(), RunError> {
    let begun = Instant::now();
    // Served from the start: /healthz answers while loading, /readyz says 503.
    let metrics = Arc::new(Metrics::new(&args.pin_path));
    lb_agent::ops::http::serve(args.metrics_addr, metrics.clone()).await?;
    checks::require(&checks::Inputs {
        pin_dir: &args.pin_path,
        ifaces: &args.ifaces,
        native_xdp: args.xdp_mode == crate::cli::XdpModeArg::Native,
        sizes: MapSizes::from(&args.sizes),
        tc_forced: args.tc_attach.forced(),
        socket_lb: &args.socket_lb,
    })?;
    // Before anything is loaded: a typo stops the agent with nothing pinned.
    let redirect = ifindexes(&args.redirect_ifaces)?;
    if let Err(e) = lb_agent::pinfs::check(&args.pin_path) {
        if !args.allow_ephemeral_pins {
            return Err(e.into());
        }
        tracing::warn!("EPHEMERAL PINS (--allow-ephemeral-pins): {e}");
    }

    if args.xdp_mode == crate::cli::XdpModeArg::Generic {
        tracing::warn!("XDP in generic mode, as asked (--xdp-mode generic): it runs after the kernel allocates an skb, several times slower than native");
    }

    // What can make the source fail is checked before anything is loaded (a
    // bad source stops the agent with nothing pinned): the files read, the
    // kubeconfig read. The rest of the first model (the YAML parse, the
    // first list) comes while the kernel verifies the programs.
    let first = match &args.inputs.source {
        SourceSpec::File(path) => First::File(path.clone(), file::read(path.clone()).map_err(|source| RunError::FileSource { path: path.clone(), source })?),
        SourceSpec::Kube => {
            let health = Arc::new(kube::SourceHealth::default());
            metrics.set_source_health(health.clone(), Duration::from_secs(args.source_stale_after));
            First::Kube(kube::client(args.inputs.kubeconfig.as_deref(), health.clone()).await.map_err(RunError::KubeSource)?, health)
        }
    };
    let sizes = MapSizes::from(&args.sizes);
    // On a blocking thread (which loads on one more per CPU): this one
    // parses or lists meanwhile.
    let pin_dir = args.pin_path.clone();
    let loading = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        (loader::load(&pin_dir, sizes), started.elapsed())
    });
    let mut models = match first {
        First::File(path, read) => read.watch().map_err(|source| RunError::FileSource { path, source })?,
        // Returns after the first complete list: the maps are never
        // synced to a partial (or empty) view of the cluster.
        First::Kube(client, health) => kube::watch(client, &args.inputs.node_name, health).await.map_err(RunError::KubeSource)?,
    };

    // The cold start's split (the bench reads these lines).
    tracing::info!(elapsed_ms = begun.elapsed().as_millis() as u64, rss_mib = rss_mib(), "source ready");
    start_lb(&args, &models, &metrics).await?;

    let (probed, why) = lb_agent::links::probe_tc_path();
    let tc = lb_agent::links::choose_tc_path(args.tc_attach.forced());
    match tc {
        lb_agent::links::TcPath::Tcx => tracing::info!(reason = %why, forced = (tc != probed), "tc programs attach through TCX links, pinned under <pin-path>/links"),
        lb_agent::links::TcPath::Netlink => tracing::info!(
            reason = %why, forced = (tc != probed), priority = lb_agent::links::TC_PRIORITY, handle = format!("{:#x}", lb_agent::links::TC_HANDLE),
            "tc programs attach as netlink cls_bpf filters on the clsact qdisc (they stay attached without the agent)"
        ),
    }
    let (loaded, load_time) = loading.await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    let mut ebpf = loaded.map_err(|e| RunError::Load { pin_dir: args.pin_path.clone(), source: Box::new(e) })?;
    tracing::info!(load_ms = load_time.as_millis() as u64, "programs loaded (each verified by the kernel)");
    // Read whole by the load, not again: 4 MiB of RSS.
    let released = lb_agent::resident::release(loader::BYTECODE);
    tracing::debug!(bytes = released, "the eBPF object's pages released");
    forward_kernel_logs(&mut ebpf);
    // Links are pinned next to the maps: the programs stay attached when the
    // agent stops or crashes, and the next agent replaces them in place.
    for iface in &args.ifaces {
        loader::attach_uplink(&mut ebpf, iface, args.xdp_mode.into(), Some(&args.pin_path))
            .map_err(|e| RunError::Attach { iface: iface.clone(), source: Box::new(e) })?;
        tracing::info!(%iface, mode = ?args.xdp_mode, "attached XDP and tc egress to uplink");
    }
    metrics.set_attached();
    let mut pods = PodIfaces::new(args.pod_ifaces.clone(), args.pin_path.clone());
    pods.scan(&mut ebpf, "start");

    let maps = |step| move |source| RunError::Maps { step, source: Box::new(source) };
    let mut dp = Dataplane::open(&args.pin_path).map_err(maps("opening the pinned maps"))?;
    dp.set_redirect_ifaces(&redirect).map_err(maps("writing the --redirect-iface interfaces"))?;
    // Next hops cached while no agent listened may be stale: drop them all
    // and follow every routing change, subscribed first so that none falls
    // in between (without a subscription the cache stays off).
    let mut routing = HopWatch::new(hopwatch::RECEIVE_BUFFER);
    let first = routing.current();
    first.apply(&mut dp).map_err(maps("writing the next-hop generation"))?;
    metrics.next_hop_change(first);
    let flags = if redirect.is_empty() { 0 } else { lb_common::config_flags::XDP_REDIRECT } | args.snat.lb_mode.config_flags();
    dp.set_config(&lb_common::Config { flags, ..Default::default() }).map_err(maps("writing the node-wide config"))?;
    tracing::info!(mode = %args.snat.lb_mode, "load-balancing mode of external flows to backends on other nodes (--lb-mode; a Service's xdplb.io/lb-mode wins)");
    let snat = SnatSettings::try_from(&args.snat).map_err(|detail| RunError::SnatAddress { detail })?;
    if !snat.off {
        snat::reserve(snat.ports).map_err(RunError::SnatPorts)?;
        for iface in &args.ifaces {
            snat::accept_own_source(iface).map_err(|e| RunError::SnatIface { iface: iface.clone(), source: e })?;
        }
    }
    match lb_agent::socklb::apply(&mut ebpf, &mut dp, &args.socket_lb, &args.pin_path).map_err(|e| RunError::SocketLb(Box::new(e)))? {
        Some(cgroup) => tracing::info!(cgroup = %cgroup.display(), "node sockets to services are balanced at connect"),
        None => tracing::info!("socket balancing off: the node's own connections to services are not balanced"),
    }
    // Read once here; later syncs diff against what the agent wrote.
    let current = dp.contents().map_err(maps("reading the pinned maps"))?;
    let current_v6 = dp.family_contents::<Addr6>().map_err(maps("reading the pinned IPv6 maps"))?;
    tracing::info!(
        services = current.services.len(),
        backends = current.backends.len(),
        slots = current.slots.len(),
        services_v6 = current_v6.services.len(),
        backends_v6 = current_v6.backends.len(),
        slots_v6 = current_v6.slots.len(),
        ipv6_maps = dp.v6.is_some(),
        "pinned maps found"
    );
    let mut ids = Ids::seeded(sizes.services, sizes.backends, &current);
    ids.seed(&current_v6);
    let reconcile_every = (args.reconcile_interval > 0).then(|| Duration::from_secs(args.reconcile_interval));
    let mut agent = Programmer {
        dp,
        syncer: Syncer::new(current, reconcile_every),
        syncer_v6: Syncer::new(current_v6, reconcile_every),
        ids,
        incremental: Incremental::new(),
        cfg: plan_config(&args.inputs),
        metrics: metrics.clone(),
        names: None,
        health: HealthServer::new(args.health_check_address),
        capacity: lb_agent::fit::Capacity {
            services: sizes.services as usize,
            slots: sizes.slots as usize,
            source_ranges: lb_common::maps::default_size::SOURCE_RANGES as usize,
        },
        rejected: Vec::new(),
        snat,
        nat_written: None,
        snat_refused: Default::default(),
        warned: Default::default(),
        warnings_total: 0,
        snat_reported: None,
    };

    metrics.source_event();
    let first = Some(Instant::now());
    let model = models.borrow_and_update().clone();
    tracing::info!(rss_mib = rss_mib(), "first model received");
    let mut synced = agent.sync(&model, first);
    drop(model);
    // The first sync's peak (source objects, plan, map reads) is freed
    // memory malloc keeps; give it back so RSS shows the steady state.
    let peak = rss_mib();
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe { libc::malloc_trim(0) };
    tracing::info!(rss_mib = rss_mib(), before_trim_mib = peak, "first sync done");
    // Everything is loaded, pinned and attached (sysctls written): keep only
    // what later syncs and pod-interface attaches use.
    let bounding = lb_agent::privs::drop_to_kept().map_err(RunError::DropPrivileges)?;
    let kept: Vec<&str> = lb_agent::privs::KEPT.iter().map(|(_, n)| *n).collect();
    tracing::info!(kept = kept.join(","), bounding_set_too = bounding, "dropped every other capability (no_new_privs set)");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Least-connections counts flows that idle out or are evicted only here.
    let mut recount = tokio::time::interval(Duration::from_secs(30));
    let handler = |kind, signal| tokio::signal::unix::signal(kind).map_err(|source| RunError::Signal { signal, source });
    let mut term = handler(SignalKind::terminate(), "SIGTERM")?;
    let mut int = handler(SignalKind::interrupt(), "SIGINT")?;
    loop {
        tokio::select! {
            changed = models.changed() => {
                if changed.is_err() {
                    metrics.source_down();
                    return Err(RunError::SourceStopped);
                }
                metrics.source_event();
                let observed = Some(Instant::now());
                // An Arc: the channel's lock is not held while syncing.
                let model = models.borrow_and_update().clone();
                synced = agent.sync(&model, observed);
            }
            _ = recount.tick() => {
                match agent.dp.recount_backend_load() {
                    Ok(n) if n > 0 => tracing::debug!(changed = n, "backend live-flow counts recounted from conntrack"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = lb_agent::chain::chain(&e), "recounting backend live flows failed"),
                }
            }
            _ = tick.tick() => {
                agent.report_snat_exhaustion();
                pods.scan(&mut ebpf, "periodic scan");
                agent.health.retry();
                if !synced {
                    // The last sync failed part-way: try again from what the maps hold.
                    let model = models.borrow().clone();
                    synced = agent.sync(&model, None);
                } else if agent.syncer.reconcile_due() {
                    synced = agent.reconcile();
                }
            }
            () = pods.link_event() => pods.scan(&mut ebpf, "link event"),
            change = routing.next() => {
                metrics.next_hop_change(change);
                if let Err(e) = change.apply(&mut agent.dp) {
                    tracing::warn!(error = lb_agent::chain::chain(&e), ?change, "writing the next-hop generation failed: cached next hops may be stale");
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    // Links and maps are pinned: the programs keep balancing with the last
    // maps until the next agent takes over (or `lb-agent uninstall`).
    tracing::info!("stopping; programs stay attached and maps pinned for the next agent");
    // No one follows routing changes until then: XDP asks the FIB for
    // every packet it forwards (a crash leaves the cache on).
    if let Err(e) = agent.dp.next_hops_off() {
        tracing::warn!(error = lb_agent::chain::chain(&e), "turning the next-hop cache off failed: cached next hops are used until the next agent starts");
    }
    drop(ebpf);
    Ok(())
}

/// The source's first step, taken before the programs load.
enum First {
    /// The files read, not parsed.
    File(std::path::PathBuf, file::FirstRead),
    /// A client of the configured API server.
    Kube(::kube::Client, Arc<kube::SourceHealth>),
}

/// LoadBalancer addresses (`lb_agent::lbip`), if asked: before the
/// capability drop, which the ARP and NDP sockets need not to have happened yet.
async fn start_lb(args: &RunArgs, models: &tokio::sync::watch::Receiver<Arc<Model>>, metrics: &Arc<Metrics>) -> Result<(), RunError> {
    if !args.lb.enabled() {
        return Ok(());
    }
    let from_api = matches!(args.inputs.source, SourceSpec::Kube);
    let client = match from_api {
        true => Some(kube::client(args.inputs.kubeconfig.as_deref(), Arc::default()).await.map_err(RunError::KubeSource)?),
        false => None,
    };
    let settings = args.lb.settings(&args.inputs.node_name, &args.ifaces, from_api);
    lb_agent::lbip::start(settings, client, models.clone(), metrics.clone(), &args.pin_path).map_err(RunError::LbAddresses)?;
    Ok(())
}

/// What keeps the maps in step with the models.
struct Programmer {
    dp: Dataplane,
    syncer: Syncer<Addr4>,
    syncer_v6: Syncer<Addr6>,
    ids: Ids,
    /// What re-plans only the Services a change touched.
    incremental: Incremental,
    cfg: PlanConfig,
    metrics: Arc<Metrics>,
    /// The service names last written: the file is rewritten only when they change.
    names: Option<Arc<names::Names>>,
    /// The healthCheckNodePort listeners, following every model.
    health: HealthServer,
    /// What the maps of each family hold, for leaving out services that do
    /// not fit (the shared slots: IPv6 gets what IPv4 leaves).
    capacity: lb_agent::fit::Capacity,
    /// The services left out at the last sync (logged when this changes).
    rejected: Vec<lb_agent::fit::Rejected>,
    snat: SnatSettings,
    /// The SNAT settings last written to the maps.
    nat_written: Option<(lb_common::NatConfigV4, lb_common::NatConfigV6)>,
    /// Flows refused per backend id for want of a SNAT port, as last reported.
    snat_refused: std::collections::BTreeMap<u32, u64>,
    snat_reported: Option<Instant>,
    /// The plan's warnings at the last sync: each is logged when it first
    /// appears, not on every re-plan.
    warned: std::collections::BTreeSet<Warning>,
    /// Warnings logged since start.
    warnings_total: u64,
}

/// SNAT exhaustion is logged at most this often (the metric has every count).
const SNAT_REPORT_EVERY: Duration = Duration::from_secs(10);

impl Programmer {
    /// One sync of the maps, then of the health-check node ports; returns
    /// whether every map write succeeded. `observed` is when the source's
    /// change behind it arrived (None for a retry).
    fn sync(&mut self, model: &Model, observed: Option<Instant>) -> bool {
        let ok = self.sync_maps(model, observed);
        // The counts follow the model even when a write failed; the failure
        // shows as `serviceProxyHealthy: false` (503) until a sync applies.
        self.health.update(health_checks(model, &self.cfg));
        self.health.set_healthy(ok);
        ok
    }

    /// Logs the warnings that were not there at the last sync, and counts them.
    fn report_warnings(&mut self, warnings: Vec<Warning>) {
        let now: std::collections::BTreeSet<Warning> = warnings.into_iter().collect();
        for w in now.difference(&self.warned) {
            tracing::warn!(object = %w.object, "{}", w.message);
            self.warnings_total += 1;
        }
        self.warned = now;
    }

    /// The maps' part of [`Programmer::sync`].
    fn sync_maps(&mut self, model: &Model, observed: Option<Instant>) -> bool {
        let started = Instant::now();
        if let Some(ok) = self.sync_changed(model, observed, started) {
            return ok;
        }
        let next = replan(model, &self.cfg, &self.ids);
        let contested = next.contested;
        tracing::debug!(rss_mib = rss_mib(), "planned whole");
        self.ids = next.ids;
        self.report_warnings(next.warnings);
        let mut p = next.plan;
        let mut rejected = lb_agent::fit::fit(&mut p.contents, self.capacity, self.syncer.known().unwrap_or(&Default::default()));
        let slots_left = self.capacity.slots.saturating_sub(p.contents.slots.len());
        let cap_v6 = lb_agent::fit::Capacity { slots: slots_left, ..self.capacity };
        rejected.extend(lb_agent::fit::fit(&mut p.contents_v6, cap_v6, self.syncer_v6.known().unwrap_or(&Default::default())));
        if rejected != self.rejected {
            for r in &rejected {
                let name = match r.service_id {
                    0 => "ClusterIP address entries and service CIDRs (unserved ports and unallocated addresses are not refused)".to_string(),
                    id => p.services.iter().find(|s| s.id == id).map_or_else(String::new, |s| format!("{}/{}:{}", s.namespace, s.name, s.port_name)),
                };
                tracing::error!(service = %name, service_id = r.service_id, map = r.map, need = r.need, free = r.free, "service does not fit in {}: left out of the maps, the others are synced; raise {}", r.map, r.flag);
            }
            self.metrics.set_rejected(rejected.len());
            self.rejected = rejected;
        }
        let plan_time = started.elapsed();
        let (service_ids, frontends) = (p.services.len(), p.contents.services.len() + p.contents_v6.services.len());
        let names = names::from_plan(&p);
        // Before the backends: a remote backend is SNATed from its first flow.
        if let Err(e) = self.sync_nat(&p.node_addresses) {
            tracing::error!(error = lb_agent::chain::chain(&e), "writing the SNAT settings failed; retrying in a second");
            self.metrics.sync_failed(started.elapsed());
            return false;
        }
        let left_out = !self.rejected.is_empty();
        let (contents, contents_v6) = (std::mem::take(&mut p.contents), std::mem::take(&mut p.contents_v6));
        let synced = self.syncer.sync(&mut self.dp, contents).and_then(|o| Ok((o, self.syncer_v6.sync(&mut self.dp, contents_v6)?)));
        match synced {
            Ok((o, o6)) => {
                self.incremental.reset(model, std::mem::take(&mut p.services), contested || left_out);
                self.log_synced(&o, &o6, started, plan_time, (service_ids, frontends), 0);
                let (d, d6) = (&o.diff, &o6.diff);
                self.written(d, d6, Some(names), started, observed);
                true
            }
            Err(e) => self.write_failed(&e, started),
        }
    }

    /// Syncs only the Services `model` changed since the last sync, when
    /// they can be planned alone (`lb_agent::control::incremental`); None
    /// when the model must be planned whole.
    fn sync_changed(&mut self, model: &Model, observed: Option<Instant>, started: Instant) -> Option<bool> {
        let (known, known_v6) = (self.syncer.known()?, self.syncer_v6.known()?);
        let delta = self.incremental.delta(model, &self.cfg, &mut self.ids, known, known_v6, self.capacity)?;
        let plan_time = started.elapsed();
        let mut warnings: Vec<Warning> = self.warned.iter().filter(|w| !delta.changed.contains(&w.object)).cloned().collect();
        warnings.extend(delta.warnings);
        self.report_warnings(warnings);
        let name = |s: &lb_agent::control::plan::PlannedService| (s.id, names::ServiceName { namespace: s.namespace.clone(), name: s.name.clone(), port: s.port_name.clone() });
        let (old, new): (Vec<_>, Vec<_>) = (delta.old.iter().map(name).collect(), delta.new.iter().map(name).collect());
        // A state unknown (None) after the IPv4 write: the whole sync that
        // follows diffs against what that write left.
        let o = match self.syncer.sync_part(&mut self.dp, delta.diff)? {
            Ok(o) => o,
            Err(e) => return Some(self.write_failed(&e, started)),
        };
        let o6 = match self.syncer_v6.sync_part(&mut self.dp, delta.diff_v6)? {
            Ok(o) => o,
            Err(e) => return Some(self.write_failed(&e, started)),
        };
        let counts = (self.names.as_ref().map_or(0, |n| n.len()), self.syncer.known().map_or(0, |k| k.services.len()) + self.syncer_v6.known().map_or(0, |k| k.services.len()));
        self.log_synced(&o, &o6, started, plan_time, counts, delta.changed.len());
        let (d, d6) = (&o.diff, &o6.diff);
        let names = (old != new).then(|| {
            let mut names = self.names.as_deref().cloned().unwrap_or_default();
            for (id, _) in &old {
                names.remove(id);
            }
            names.extend(new);
            names
        });
        self.written(d, d6, names, started, observed);
        Some(true)
    }

    /// The "synced" line of either sync path: `counts` are the service ids
    /// and frontends now, `replanned` the Services planned alone (0: whole).
    fn log_synced(&self, o: &Outcome<Addr4>, o6: &Outcome<Addr6>, started: Instant, plan_time: Duration, counts: (usize, usize), replanned: usize) {
        let (d, d6) = (&o.diff, &o6.diff);
        tracing::info!(
            writes = d.len() + d6.len(),
            services = d.services.len(),
            backends = d.backends.len(),
            slots = d.slots.len(),
            services_v6 = d6.services.len(),
            backends_v6 = d6.backends.len(),
            slots_v6 = d6.slots.len(),
            service_ids = counts.0,
            frontends = counts.1,
            replanned,
            elapsed_us = started.elapsed().as_micros() as u64,
            plan_us = plan_time.as_micros() as u64,
            read_maps = o.read || o6.read,
            read_us = (o.read_time + o6.read_time).as_micros() as u64,
            diff_us = (o.diff_time + o6.diff_time).as_micros() as u64,
            apply_us = (o.apply_time + o6.apply_time).as_micros() as u64,
            warnings = self.warned.len(),
            warnings_total = self.warnings_total,
            "synced"
        );
    }

    /// After a successful write: the conntrack entries of removed backends
    /// go, the service names file follows `names` (when they changed).
    fn written(&mut self, d: &Diff<Addr4>, d6: &Diff<Addr6>, names: Option<names::Names>, started: Instant, observed: Option<Instant>) {
        let touched = lb_agent::ctclean::touched(d).into_iter().chain(lb_agent::ctclean::touched(d6)).collect();
        match lb_agent::ctclean::clean(&mut self.dp, self.metrics.pin_dir(), &touched) {
            Ok(0) => {}
            Ok(n) => tracing::info!(flows = n, "removed the conntrack entries of removed backends"),
            Err(e) => tracing::warn!(error = lb_agent::chain::chain(&e), "removing the conntrack entries of removed backends failed"),
        }
        if let Some(names) = names.filter(|n| self.names.as_deref() != Some(n)) {
            let names = Arc::new(names);
            self.metrics.set_names(names.clone());
            match names::write(self.metrics.pin_dir(), &names) {
                Ok(()) => self.names = Some(names),
                Err(e) => tracing::debug!(error = %e, "writing the service names file failed; the CLI shows ids only"),
            }
        }
        self.metrics.sync_ok(started.elapsed(), d.len() + d6.len(), observed.map(|t| t.elapsed()));
    }

    /// A write failed part-way: the next sync reads the maps and plans whole.
    fn write_failed(&mut self, e: &lb_agent::dataplane::Error, started: Instant) -> bool {
        self.incremental.invalidate();
        tracing::error!(error = lb_agent::chain::chain(e), "sync failed; retrying in a second from what the maps hold");
        self.metrics.sync_failed(started.elapsed());
        false
    }

    /// Logs the backends that refused new flows for want of a SNAT port
    /// since the last report, at most once per [`SNAT_REPORT_EVERY`].
    fn report_snat_exhaustion(&mut self) {
        if self.snat_reported.is_some_and(|t| t.elapsed() < SNAT_REPORT_EVERY) {
            return;
        }
        // Cheap when nothing was refused since the last look: one per-CPU counter.
        let total = self.dp.counter(lb_common::counter::DROP_SNAT_EXHAUSTED).unwrap_or(0);
        if total == self.snat_refused.values().sum::<u64>() {
            return;
        }
        let Ok(now) = self.dp.snat_exhausted() else { return };
        for &(id, n) in &now {
            let before = self.snat_refused.get(&id).copied().unwrap_or(0);
            if n > before {
                self.snat_reported = Some(Instant::now());
                let addr = lb_agent::ops::inspect::backend_addr(&self.dp, id);
                tracing::warn!(backend_id = id, backend = ?addr, refused = n - before, ports = %self.snat.ports, "new flows to a backend on another node were refused: no free SNAT port towards it (widen --snat-ports)");
            }
        }
        self.snat_refused = now.into_iter().collect();
    }

    /// Writes the SNAT settings when they change (the node's address may
    /// come from its Node object, so it can change with the model).
    fn sync_nat(&mut self, node_addresses: &[std::net::IpAddr]) -> Result<(), lb_agent::dataplane::Error> {
        let want = (self.snat.config(node_addresses), self.snat.config(node_addresses));
        if self.nat_written == Some(want) {
            return Ok(());
        }
        self.dp.set_nat_config(&want.0)?;
        self.dp.set_nat_config(&want.1)?;
        let addresses: Vec<std::net::IpAddr> = [lb_common::Addr::to_ip(want.0.addr), lb_common::Addr::to_ip(want.1.addr)].into_iter().filter(|a| !a.is_unspecified()).collect();
        if addresses.is_empty() {
            tracing::warn!("no SNAT address (no --snat-address, no node address, or --no-snat): flows to backends on other nodes keep the client address, and fail unless those backends route replies through this node");
        } else {
            tracing::info!(addresses = ?addresses, ports = %self.snat.ports, "flows from outside to backends on other nodes are SNATed (a family without an address keeps the client address)");
        }
        self.nat_written = Some(want);
        Ok(())
    }

    /// The periodic read of the maps: repairs what differs from the last
    /// sync. Returns whether the maps are in step (false: retry the sync).
    fn reconcile(&mut self) -> bool {
        let ok = self.reconcile_maps();
        self.health.set_healthy(ok);
        ok
    }

    /// The maps' part of [`Programmer::reconcile`].
    fn reconcile_maps(&mut self) -> bool {
        let started = Instant::now();
        let reconciled = self.syncer.reconcile(&mut self.dp).and_then(|o| Ok((o, self.syncer_v6.reconcile(&mut self.dp)?)));
        match reconciled {
            Ok((o, o6)) if o.as_ref().is_some_and(|o| !o.diff.is_empty()) || o6.as_ref().is_some_and(|o| !o.diff.is_empty()) => {
                let writes = o.map_or(0, |o| o.diff.len());
                let writes_v6 = o6.map_or(0, |o| o.diff.len());
                tracing::warn!(
                    writes,
                    writes_v6,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "the maps differed from what the agent wrote (changed by someone else); repaired"
                );
                self.metrics.reconcile_repairs(writes + writes_v6);
                true
            }
            Ok(_) => {
                tracing::debug!(elapsed_us = started.elapsed().as_micros() as u64, "reconciled: the maps hold what the agent wrote");
                true
            }
            Err(e) => {
                tracing::error!(error = lb_agent::chain::chain(&e), "reconciling the maps failed; retrying in a second");
                self.metrics.sync_failed(started.elapsed());
                false
            }
        }
    }
}

/// This process's resident memory (VmRSS), in MiB, for the log.
fn rss_mib() -> u64 {
    let pages: u64 = std::fs::read_to_string("/proc/self/statm").ok().and_then(|s| s.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf reads a constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
    pages * page / (1 << 20)
}

/// The interface indexes of `--redirect-iface`s (in this network namespace).
fn ifindexes(names: &[String]) -> Result<Vec<u32>, RunError> {
    names
        .iter()
        .map(|n| {
            let missing = || RunError::NoRedirectIface { iface: n.clone() };
            // A name with a NUL byte names no interface either.
            let c = std::ffi::CString::new(n.as_str()).map_err(|_| missing())?;
            // SAFETY: a valid NUL-terminated name.
            match unsafe { libc::if_nametoindex(c.as_ptr()) } {
                0 => Err(missing()),
                i => Ok(i),
            }
        })
        .collect()
}

/// Relays the programs' rare-event log lines (aya-log; rate-limited in the
/// kernel) into this process's log, target `lb_ebpf`.
fn forward_kernel_logs(ebpf: &mut aya::Ebpf) {
    let logger = match aya_log::EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "kernel-side log events are not available");
            return;
        }
    };
    // SAFETY: the logger owns its ring buffer fd for as long as the AsyncFd
    // lives, and nothing else closes it.
    let registered = unsafe { tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
    let mut fd = match registered.map_err(|e| e.into_parts().1) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(error = %e, "kernel-side log events are not available");
            return;
        }
    };
    tokio::spawn(async move {
        while let Ok(mut guard) = fd.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}
