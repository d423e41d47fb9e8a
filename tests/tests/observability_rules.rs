//! The alert and recording rules of deploy/observability against the real
//! promtool (Debian's `prometheus` package): the rules file is valid, its
//! unit tests (tests/observability/rules_test.yaml) pass, every alert has a
//! test that fires it and one where it stays quiet, an operator-facing
//! summary and description, and a runbook section in docs/operations.md;
//! the PrometheusRule manifest carries exactly the same groups; the Grafana
//! dashboard has its variables and reads the recording rules.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use serde_norway::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn rules_path() -> PathBuf {
    root().join("deploy/observability/rules.yaml")
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn yaml(p: &Path) -> Value {
    serde_norway::from_str(&read(p)).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `promtool <args>`: (success, stdout + stderr).
fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(root())
        .output()
        .expect("running promtool (Debian package prometheus; cargo xtask provisions it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Every rule of the rules file, as (group, rule) mappings.
fn rules() -> Vec<Value> {
    yaml(&rules_path())["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").clone())
        .collect()
}

fn alerts() -> Vec<Value> {
    rules().into_iter().filter(|r| r.get("alert").is_some()).collect()
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    let (ok, out) = promtool(&["check", "rules", "deploy/observability/rules.yaml"]);
    assert!(ok, "{out}");
    let n = rules().len();
    assert!(out.contains(&format!("SUCCESS: {n} rules found")), "promtool saw another number of rules than {n}:\n{out}");
    let (ok, out) = promtool(&["test", "rules", "tests/observability/rules_test.yaml"]);
    assert!(ok, "promtool test rules failed:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
    println!("promtool: {n} rules valid, unit tests pass");
}

#[test]
fn every_alert_has_a_test_that_fires_it_and_one_where_it_stays_quiet() {
    let tests = yaml(&root().join("tests/observability/rules_test.yaml"));
    let (mut fires, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for t in tests["tests"].as_sequence().unwrap() {
        for case in t["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = s(&case["alertname"]).to_string();
            match case["exp_alerts"].as_sequence() {
                Some(e) if !e.is_empty() => fires.insert(name),
                _ => quiet.insert(name),
            };
        }
    }
    let names: BTreeSet<String> = alerts().iter().map(|a| s(&a["alert"]).to_string()).collect();
    assert!(names.len() >= 12, "{names:?}");
    for n in &names {
        assert!(fires.contains(n), "no unit test fires {n}");
        assert!(quiet.contains(n), "no unit test shows {n} staying quiet");
    }
    let unknown: Vec<_> = fires.union(&quiet).filter(|n| !names.contains(*n)).collect();
    assert!(unknown.is_empty(), "tests of alerts that do not exist: {unknown:?}");
}

#[test]
fn every_alert_tells_the_operator_what_to_do_and_has_a_runbook_section() {
    let docs = read(&root().join("docs/operations.md"));
    for a in alerts() {
        let name = s(&a["alert"]);
        let sev = s(&a["labels"]["severity"]);
        assert!(["critical", "warning"].contains(&sev), "{name}: severity {sev:?}");
        let summary = s(&a["annotations"]["summary"]);
        let description = s(&a["annotations"]["description"]);
        assert!(summary.len() > 20, "{name}: summary {summary:?}");
        assert!(description.len() > 80, "{name}: the description should say what to do: {description:?}");
        let runbook = s(&a["annotations"]["runbook_url"]);
        assert_eq!(runbook, format!("docs/operations.md#{}", name.to_lowercase()), "{name}");
        let heading = format!("\n#### {name}\n");
        let at = docs.find(&heading).unwrap_or_else(|| panic!("docs/operations.md has no `#### {name}` runbook section"));
        // The section says something: at least a few lines before the next heading.
        let body = &docs[at + heading.len()..];
        let body = &body[..body.find("\n#").unwrap_or(body.len())];
        assert!(body.trim().len() > 200, "{name}: runbook section too short:\n{body}");
    }
}

/// The PrometheusRule manifest for `rules` (the rules file's text): a fixed
/// header, then the rules file's groups indented under `spec`.
fn prometheus_rule(rules: &str) -> String {
    let mut out = String::from(
        "# Generated from rules.yaml: edit that file, then run\n\
         #   XDPLB_BLESS=1 cargo test -p xdplb-tests --test observability_rules\n\
         # to rewrite this one (the test fails while they differ).\n\
         apiVersion: monitoring.coreos.com/v1\n\
         kind: PrometheusRule\n\
         metadata:\n  name: xdplb\n  namespace: xdplb-system\n  labels:\n    app.kubernetes.io/name: xdplb\n\
         spec:\n",
    );
    // The rules file's own leading comments describe it, not this manifest.
    for line in rules.lines().skip_while(|l| l.starts_with('#')) {
        if line.is_empty() {
            out.push('\n');
        } else {
            out += &format!("  {line}\n");
        }
    }
    out
}

#[test]
fn the_prometheus_rule_manifest_carries_the_same_rules() {
    let rules = read(&rules_path());
    let want = prometheus_rule(&rules);
    let path = root().join("deploy/observability/prometheusrule.yaml");
    if std::env::var_os("XDPLB_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let got = read(&path);
    assert!(got == want, "{} is not generated from rules.yaml: rerun with XDPLB_BLESS=1", path.display());
    // And the two parse to the same groups.
    let manifest: Value = serde_norway::from_str(&got).unwrap();
    assert_eq!(manifest["spec"]["groups"], yaml(&rules_path())["groups"]);
    assert_eq!(manifest["kind"], "PrometheusRule");
}

#[test]
fn the_dashboard_is_importable_with_datasource_node_and_service_variables() {
    let path = root().join("deploy/observability/dashboard.json");
    let d: serde_json::Value = serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(d["uid"], "xdplb");
    let vars: Vec<&serde_json::Value> = d["templating"]["list"].as_array().unwrap().iter().collect();
    let var = |name: &str| vars.iter().find(|v| v["name"] == name).copied().unwrap_or_else(|| panic!("no variable {name}"));
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    for v in ["node", "namespace", "service"] {
        assert_eq!(var(v)["type"], "query", "{v}");
        assert_eq!(var(v)["datasource"]["uid"], "${datasource}", "{v}");
    }
    let mut ids = BTreeSet::new();
    let mut metrics = 0;
    for p in d["panels"].as_array().unwrap() {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate panel id {}", p["id"]);
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap();
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}: not on the datasource variable");
        assert!(p["description"].as_str().is_some_and(|s| s.len() > 20), "{title}: no description");
        for t in p["targets"].as_array().unwrap() {
            let e = t["expr"].as_str().unwrap();
            assert!(e.contains("$node"), "{title}: {e} ignores the node selector");
            metrics += 1;
        }
    }
    // The per-service panels read the recording rules and honour the service selector.
    let rules = read(&rules_path());
    let mut per_service = 0;
    for p in d["panels"].as_array().unwrap().iter().filter(|p| p["type"] != "row").filter(|p| p["title"].as_str().is_some_and(|t| t.contains("per service") || t.contains("services)"))) {
        let e = p["targets"][0]["expr"].as_str().unwrap();
        assert!(e.contains("$service") && e.contains("$namespace"), "{}: {e}", p["title"]);
        let record = e.split("service:").nth(1).and_then(|r| r.split('{').next()).unwrap_or_else(|| panic!("{}: not on a recording rule: {e}", p["title"]));
        assert!(rules.contains(&format!("record: service:{record}")), "{}: service:{record} is not recorded", p["title"]);
        per_service += 1;
    }
    assert_eq!(per_service, 4, "the per-service panels: packets, new flows, bytes, drops");
    assert!(metrics >= 15, "{metrics} expressions");
}
