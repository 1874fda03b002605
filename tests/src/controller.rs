//! `rampctl serve` as a real process for tests and the demo: port 0 (the address it bound is read
//! from its log), its own database file, killed on drop and if the test process dies.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::envoy::repo_root;
use crate::upstream::ModelServer;

/// `$RAMPCTL_BIN`, else the debug build `make` prepares.
pub fn rampctl_binary() -> PathBuf {
    std::env::var_os("RAMPCTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/debug/rampctl"))
}

/// The tokens a harness controller takes besides the operator's, unless a test passes its own
/// (`--report-token ...`) or `--insecure-no-auth`: the filters' (wired into Envoy's VM by
/// `two_arm_config_with_controller`), a reader's and Prometheus'.
pub const REPORT_TOKEN: &str = "ramp-report-token";
pub const READ_TOKEN: &str = "ramp-read-token";
pub const METRICS_TOKEN: &str = "ramp-metrics-token";

pub struct Controller {
    child: Option<Child>,
    pub port: u16,
    pub db: PathBuf,
    pub token: String,
    /// The read-only token it was started with, if any.
    pub read_token: Option<String>,
    /// The report token it was started with, if any.
    pub report_token: Option<String>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Controller {
    /// Starts `rampctl serve` on a free port with the database at `db`.
    pub fn start(db: &Path, token: &str) -> Result<Self> {
        Self::start_at(db, token, 0)
    }

    /// The same on a given port: a restarted controller comes back where the Envoys expect it.
    pub fn start_at(db: &Path, token: &str, port: u16) -> Result<Self> {
        Self::start_with(db, token, port, &[])
    }

    /// The same with more `serve` arguments (`--report-token ...`).
    pub fn start_with(db: &Path, token: &str, port: u16, extra: &[&str]) -> Result<Self> {
        Self::start_binary(&rampctl_binary(), db, token, port, extra)
    }

    /// The same with a given `rampctl` binary (a crate's own tests pass the one cargo built for
    /// them). When it exits instead of serving, the error holds its log.
    pub fn start_binary(
        binary: &Path,
        db: &Path,
        token: &str,
        port: u16,
        extra: &[&str],
    ) -> Result<Self> {
        let open = extra.contains(&"--insecure-no-auth");
        let given = |flag: &str| extra.iter().position(|a| *a == flag);
        let mut defaults: Vec<&str> = Vec::new();
        let mut tokens = Vec::new();
        for (flag, default) in [
            ("--auth-token", token),
            ("--report-token", REPORT_TOKEN),
            ("--read-token", READ_TOKEN),
            ("--metrics-token", METRICS_TOKEN),
        ] {
            let value = match given(flag) {
                Some(i) => extra.get(i + 1).map(|v| (*v).to_owned()),
                None if open => None,
                None => {
                    defaults.extend([flag, default]);
                    Some(default.to_owned())
                }
            };
            tokens.push(value);
        }
        let mut cmd = Command::new(binary);
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--db"])
            .arg(db)
            .args(&defaults)
            .args(extra)
            .env_remove("RAMPCTL_SERVE_TOKEN")
            .env_remove("RAMPCTL_REPORT_TOKEN")
            .env_remove("RAMPCTL_READ_TOKEN")
            .env_remove("RAMPCTL_METRICS_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        crate::envoy::die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .context("starting rampctl (run `make e2e`, which builds it)")?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("rampctl: serving on http://") {
                    let _ = tx.send(Some(addr.to_owned()));
                }
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
            let _ = tx.send(None); // it exited
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(addr)) => addr,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                let said = log.lock().map(|l| l.join("\n")).unwrap_or_default();
                bail!("rampctl did not start: {said}");
            }
        };
        let port = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow!("bad address {addr}"))?;
        Ok(Self {
            child: Some(child),
            port,
            db: db.to_owned(),
            token: tokens[0].clone().unwrap_or_default(),
            report_token: tokens[1].clone(),
            read_token: tokens[2].clone(),
            log,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The process id, while it runs (for CPU accounting in benchmarks).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Calls the API; returns the status and the JSON answer. `auth`: with the operator's
    /// token; without it, with the least credential a caller of this endpoint holds: the report
    /// token for a filter's report or poll, the read-only token for other reads, none for a
    /// change (so `auth: false` on a change is an unauthenticated attempt).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        auth: bool,
    ) -> Result<(u16, serde_json::Value)> {
        let token = if auth {
            Some(self.token.as_str())
        } else {
            self.least_credential(method, path)
        };
        self.call_as(method, path, body, token)
    }

    /// The token a caller of this endpoint who is not the operator would hold.
    fn least_credential(&self, method: &str, path: &str) -> Option<&str> {
        let route = path.split('?').next().unwrap_or(path);
        let filters = (method == "GET" && route.ends_with("/state"))
            || (method == "POST" && route.ends_with("/reports"));
        if filters {
            self.report_token.as_deref()
        } else if method == "GET" {
            self.read_token.as_deref()
        } else {
            None
        }
    }

    /// Calls the API with exactly this bearer token (or none).
    pub fn call_as(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> Result<(u16, serde_json::Value)> {
        let mut req = ureq::request(method, &self.url(path));
        if let Some(t) = token {
            req = req.set("authorization", &format!("Bearer {t}"));
        }
        let resp = match body {
            Some(b) => req.send_string(b),
            None => req.call(),
        };
        let resp = match resp {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => bail!("{e}"),
        };
        let status = resp.status();
        let text = resp.into_string()?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        ))
    }

    /// Sends an operator command (`{"command": ...}`) with the token; status and answer.
    pub fn command(&self, rollout: &str, command: &str) -> Result<(u16, serde_json::Value)> {
        let body = serde_json::json!({ "command": command }).to_string();
        self.call(
            "POST",
            &format!("/v1/rollouts/{rollout}/commands"),
            Some(&body),
            true,
        )
    }

    /// Applies a rollout spec with the token; an error unless the controller created it.
    pub fn apply(&self, spec: &str) -> Result<serde_json::Value> {
        let (code, v) = self.call("POST", "/v1/rollouts", Some(spec), true)?;
        if code != 201 {
            bail!("apply answered {code}: {v}");
        }
        Ok(v)
    }

    /// Polls the rollout's status until `done` holds or `timeout` passes; returns the last status.
    pub fn wait_for(
        &self,
        name: &str,
        timeout: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, v) = self.call("GET", &format!("/v1/rollouts/{name}"), None, false)?;
            if done(&v) || Instant::now() > deadline {
                return Ok(v);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The rollout's history: each event's kind and detail, oldest first.
    pub fn events(&self, rollout: &str) -> Result<Vec<(String, String)>> {
        let (_, h) = self.call(
            "GET",
            &format!("/v1/rollouts/{rollout}/history"),
            None,
            false,
        )?;
        Ok(h["events"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let text = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                (text("kind"), text("detail"))
            })
            .collect())
    }

    /// The kinds of the rollout's events, oldest first.
    pub fn event_kinds(&self, rollout: &str) -> Result<Vec<String>> {
        Ok(self.events(rollout)?.into_iter().map(|(k, _)| k).collect())
    }

    /// Runs the `rampctl` command line against this controller (with the operator's token when
    /// `auth`, else the read-only one): exit code, stdout, stderr.
    pub fn cli(&self, args: &[&str], auth: bool) -> Result<(i32, String, String)> {
        let mut cmd = Command::new(rampctl_binary());
        cmd.args(args)
            .env("RAMPCTL_SERVER", self.url(""))
            .env_remove("RAMPCTL_TOKEN");
        let token = if auth {
            Some(self.token.as_str())
        } else {
            self.read_token.as_deref()
        };
        if let Some(t) = token {
            cmd.env("RAMPCTL_TOKEN", t);
        }
        let out = cmd.output().context("running rampctl")?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What most rollout tests start with: a controller on a fresh database (token `s3cret`) and the
/// two model servers, v1 and v2, that the Envoys route to.
pub struct Rig {
    pub controller: Controller,
    pub v1: ModelServer,
    pub v2: ModelServer,
    /// Holds the database; removed when the rig is dropped.
    pub dir: tempfile::TempDir,
}

impl Rig {
    pub fn start() -> Result<Self> {
        Self::start_with(&[])
    }

    /// The same with more `rampctl serve` arguments.
    pub fn start_with(serve_args: &[&str]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let controller =
            Controller::start_with(&dir.path().join("ramp.db"), "s3cret", 0, serve_args)?;
        Ok(Self {
            controller,
            v1: ModelServer::start("v1")?,
            v2: ModelServer::start("v2")?,
            dir,
        })
    }
}
