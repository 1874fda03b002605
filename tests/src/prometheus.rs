//! A real Prometheus server (Debian's package) for tests: scrapes given Envoy admin endpoints (and
//! `rampctl serve`'s or the test model servers' `/metrics`) every second from a config written to
//! a temporary directory, on a free loopback port, killed on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub struct Prometheus {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `/stats/prometheus` on each of `admin_ports`.
    pub fn start(admin_ports: &[u16]) -> Result<Self> {
        Self::start_with(admin_ports, &[])
    }

    /// The same, also scraping `rampctl serve`'s `/metrics` on each of `controller_ports`.
    pub fn start_with(admin_ports: &[u16], controller_ports: &[u16]) -> Result<Self> {
        Self::start_scraping(admin_ports, controller_ports, &[])
    }

    /// The same, also scraping the test model servers' own `/metrics` on each of `model_ports`
    /// (job `models`; each series carries its server's `arm` label).
    pub fn start_scraping(
        admin_ports: &[u16],
        controller_ports: &[u16],
        model_ports: &[u16],
    ) -> Result<Self> {
        let targets = |ports: &[u16]| {
            ports
                .iter()
                .map(|p| format!("'127.0.0.1:{p}'"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: envoy\n    metrics_path: /stats/prometheus\n    static_configs:\n      - targets: [{}]\n",
            targets(admin_ports)
        );
        if !controller_ports.is_empty() {
            config.push_str(&format!(
                "  - job_name: rampctl\n    metrics_path: /metrics\n    authorization: {{credentials: {}}}\n    static_configs:\n      - targets: [{}]\n",
                crate::controller::METRICS_TOKEN,
                targets(controller_ports)
            ));
        }
        if !model_ports.is_empty() {
            config.push_str(&format!(
                "  - job_name: models\n    metrics_path: /metrics\n    static_configs:\n      - targets: [{}]\n",
                targets(model_ports)
            ));
        }
        let mut p = Self::spawn(&config, None)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while ureq::get(&p.url("/-/ready")).call().is_err() {
            if Instant::now() > deadline || p.child.try_wait()?.is_some() {
                bail!("prometheus did not become ready on port {}", p.port);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(p)
    }

    /// Prometheus with `config` (its prometheus.yml) and, when given, `web_config` (its
    /// `--web.config.file`, e.g. TLS) on a free loopback port, not yet waited for.
    pub fn spawn(config: &str, web_config: Option<&str>) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("prometheus.yml"), config)?;
        // Prometheus cannot report a port it picked itself: take a free one and hand it over.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut cmd =
            Command::new(std::env::var("RAMP_PROMETHEUS").unwrap_or_else(|_| "prometheus".into()));
        cmd.arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some(web) = web_config {
            std::fs::write(dir.path().join("web.yml"), web)?;
            cmd.arg(format!(
                "--web.config.file={}",
                dir.path().join("web.yml").display()
            ));
        }
        crate::envoy::die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .context("starting prometheus (make unit installs Debian's package)")?;
        Ok(Self {
            child,
            port,
            _dir: dir,
        })
    }

    /// An instant query through the HTTP API; the JSON answer.
    pub fn query(&self, promql: &str) -> Result<serde_json::Value> {
        let body = ureq::get(&self.url("/api/v1/query"))
            .query("query", promql)
            .call()?
            .into_string()?;
        Ok(serde_json::from_str(&body)?)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
