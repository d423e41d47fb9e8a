//! A small SVG chart of forwarded rate against service count, xdplb and
//! kube-proxy's iptables rules fed by the same skb-path sender, UDP
//! established and new flows, one thread: the picture of the `skb`
//! section. Hand-written SVG, no dependency.
use super::figure::Figure;

const W: f64 = 800.0;
const H: f64 = 360.0;
const PAD: f64 = 56.0;
/// Right edge of the plot; the legend sits to its right.
const RIGHT: f64 = W - 200.0;

/// (label, figure name prefix, suffix, colour, dashed)
const SERIES: &[(&str, &str, &str, &str, bool)] = &[
    ("xdplb, established", "skb/xdplb_", "_services", "#1f77b4", false),
    ("iptables, established", "skb/iptables_", "_services", "#d62728", false),
    ("xdplb, new flows", "skb/xdplb_", "_services_new_flows", "#1f77b4", true),
    ("xdplb + XDP redirect, established", "skb/xdplb_redirect_", "_services", "#2ca02c", false),
    ("iptables, new flows", "skb/iptables_", "_services_new_flows", "#d62728", true),
];

/// One line of the chart: label, colour, dashed, (services, Mpps) points.
type Series<'a> = (&'a str, &'a str, bool, Vec<(f64, f64)>);

/// The chart, or None when the run has no skb service figures.
pub fn svg(figures: &[Figure], threads: u64) -> Option<String> {
    let series: Vec<Series> = SERIES
        .iter()
        .map(|&(label, pre, suf, colour, dashed)| {
            let mut pts: Vec<(f64, f64)> = figures
                .iter()
                .filter(|f| f.conditions["threads"].as_u64() == Some(threads))
                .filter_map(|f| {
                    let n: f64 = f.name.strip_prefix(pre)?.strip_suffix(suf)?.parse().ok()?;
                    Some((n, f.value))
                })
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            (label, colour, dashed, pts)
        })
        .collect();
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.3.iter().copied()).collect();
    if all.is_empty() {
        return None;
    }
    let (xmax, ymax) = all.iter().fold((1.0f64, 0.0f64), |(x, y), p| (x.max(p.0), y.max(p.1)));
    let xspan = xmax.log10().max(1.0);
    let x = |n: f64| PAD + (RIGHT - PAD) * n.max(1.0).log10() / xspan;
    let y = |v: f64| H - PAD - (H - 2.0 * PAD) * v / (ymax * 1.1);
    let mut s = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n");
    s += &format!("<text x=\"{PAD}\" y=\"24\" font-size=\"14\">Forwarded Mpps vs services ({threads} thread, 64-byte UDP, AF_PACKET sender, same run)</text>\n");
    s += &format!("<line x1=\"{PAD}\" y1=\"{b}\" x2=\"{RIGHT}\" y2=\"{b}\" stroke=\"black\"/><line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{b}\" stroke=\"black\"/>\n", b = H - PAD);
    let mut n = 1.0;
    while n <= xmax * 1.001 {
        s += &format!("<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{n}</text>\n", x(n), H - PAD + 16.0);
        n *= 10.0;
    }
    for i in 0..=4 {
        let v = ymax * 1.1 * i as f64 / 4.0;
        s += &format!("<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{v:.2}</text>\n", PAD - 6.0, y(v) + 4.0);
    }
    s += &format!("<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">services (log)</text>\n", (PAD + RIGHT) / 2.0, H - 12.0);
    for (i, (label, colour, dashed, pts)) in series.iter().enumerate() {
        let dash = if *dashed { " stroke-dasharray=\"6 4\"" } else { "" };
        let path: Vec<String> = pts.iter().map(|&(n, v)| format!("{:.1},{:.1}", x(n), y(v))).collect();
        s += &format!("<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash} points=\"{}\"/>\n", path.join(" "));
        for &(n, v) in pts {
            s += &format!("<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"/>\n", x(n), y(v));
        }
        let ly = PAD + 16.0 * i as f64;
        s += &format!("<line x1=\"{:.1}\" y1=\"{ly}\" x2=\"{:.1}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"2\"{dash}/><text x=\"{:.1}\" y=\"{:.1}\">{label}</text>\n", RIGHT + 16.0, RIGHT + 42.0, RIGHT + 48.0, ly + 4.0);
    }
    s += "</svg>\n";
    Some(s)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fig(name: &str, value: f64) -> Figure {
        Figure { section: "skb".into(), name: name.into(), value, min: None, unit: "Mpps".into(), conditions: json!({"threads": 1}) }
    }

    #[test]
    fn one_polyline_per_series_with_its_points() {
        let f = [fig("skb/xdplb_1_services", 0.7), fig("skb/xdplb_1000_services", 0.6), fig("skb/iptables_1_services_new_flows", 0.2)];
        let s = svg(&f, 1).unwrap();
        assert_eq!(s.matches("<polyline").count(), 5, "one per series");
        assert_eq!(s.matches("<circle").count(), 3);
        assert!(svg(&f, 2).is_none());
    }
}
