//! A real Prometheus (Debian's `prometheus` package) for the metrics
//! tests: started on a free loopback port with a generated configuration
//! and its own storage directory, queried through its HTTP API, killed
//! when dropped. Plus a direct scrape of a `/metrics` endpoint with curl
//! and a reader of the text format's samples.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::volume::require_tool;

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free loopback port")
        .port()
}

/// `curl` GET of `url`; fails the test unless it answers 2xx.
pub fn http_get(url: &str) -> String {
    http_get_with(url, &[])
}

/// [`http_get`] with more curl arguments (`--cacert FILE`, ...).
pub fn http_get_with(url: &str, curl_args: &[&str]) -> String {
    let curl = require_tool("curl", "curl");
    let out = Command::new(curl)
        .args(["-sS", "--fail", "--max-time", "10"])
        .args(curl_args)
        .arg(url)
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "GET {url} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 response")
}

/// The value of the sample `name{labels...}` in a text-format scrape
/// (every given label must match; others may be present), if there is one.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let matches = metric == name
                && labels
                    .iter()
                    .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            matches.then(|| value.parse().expect("a numeric sample value"))
        })
}

/// A running Prometheus; killed on drop.
pub struct Prometheus {
    child: Child,
    _dir: tempfile::TempDir,
    pub url: String,
}

impl Prometheus {
    /// Starts Prometheus scraping each `(job, host:port)` target's
    /// `/metrics` every second, and waits until it is ready.
    pub fn start(targets: &[(&str, String)]) -> Prometheus {
        let binary = require_tool("prometheus", "prometheus");
        let dir = tempfile::tempdir().unwrap();
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (job, target) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
            ));
        }
        let config_path: PathBuf = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        let mut prometheus = Prometheus {
            child,
            _dir: dir,
            url: format!("http://127.0.0.1:{port}"),
        };
        prometheus.wait_ready();
        prometheus
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let ready = format!("{}/-/ready", self.url);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("prometheus exited at start: {status}");
            }
            let ok = Command::new("curl")
                .args(["-s", "--fail", "--max-time", "2", &ready])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within 30 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// An instant PromQL query through `/api/v1/query`: each result's
    /// labels and value.
    pub fn query(&self, promql: &str) -> Vec<(serde_json::Value, f64)> {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "10", "-G"])
            .arg(format!("{}/api/v1/query", self.url))
            .arg("--data-urlencode")
            .arg(format!("query={promql}"))
            .output()
            .expect("run curl");
        assert!(
            out.status.success(),
            "query {promql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let reply: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON reply");
        assert_eq!(reply["status"], "success", "{reply}");
        reply["data"]["result"]
            .as_array()
            .expect("a vector result")
            .iter()
            .map(|r| {
                let value = r["value"][1].as_str().expect("a value").parse().unwrap();
                (r["metric"].clone(), value)
            })
            .collect()
    }

    /// Polls `promql` until `accept` holds for its results (Prometheus
    /// scrapes every second), for at most `timeout`; the last results.
    pub fn query_until(
        &self,
        promql: &str,
        timeout: Duration,
        accept: impl Fn(&[(serde_json::Value, f64)]) -> bool,
    ) -> Vec<(serde_json::Value, f64)> {
        let deadline = Instant::now() + timeout;
        loop {
            let results = self.query(promql);
            if accept(&results) || Instant::now() > deadline {
                return results;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
