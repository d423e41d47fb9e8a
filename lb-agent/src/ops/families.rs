//! Naming and writing metric families through prometheus-client, so every
//! exported name and HELP text is spelled in full where it is defined.
//!
//! The library derives part of a name from the type (a counter `x` is
//! exported as `x_total`, an info `x` as `x_info`) and the registry adds a
//! full stop to HELP texts. [`register`] takes the exported name and the
//! exact HELP text and hands the library what it expects; [`one`] and
//! [`family`] do the same for figures a [`Collector`] reads at scrape time.
//!
//! [`Collector`]: prometheus_client::collector::Collector
use std::fmt;

use prometheus_client::{
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{MetricType, TypedMetric},
    registry::{Metric, Registry},
};

/// The name to give the library for a family exported as `exported`.
fn base(exported: &str, kind: MetricType) -> &str {
    let suffix = match kind {
        MetricType::Counter => "_total",
        MetricType::Info => "_info",
        MetricType::Gauge | MetricType::Histogram | MetricType::Unknown => "",
    };
    let name = exported.strip_suffix(suffix);
    debug_assert!(name.is_some(), "{exported}: a {} must end in {suffix}", kind.as_str());
    name.unwrap_or(exported)
}

/// Registers `metric`, exported as `exported` with HELP `help` (which ends
/// in a full stop).
pub fn register<M: Metric + TypedMetric>(registry: &mut Registry, exported: &str, help: &str, metric: M) {
    let help = help.strip_suffix('.');
    debug_assert!(help.is_some(), "{exported}: HELP ends in a full stop");
    registry.register(base(exported, M::TYPE), help.unwrap_or_default(), metric);
}

/// One family with a single sample without labels, e.g. a `ConstGauge`.
pub fn one<M: EncodeMetric + TypedMetric>(enc: &mut DescriptorEncoder, exported: &str, help: &str, metric: M) -> fmt::Result {
    metric.encode(enc.encode_descriptor(base(exported, M::TYPE), help, None, M::TYPE)?)
}

/// One family, a sample per label set (its HELP and TYPE lines even when
/// there are none).
pub fn family<L, M, I>(enc: &mut DescriptorEncoder, exported: &str, help: &str, samples: I) -> fmt::Result
where
    L: EncodeLabelSet,
    M: EncodeMetric + TypedMetric,
    I: IntoIterator<Item = (L, M)>,
{
    let mut metric = enc.encode_descriptor(base(exported, M::TYPE), help, None, M::TYPE)?;
    for (labels, m) in samples {
        m.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The Prometheus text (0.0.4) of `registry`.
pub fn text(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String fails only if a collector does; what was written
    // before it is still worth serving.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        tracing::warn!(error = %e, "metrics: encoding stopped part-way");
    }
    out
}

#[cfg(test)]
mod tests {
    use prometheus_client::{
        collector::Collector,
        metrics::{counter::ConstCounter, gauge::ConstGauge, histogram::Histogram, info::Info},
    };

    use super::*;

    #[derive(Debug)]
    struct Two;

    impl Collector for Two {
        fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
            one(&mut enc, "x_ratio", "A ratio.", ConstGauge::new(0.25))?;
            family(&mut enc, "x_drops_total", "Drops.", [([("a", "q\"b\\n\nx")], ConstCounter::new(3u64))])?;
            family(&mut enc, "x_empty", "None yet.", std::iter::empty::<([(&str, &str); 1], ConstGauge)>())
        }
    }

    #[test]
    fn names_help_and_values_come_out_as_exported() {
        let mut r = Registry::default();
        let h = Histogram::new([0.1, 1.0]);
        for v in [0.05, 0.5, 0.7, 3.0] {
            h.observe(v);
        }
        register(&mut r, "x_seconds", "Durations.", h);
        register(&mut r, "x_build_info", "Build (value 1).", Info::new([("version", "1.2")]));
        r.register_collector(Box::new(Two));
        let text = text(&r);
        let want = "# HELP x_seconds Durations.\n# TYPE x_seconds histogram\n\
            x_seconds_bucket{le=\"0.1\"} 1\nx_seconds_bucket{le=\"1\"} 3\nx_seconds_bucket{le=\"+Inf\"} 4\n\
            x_seconds_sum 4.25\nx_seconds_count 4\n\
            # HELP x_build_info Build (value 1).\n# TYPE x_build_info gauge\nx_build_info{version=\"1.2\"} 1\n\
            # HELP x_ratio A ratio.\n# TYPE x_ratio gauge\nx_ratio 0.25\n\
            # HELP x_drops_total Drops.\n# TYPE x_drops_total counter\nx_drops_total{a=\"q\\\"b\\\\n\\nx\"} 3\n\
            # HELP x_empty None yet.\n# TYPE x_empty gauge\n";
        assert_eq!(text, want);
    }
}
