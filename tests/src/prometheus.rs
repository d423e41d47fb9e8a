//! A real Prometheus (Debian's `prometheus` package) inside a namespace,
//! scraping one target every second and evaluating rules every second, and
//! its HTTP API (through curl in the same namespace). Its directory and
//! process go away on drop.
use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{netns::Netns, wait_for};

/// Where Prometheus listens, inside its namespace.
const LISTEN: &str = "127.0.0.1:9090";

pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    ns: String,
}

impl Prometheus {
    /// Starts Prometheus in `ns` scraping `target` (host:port in `ns`) as job
    /// `xdplb`, instance `instance`, with the rules file `rules` (text).
    pub fn start(ns: &Netns, target: &str, instance: &str, rules: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("xlbt-{}-prom{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        std::fs::write(dir.join("rules.yaml"), rules).unwrap();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files: [rules.yaml]\n\
                 scrape_configs:\n- job_name: xdplb\n  static_configs:\n  - targets: ['{target}']\n    labels: {{instance: {instance}}}\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name()))
            .arg("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={LISTEN}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting prometheus (Debian package prometheus; cargo xtask provisions it)");
        let p = Self { child, dir, ns: ns.name().to_string() };
        let up = wait_for(Duration::from_secs(30), || {
            // Not at wait_for's 20 ms: each try is a curl process.
            std::thread::sleep(Duration::from_millis(200));
            p.get("/-/ready", &[]).is_some()
        });
        assert!(up, "prometheus did not get ready:\n{}", p.log());
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// GET `path` with URL-encoded `params`; the body, if the request succeeded.
    fn get(&self, path: &str, params: &[(&str, &str)]) -> Option<String> {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns)).args(["curl", "-sf", "--max-time", "10", "-G"]);
        for (k, v) in params {
            c.arg("--data-urlencode").arg(format!("{k}={v}"));
        }
        let out = c.arg(format!("http://{LISTEN}{path}")).output().expect("running curl");
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// An instant query (at `time`, Unix seconds, or now): the result vector.
    /// Panics on a query error (bad PromQL, a renamed function).
    pub fn query_at(&self, q: &str, time: Option<f64>) -> Vec<Value> {
        let t = time.map(|t| format!("{t:.3}"));
        let mut params = vec![("query", q)];
        if let Some(t) = &t {
            params.push(("time", t));
        }
        let body = self.get("/api/v1/query", &params).unwrap_or_else(|| panic!("query {q:?} failed:\n{}", self.log()));
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(v["status"], "success", "{q}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    pub fn query(&self, q: &str) -> Vec<Value> {
        self.query_at(q, None)
    }

    /// The alerts now pending or firing.
    pub fn alerts(&self) -> Vec<Value> {
        let body = self.get("/api/v1/alerts", &[]).unwrap_or_else(|| panic!("/api/v1/alerts failed:\n{}", self.log()));
        let v: Value = serde_json::from_str(&body).unwrap();
        v["data"]["alerts"].as_array().cloned().unwrap_or_default()
    }
}

/// The value of one sample of a query result.
pub fn value(sample: &Value) -> f64 {
    sample["value"][1].as_str().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN)
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
