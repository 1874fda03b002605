//! Starting and stopping real Envoy processes for tests, the demo and the benchmark.
//!
//! Configs come from the committed files under `envoy/` (what users run), rewritten for the run: every
//! port becomes 0 (Envoy picks a free one and the admin API tells us which), clusters point at our
//! test servers, the filter gets its JSON config. An [`Envoy`] kills its process when dropped, and the
//! kernel kills it if the test process dies first (PR_SET_PDEATHSIG), so nothing outlives a test.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_yaml::Value;

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The Envoy binary: `$RAMP_ENVOY`, else the one `make` installs into `.venv`.
pub fn envoy_binary() -> PathBuf {
    std::env::var_os("RAMP_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/envoy"))
}

/// The release filter `make wasm` builds (optimized by wasm-opt).
pub fn ramp_wasm() -> PathBuf {
    repo_root().join("target/ramp/ramp_filter.wasm")
}

/// Asks the kernel to kill the child when the process that started it dies, so a killed test run
/// leaves no Envoy, controller or Prometheus behind.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// A config derived from a committed Envoy file.
pub struct EnvoyConfig {
    doc: Value,
}

impl EnvoyConfig {
    /// Loads `envoy/<name>` and makes it hermetic: ports 0, absolute wasm paths, fast stats flushes.
    pub fn from_repo(name: &str) -> Result<Self> {
        let path = repo_root().join("envoy").join(name);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut doc: Value = serde_yaml::from_str(&text)?;
        set(
            &mut doc,
            &["admin", "address", "socket_address", "port_value"],
            0.into(),
        )?;
        for listener in seq_mut(&mut doc, &["static_resources", "listeners"])? {
            set(
                listener,
                &["address", "socket_address", "port_value"],
                0.into(),
            )?;
        }
        doc["stats_flush_interval"] = Value::String("0.5s".into());
        let mut cfg = Self { doc };
        for wasm in cfg.wasm_filters() {
            let code = &mut wasm["vm_config"]["code"]["local"]["filename"];
            let rel = code
                .as_str()
                .ok_or_else(|| anyhow!("wasm filter without a local filename"))?;
            let abs = repo_root().join(rel);
            if !abs.exists() {
                bail!("{} is missing: run `make wasm` first", abs.display());
            }
            *code = Value::String(abs.display().to_string());
        }
        Ok(cfg)
    }

    /// Points cluster `name` at a loopback port.
    pub fn upstream(mut self, cluster: &str, port: u16) -> Result<Self> {
        let clusters = seq_mut(&mut self.doc, &["static_resources", "clusters"])?;
        let c = clusters
            .iter_mut()
            .find(|c| c["name"].as_str() == Some(cluster))
            .ok_or_else(|| anyhow!("no cluster {cluster:?}"))?;
        let endpoints = seq_mut(c, &["load_assignment", "endpoints"])?;
        for group in endpoints {
            for ep in seq_mut(group, &["lb_endpoints"])? {
                set(
                    ep,
                    &["endpoint", "address", "socket_address", "port_value"],
                    port.into(),
                )?;
            }
        }
        Ok(self)
    }

    /// Adds an arm to `envoy/ramp.yaml`'s layout: cluster `model_<arm>` on a loopback port (a copy
    /// of `model_v2`) and a first route that sends requests the filter marked `x-ramp-arm: <arm>`
    /// there.
    pub fn extra_arm(mut self, arm: &str, port: u16) -> Result<Self> {
        let clusters = seq_mut(&mut self.doc, &["static_resources", "clusters"])?;
        let mut copy = clusters
            .iter()
            .find(|c| c["name"].as_str() == Some("model_v2"))
            .cloned()
            .ok_or_else(|| anyhow!("no cluster model_v2 to copy"))?;
        let name = Value::String(format!("model_{arm}"));
        copy["name"] = name.clone();
        copy["load_assignment"]["cluster_name"] = name.clone();
        clusters.push(copy);
        let route: Value = serde_yaml::from_str(&format!(
            "{{match: {{prefix: /, headers: [{{name: x-ramp-arm, string_match: {{exact: {arm}}}}}]}}, route: {{cluster: model_{arm}}}}}"
        ))?;
        self.routes()?.insert(0, route);
        self.upstream(&format!("model_{arm}"), port)
    }

    /// Envoy's fault filter after the wasm filters, aborting `percent`% of the requests routed to
    /// `arm` with a 503 of its own: requests the filter assigned that never reach the model.
    pub fn drop_share(mut self, arm: &str, percent: u32) -> Result<Self> {
        let fault = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";
        let hcm = self.hcm()?;
        let filters = hcm["http_filters"]
            .as_sequence_mut()
            .ok_or_else(|| anyhow!("no http_filters"))?;
        let router = filters.len().saturating_sub(1);
        filters.insert(
            router,
            serde_yaml::from_str(&format!(
                "{{name: envoy.filters.http.fault, typed_config: {{'@type': {fault}}}}}"
            ))?,
        );
        let route = self
            .routes()?
            .iter_mut()
            .find(|r| r["route"]["cluster"].as_str() == Some(&format!("model_{arm}")))
            .ok_or_else(|| anyhow!("no route to model_{arm}"))?;
        route["typed_per_filter_config"] = serde_yaml::from_str(&format!(
            "{{envoy.filters.http.fault: {{'@type': {fault}, abort: {{http_status: 503, percentage: {{numerator: {percent}, denominator: HUNDRED}}}}}}}}"
        ))?;
        Ok(self)
    }

    /// The first listener's HTTP connection manager.
    fn hcm(&mut self) -> Result<&mut Value> {
        let listener = seq_mut(&mut self.doc, &["static_resources", "listeners"])?
            .first_mut()
            .ok_or_else(|| anyhow!("no listener"))?;
        let chain = seq_mut(listener, &["filter_chains"])?
            .first_mut()
            .ok_or_else(|| anyhow!("no filter chain"))?;
        let f = seq_mut(chain, &["filters"])?
            .first_mut()
            .ok_or_else(|| anyhow!("no network filter"))?;
        Ok(&mut f["typed_config"])
    }

    /// The routes of the first listener's first virtual host.
    fn routes(&mut self) -> Result<&mut Vec<Value>> {
        let hosts = seq_mut(self.hcm()?, &["route_config", "virtual_hosts"])?;
        let host = hosts
            .first_mut()
            .ok_or_else(|| anyhow!("no virtual host"))?;
        seq_mut(host, &["routes"])
    }

    /// Replaces the JSON configuration of every wasm filter whose plugin is named `plugin`.
    pub fn plugin_config(mut self, plugin: &str, json: &serde_json::Value) -> Result<Self> {
        let mut found = false;
        for wasm in self.wasm_filters() {
            if wasm["name"].as_str() == Some(plugin) {
                wasm["configuration"]["value"] = Value::String(json.to_string());
                found = true;
            }
        }
        found
            .then_some(self)
            .ok_or_else(|| anyhow!("no wasm plugin named {plugin:?}"))
    }

    /// Sets an environment variable of the wasm VM of plugin `plugin`
    /// (`vm_config.environment_variables.key_values`).
    pub fn vm_env(mut self, plugin: &str, key: &str, value: &str) -> Result<Self> {
        let mut found = false;
        for wasm in self.wasm_filters() {
            if wasm["name"].as_str() == Some(plugin) {
                wasm["vm_config"]["environment_variables"]["key_values"][key] =
                    Value::String(value.to_owned());
                found = true;
            }
        }
        found
            .then_some(self)
            .ok_or_else(|| anyhow!("no wasm plugin named {plugin:?}"))
    }

    pub fn to_yaml(&self) -> Result<String> {
        Ok(serde_yaml::to_string(&self.doc)?)
    }

    fn wasm_filters(&mut self) -> Vec<&mut Value> {
        let mut out = Vec::new();
        if let Some(listeners) = self.doc["static_resources"]["listeners"].as_sequence_mut() {
            for l in listeners {
                for chain in l["filter_chains"].as_sequence_mut().into_iter().flatten() {
                    for f in chain["filters"].as_sequence_mut().into_iter().flatten() {
                        let http = f["typed_config"]["http_filters"].as_sequence_mut();
                        for hf in http.into_iter().flatten() {
                            let t = hf["typed_config"]["@type"].as_str().unwrap_or_default();
                            if t.ends_with("filters.http.wasm.v3.Wasm") {
                                out.push(&mut hf["typed_config"]["config"]);
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

fn seq_mut<'a>(v: &'a mut Value, path: &[&str]) -> Result<&'a mut Vec<Value>> {
    let mut cur = v;
    for key in path {
        cur = cur
            .get_mut(*key)
            .ok_or_else(|| anyhow!("config has no {}", path.join(".")))?;
    }
    cur.as_sequence_mut()
        .ok_or_else(|| anyhow!("{} is not a list", path.join(".")))
}

fn set(v: &mut Value, path: &[&str], value: Value) -> Result<()> {
    let (last, parents) = path.split_last().ok_or_else(|| anyhow!("empty path"))?;
    let mut cur = v;
    for key in parents {
        cur = cur
            .get_mut(*key)
            .ok_or_else(|| anyhow!("config has no {}", path.join(".")))?;
    }
    cur[*last] = value;
    Ok(())
}

/// A running Envoy. Dropping it stops the process.
pub struct Envoy {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub admin_port: u16,
    /// Listener name -> the port Envoy bound.
    pub listeners: BTreeMap<String, u16>,
    concurrency: u32,
}

impl Envoy {
    /// Starts Envoy with `config` and `--concurrency`; returns once it serves traffic.
    pub fn start(config: &EnvoyConfig, concurrency: u32) -> Result<Self> {
        let mut envoy = Self::prepare(config, concurrency)?;
        envoy.spawn()?;
        Ok(envoy)
    }

    /// Writes the config into a fresh directory; starts nothing.
    fn prepare(config: &EnvoyConfig, concurrency: u32) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("envoy.yaml"), config.to_yaml()?)?;
        Ok(Self {
            child: None,
            dir,
            admin_port: 0,
            listeners: BTreeMap::new(),
            concurrency,
        })
    }

    /// Starts Envoy with a config it must refuse; returns its log once it has exited.
    pub fn start_expecting_refusal(config: &EnvoyConfig) -> Result<String> {
        let mut envoy = Self::start_unchecked(config)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let child = envoy.child.as_mut().ok_or_else(|| anyhow!("no child"))?;
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                if status.success() {
                    bail!(
                        "envoy exited 0 on a config it should refuse:\n{}",
                        envoy.log()
                    );
                }
                return Ok(envoy.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "envoy still running on a config it should refuse:\n{}",
            envoy.log()
        )
    }

    fn start_unchecked(config: &EnvoyConfig) -> Result<Self> {
        let mut envoy = Self::prepare(config, 1)?;
        envoy.child = Some(envoy.command().spawn()?);
        Ok(envoy)
    }

    fn command(&self) -> Command {
        let d = self.dir.path();
        let _ = std::fs::remove_file(d.join("admin.txt"));
        let mut cmd = Command::new(envoy_binary());
        cmd.arg("-c")
            .arg(d.join("envoy.yaml"))
            .arg("--concurrency")
            .arg(self.concurrency.to_string())
            .arg("--disable-hot-restart")
            .arg("--admin-address-path")
            .arg(d.join("admin.txt"))
            .arg("--log-path")
            .arg(d.join("envoy.log"))
            // Tests read the log (refusal messages, shadow records); the default flush is every 10 s.
            .arg("--file-flush-interval-msec")
            .arg("100")
            .arg("-l")
            .arg("info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        die_with_parent(&mut cmd);
        cmd
    }

    fn spawn(&mut self) -> Result<()> {
        self.child = Some(
            self.command()
                .spawn()
                .context("starting envoy (run `make venv`?)")?,
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        let admin_file = self.dir.path().join("admin.txt");
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("envoy exited with {status} during start:\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!("envoy did not become ready in 60 s:\n{}", self.log());
            }
            if let Some(port) = std::fs::read_to_string(&admin_file)
                .ok()
                .and_then(|a| a.trim().rsplit(':').next().and_then(|p| p.parse().ok()))
            {
                self.admin_port = port;
                if ureq::get(&self.admin_url("/ready")).call().is_ok() {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let text = ureq::get(&self.admin_url("/listeners?format=json"))
            .call()?
            .into_string()?;
        let listeners: serde_json::Value = serde_json::from_str(&text)?;
        self.listeners.clear();
        for l in listeners["listener_statuses"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let name = l["name"].as_str().unwrap_or_default().to_owned();
            let port = l["local_address"]["socket_address"]["port_value"]
                .as_u64()
                .unwrap_or(0);
            self.listeners.insert(name, port as u16);
        }
        Ok(())
    }

    /// Stops Envoy and starts it again with the same config (new ports).
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    /// URL on the first (or only) listener.
    pub fn url(&self, path: &str) -> String {
        let port = self.listeners.values().next().copied().unwrap_or(0);
        format!("http://127.0.0.1:{port}{path}")
    }

    pub fn listener_url(&self, listener: &str, path: &str) -> Result<String> {
        let port = self
            .listeners
            .get(listener)
            .ok_or_else(|| anyhow!("no listener {listener:?}"))?;
        Ok(format!("http://127.0.0.1:{port}{path}"))
    }

    /// The Envoy process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// CPU time Envoy's threads have used so far, in nanoseconds (Linux schedstat), or `None` when
    /// the process is gone. Per-request CPU is steadier on a shared machine than throughput is.
    pub fn cpu_ns(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        let mut total = 0;
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
        }
        Some(total)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// The shadow pair records (`ramp-shadow {...}` lines) this Envoy has logged, parsed.
    pub fn shadow_records(&self) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .filter_map(|l| l.split_once("ramp-shadow "))
            .filter_map(|(_, json)| serde_json::from_str(json).ok())
            .collect()
    }

    pub fn prometheus(&self) -> Result<String> {
        Ok(ureq::get(&self.admin_url("/stats/prometheus"))
            .call()?
            .into_string()?)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.stop();
    }
}
