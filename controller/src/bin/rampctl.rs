//! `rampctl`: the operator's command line for Ramp rollouts. `rampctl serve` runs the controller;
//! the other subcommands talk to its HTTP API (`--server`, `--token` or RAMPCTL_SERVER/RAMPCTL_TOKEN).
//!
//! Exit codes, so a CI job can gate on a rollout (`status NAME --watch --timeout 30m`): 0 success
//! (for `--watch`: the rollout succeeded), 1 a local error, 2 the API refused or could not be
//! reached (or `validate` found the spec invalid), 3 rolled back, 4 aborted, 5 the timeout passed,
//! 6 the rollout cannot be loaded (phase `error`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use ramp_controller::api::{
    CheckFigures, CheckVerdict, CommandRequest, ErrorAnswer, History, Loaded, RolloutList,
    RolloutStatus, RuleCheck, Status,
};
use ramp_controller::clock::now_ms;
use ramp_controller::gitops::SpecsSeen;
use ramp_controller::machine::{Command, Phase};
use ramp_controller::report::RolloutReport;
use ramp_controller::spec::{wire_name, Bound, Metric, Spec};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

#[derive(Parser)]
#[command(
    name = "rampctl",
    version,
    about = "Progressive delivery of ML models with Ramp"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    /// The controller's address.
    #[arg(
        long,
        global = true,
        env = "RAMPCTL_SERVER",
        default_value = "http://127.0.0.1:9090"
    )]
    server: String,
    /// Bearer token the calls carry: the operator's (`serve --auth-token`), or the read-only one
    /// for status, list, history, report and specs.
    #[arg(long, global = true, env = "RAMPCTL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A PEM file of CA certificates that https trusts besides the system's: `serve`'s hooks and
    /// Prometheus, and the other commands' https `--server`.
    #[arg(long = "ca-file", global = true, env = "RAMPCTL_CA_FILE")]
    ca_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check a rollout spec (YAML or JSON) and print the stages it describes (exit 2 and the
    /// field on error).
    Validate {
        /// The spec file (YAML or JSON).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Machine-readable output: `{"valid", "name", "stages"}` or `{"valid", "field", "reason"}`.
        #[arg(long)]
        json: bool,
    },
    /// Run the controller: HTTP API, rollout loop, SQLite store.
    Serve {
        /// The address the API listens on (plain HTTP: put TLS in front of it).
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: std::net::SocketAddr,
        /// The SQLite store; one `serve` at a time holds it (a lock beside it, `<db>.lock`).
        #[arg(long, default_value = "ramp.db")]
        db: PathBuf,
        /// Replicas: a PostgreSQL connection string (`postgres://user:password@host/db`) used
        /// instead of --db, by every replica alike (also RAMPCTL_STORE, so a password need not
        /// sit in the process's arguments).
        #[arg(
            long,
            env = "RAMPCTL_STORE",
            hide_env_values = true,
            conflicts_with = "store_file"
        )]
        store: Option<String>,
        /// --store read from a file (a mounted Secret); surrounding whitespace is ignored.
        #[arg(long = "store-file")]
        store_file: Option<PathBuf>,
        /// The operator's token: apply, commands, feedback, and every read (also
        /// RAMPCTL_SERVE_TOKEN). Required unless --insecure-no-auth.
        #[arg(
            long = "auth-token",
            env = "RAMPCTL_SERVE_TOKEN",
            hide_env_values = true
        )]
        auth_token: Option<String>,
        /// The filters' token (their controller.token_env): reports and live-state polls (also
        /// RAMPCTL_REPORT_TOKEN). Required unless --insecure-no-auth.
        #[arg(
            long = "report-token",
            env = "RAMPCTL_REPORT_TOKEN",
            hide_env_values = true
        )]
        report_token: Option<String>,
        /// A read-only token: status, list, history, report, /v1/specs, live state and /metrics (also
        /// RAMPCTL_READ_TOKEN).
        #[arg(
            long = "read-token",
            env = "RAMPCTL_READ_TOKEN",
            hide_env_values = true
        )]
        read_token: Option<String>,
        /// A token for /metrics alone, for Prometheus (also RAMPCTL_METRICS_TOKEN).
        #[arg(
            long = "metrics-token",
            env = "RAMPCTL_METRICS_TOKEN",
            hide_env_values = true
        )]
        metrics_token: Option<String>,
        /// Serve every endpoint without credentials (a laptop, a test); never where others can
        /// reach the port.
        #[arg(long = "insecure-no-auth")]
        insecure_no_auth: bool,
        /// A directory of rollout specs (a ConfigMap or a git-synced volume) to reconcile: a new
        /// file starts a rollout, an edit changes it, a removal leaves it as it is.
        #[arg(long, env = "RAMPCTL_SPECS")]
        specs: Option<PathBuf>,
        /// How often to read --specs, in seconds.
        #[arg(long = "specs-interval-s", default_value_t = 2.0)]
        specs_interval_s: f64,
        /// At most this many API connections at a time (default 10,000, or what the open-files
        /// limit leaves); more are closed at once.
        #[arg(long = "max-connections", value_parser = clap::value_parser!(u32).range(1..))]
        max_connections: Option<u32>,
    },
    /// What `serve --specs` found in its directory, file by file.
    Specs {
        /// Print the API's JSON answer instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Start a rollout from a spec file.
    Apply {
        /// The spec file (YAML or JSON).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Print the API's JSON answer instead of text.
        #[arg(long)]
        json: bool,
    },
    /// All rollouts.
    List {
        /// Print the API's JSON answer instead of text.
        #[arg(long)]
        json: bool,
    },
    /// One rollout: stage, weights, the current window's figures.
    Status {
        /// The rollout's name.
        name: String,
        /// Print the API's JSON answer instead of text.
        #[arg(long)]
        json: bool,
        /// Refresh every second until the rollout is promoted, rolled back or aborted; the exit
        /// code says which (0 succeeded, 3 rolled back, 4 aborted, 6 cannot be loaded).
        #[arg(long)]
        watch: bool,
        /// With --watch: give up after this long (`90s`, `30m`, `2h`) with exit code 5.
        #[arg(long, requires = "watch", value_parser = parse_duration)]
        timeout: Option<std::time::Duration>,
    },
    /// rampctl's version (and the protocol it speaks).
    Version {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// A shell completion script: `source <(rampctl completion bash)`.
    Completion {
        /// The shell the script is for.
        shell: clap_complete::Shell,
    },
    /// Next stage now (or, with --full, straight to 100%); also opens the manual gate before the
    /// last stage and skips a pending smoke test.
    Promote {
        /// The rollout's name.
        name: String,
        /// Straight to 100% (the candidates' full share), skipping the stages left.
        #[arg(long)]
        full: bool,
        /// With several candidates (A/B/n, bandit): the one that takes the candidates' share.
        #[arg(long)]
        arm: Option<String>,
        /// Print the API's JSON answer instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Hold the rollout where it is: no more checks act and the weights stay (`resume` goes on).
    Pause {
        /// The rollout's name.
        name: String,
        /// Print the API's JSON answer instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Go on after a pause (or a `set-weight` hold): the stage's weight and checks again.
    Resume {
        /// The rollout's name.
        name: String,
        /// Print the API's JSON answer instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Send all traffic back to the baseline now (also after promotion).
    Rollback {
        /// The rollout's name.
        name: String,
        /// Print the API's JSON answer instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Stop the rollout for good: all traffic back to the baseline, and it never resumes.
    Abort {
        /// The rollout's name.
        name: String,
        /// Print the API's JSON answer instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Hold the candidate at WEIGHT percent (pauses the rollout; `resume` returns to the schedule).
    SetWeight {
        /// The rollout's name.
        name: String,
        /// The candidates' share, in percent (0 to 100).
        weight: f64,
        /// Print the API's JSON answer instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The rollout's events.
    History {
        /// The rollout's name.
        name: String,
        /// Print the API's JSON answer instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The decision record: every promotion, advance, pause, rollback and dry-run failure with
    /// the figures it was made on, and the per-check series (plain text by default).
    Report {
        /// The rollout's name.
        name: String,
        /// Print the API's JSON answer instead of text.
        #[arg(long)]
        json: bool,
        /// Also write one self-contained HTML page with plots (inline SVG, nothing fetched).
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rampctl: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Built only by the commands that call the API: a bad --ca-file does not stop `validate`.
    let api = || -> anyhow::Result<Api> {
        Ok(Api {
            server: cli.server.trim_end_matches('/').to_owned(),
            token: cli.token.clone(),
            agent: ramp_controller::tls::api_agent(cli.ca_file.as_deref())?,
        })
    };
    match cli.command {
        Cmd::Serve {
            listen,
            db,
            store,
            store_file,
            auth_token,
            report_token,
            read_token,
            metrics_token,
            insecure_no_auth,
            specs,
            specs_interval_s,
            max_connections,
        } => {
            let specs_every = std::time::Duration::try_from_secs_f64(specs_interval_s)
                .ok()
                .filter(|d| d.as_millis() >= 100)
                .context("--specs-interval-s: at least 0.1")?;
            let store = match store_file {
                Some(path) => Some(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("--store-file {}", path.display()))?
                        .trim()
                        .to_owned(),
                ),
                None => store,
            };
            if let Some(url) = &store {
                anyhow::ensure!(
                    url.starts_with("postgres://") || url.starts_with("postgresql://"),
                    "--store: a postgres:// connection string"
                );
            }
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(ramp_controller::serve::serve(
                ramp_controller::serve::Config {
                    listen,
                    db,
                    store,
                    tokens: ramp_controller::auth::TokenOptions {
                        operator: auth_token,
                        read: read_token,
                        report: report_token,
                        metrics: metrics_token,
                        insecure_no_auth,
                    },
                    specs,
                    specs_every,
                    max_connections: max_connections.map(|n| n as usize),
                    ca_file: cli.ca_file.clone(),
                },
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Apply { file, json } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let api = api()?;
            api.show(
                api.call("POST", "/v1/rollouts", Some(text)),
                json,
                print_status,
            )
        }
        Cmd::List { json } => {
            let api = api()?;
            api.show(
                api.call("GET", "/v1/rollouts", None),
                json,
                |v: &RolloutList| {
                    for r in &v.rollouts {
                        print_status(r);
                    }
                },
            )
        }
        Cmd::Status {
            name,
            json,
            watch: false,
            ..
        } => {
            let api = api()?;
            api.show(
                api.call("GET", &format!("/v1/rollouts/{name}"), None),
                json,
                print_status,
            )
        }
        Cmd::Status {
            name,
            json,
            watch: true,
            timeout,
        } => watch(&api()?, &name, json, timeout),
        Cmd::Specs { json } => {
            let api = api()?;
            api.show(api.call("GET", "/v1/specs", None), json, |v: &SpecsSeen| {
                println!(
                    "specs directory {}{}",
                    v.dir.as_deref().unwrap_or("(none: serve without --specs)"),
                    v.error
                        .as_ref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                );
                for f in &v.files {
                    println!(
                        "  {:<24} {:<20} {}",
                        f.file,
                        f.rollout.as_deref().unwrap_or("-"),
                        f.error
                            .as_ref()
                            .map(|e| format!("INVALID: {e}"))
                            .or_else(|| f.change.as_ref().map(wire_name))
                            .unwrap_or_default()
                    );
                }
            })
        }
        Cmd::Version { json } => {
            let version = env!("CARGO_PKG_VERSION");
            if json {
                println!(
                    "{}",
                    serde_json::json!({"rampctl": version, "report_latency_bounds": ramp_protocol::report::LATENCY_BOUNDS_US.len() + 1})
                );
            } else {
                println!("rampctl {version}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "rampctl",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Promote {
            name,
            full,
            arm,
            json,
        } => {
            let command = if full {
                Command::PromoteFull
            } else {
                Command::Promote
            };
            api()?.send_command(&name, CommandRequest { command, arm }, json)
        }
        Cmd::Pause { name, json } => api()?.command(&name, Command::Pause, json),
        Cmd::Resume { name, json } => api()?.command(&name, Command::Resume, json),
        Cmd::Rollback { name, json } => api()?.command(&name, Command::RollBack, json),
        Cmd::Abort { name, json } => api()?.command(&name, Command::Abort, json),
        Cmd::SetWeight { name, weight, json } => {
            api()?.command(&name, Command::SetWeight { weight }, json)
        }
        Cmd::History { name, json } => {
            let api = api()?;
            api.show(
                api.call("GET", &format!("/v1/rollouts/{name}/history"), None),
                json,
                |v: &History| {
                    for e in &v.events {
                        println!("{}  {:<12} {}", e.at_ms, e.kind, e.detail);
                    }
                },
            )
        }
        Cmd::Report { name, json, html } => {
            let api = api()?;
            let answer = api.call("GET", &format!("/v1/rollouts/{name}/report"), None);
            let v = match answer {
                Ok(v) => v,
                Err(e) => return api.show(Err(e), json, |_: &Value| {}),
            };
            if json {
                println!("{v}");
            }
            let report: RolloutReport = serde_json::from_value(v)
                .context("the controller's report is not in the form this rampctl reads")?;
            if let Some(path) = html {
                std::fs::write(&path, ramp_controller::report_html::page(&report))
                    .with_context(|| format!("writing {}", path.display()))?;
                eprintln!(
                    "rampctl: wrote {} ({} events, {} checks plotted)",
                    path.display(),
                    report.events.len(),
                    report.checks.len()
                );
            }
            if !json {
                print!("{}", ramp_controller::report::text(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Validate { file, json } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            match Spec::parse(&text) {
                Ok(spec) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"valid": true, "name": spec.name, "stages": spec.stages.len()})
                        );
                    } else {
                        print_plan(&spec);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"valid": false, "field": e.field, "reason": e.reason})
                        );
                    } else {
                        eprintln!("{}: {e}", file.display());
                    }
                    Ok(ExitCode::from(2))
                }
            }
        }
    }
}

struct Api {
    server: String,
    token: Option<String>,
    /// Built once: its roots are the system's plus --ca-file's.
    agent: ureq::Agent,
}

impl Api {
    /// The API's JSON answer, or its error message (with the HTTP status) as `Err`. `body` is a
    /// spec (YAML) for `apply`, or JSON for commands.
    fn call(&self, method: &str, path: &str, body: Option<String>) -> Result<Value, String> {
        let mut req = self
            .agent
            .request(method, &format!("{}{path}", self.server));
        if let Some(t) = &self.token {
            req = req.set("authorization", &format!("Bearer {t}"));
        }
        let resp = match body {
            Some(b) => req.send_string(&b),
            None => req.call(),
        };
        fn json<T: DeserializeOwned>(r: ureq::Response) -> Option<T> {
            serde_json::from_str(&r.into_string().ok()?).ok()
        }
        match resp {
            Ok(r) => json(r)
                .ok_or_else(|| "the controller answered something that is not JSON".to_owned()),
            Err(ureq::Error::Status(code, r)) => {
                let error = json::<ErrorAnswer>(r).map(|e| e.error);
                Err(format!(
                    "HTTP {code}: {}",
                    error.as_deref().unwrap_or("(no message)")
                ))
            }
            // The address may carry credentials (`https://user:pass@...`): CI logs keep this.
            Err(e) => Err(ramp_controller::redact::redact_text(&format!(
                "cannot reach the controller at {}: {}",
                self.server,
                ramp_controller::tls::explain(&e)
            ))),
        }
    }

    fn command(&self, name: &str, command: Command, json: bool) -> anyhow::Result<ExitCode> {
        self.send_command(name, CommandRequest { command, arm: None }, json)
    }

    fn send_command(
        &self,
        name: &str,
        body: CommandRequest,
        json: bool,
    ) -> anyhow::Result<ExitCode> {
        let body = serde_json::to_string(&body)?;
        self.show(
            self.call("POST", &format!("/v1/rollouts/{name}/commands"), Some(body)),
            json,
            print_status,
        )
    }

    /// The answer as JSON (`--json`: as the controller sent it) or for a person (`human`, on the
    /// API's type `T`).
    fn show<T: DeserializeOwned>(
        &self,
        answer: Result<Value, String>,
        json: bool,
        human: impl Fn(&T),
    ) -> anyhow::Result<ExitCode> {
        match answer {
            Ok(v) if json => println!("{v}"),
            Ok(v) => human(&read(v)?),
            Err(e) => {
                if json {
                    println!("{}", serde_json::json!({ "error": e }));
                } else {
                    eprintln!("rampctl: {e}");
                }
                return Ok(ExitCode::from(2));
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// An answer as the API's type says it is.
fn read<T: DeserializeOwned>(v: Value) -> anyhow::Result<T> {
    serde_json::from_value(v)
        .context("the controller's answer is not in the form this rampctl reads")
}

/// A figure as the controller's JSON shows it (`40.0`, `null`), as it was always printed.
fn shown<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or_default()
}

/// `status --watch` exit codes (0 is success, 1 a local error, 2 an API error).
const EXIT_ROLLED_BACK: u8 = 3;
const EXIT_ABORTED: u8 = 4;
const EXIT_TIMEOUT: u8 = 5;
const EXIT_UNLOADABLE: u8 = 6;

/// `90s`, `30m`, `2h`, `500ms` or plain seconds.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: a number and a unit (ms, s, m, h), e.g. 30m"))?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => return Err(format!("{text:?}: unknown unit {other:?} (ms, s, m, h)")),
    };
    std::time::Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// `status --watch`: a live view until the rollout ends (or `timeout` passes); the exit code
/// says how it ended.
fn watch(
    api: &Api,
    name: &str,
    json: bool,
    timeout: Option<std::time::Duration>,
) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let tty = std::io::stdout().is_terminal() && !json;
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        let v = match api.call("GET", &format!("/v1/rollouts/{name}"), None) {
            Ok(v) => v,
            Err(e) => return api.show(Err(e), json, print_status),
        };
        if tty {
            print!("\x1b[2J\x1b[H");
        }
        let status: Status = if json {
            println!("{v}");
            read(v)?
        } else {
            let status = read(v)?;
            print_status(&status);
            if let RolloutStatus::Loaded(loaded) = &status.rollout {
                print_stage_progress(loaded);
            }
            status
        };
        let phase = match &status.rollout {
            RolloutStatus::Loaded(loaded) => Some(loaded.state.phase),
            RolloutStatus::Unloadable(_) => None,
        };
        let code = match phase {
            Some(Phase::Starting | Phase::Progressing | Phase::Paused) => None,
            Some(Phase::Succeeded) => Some(ExitCode::SUCCESS),
            Some(Phase::RolledBack) => Some(ExitCode::from(EXIT_ROLLED_BACK)),
            Some(Phase::Aborted) => Some(ExitCode::from(EXIT_ABORTED)),
            None => Some(ExitCode::from(EXIT_UNLOADABLE)),
        };
        let phase_name = phase.map_or_else(|| "error".to_owned(), |p| wire_name(&p));
        if let Some(code) = code {
            if !json {
                eprintln!("rampctl: {name} is {phase_name}");
            }
            return Ok(code);
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            eprintln!(
                "rampctl: {name} is still {phase_name} after {:?}",
                timeout.unwrap_or_default()
            );
            return Ok(ExitCode::from(EXIT_TIMEOUT));
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// Time spent in the stage against its minimum, as a bar, and the time left.
fn print_stage_progress(v: &Loaded) {
    let state = &v.state;
    let Some(min) = state.stage_min_duration_ms else {
        return;
    };
    let started = state.stage_started_ms;
    let elapsed = now_ms().saturating_sub(started);
    let frac = if min == 0 {
        1.0
    } else {
        (elapsed as f64 / min as f64).min(1.0)
    };
    let filled = (frac * 30.0).round() as usize;
    let requests = v
        .figures
        .last
        .as_ref()
        .and_then(|f| f.window.get(&state.candidate))
        .map_or(0, |w| w.requests);
    println!(
        "    stage time [{}{}] {:>3.0}%  {} s left; candidate requests {} of {} needed",
        "#".repeat(filled),
        ".".repeat(30 - filled),
        frac * 100.0,
        min.saturating_sub(elapsed) / 1000,
        requests,
        shown(&state.stage_min_requests)
    );
}

fn print_status(status: &Status) {
    let v = match &status.rollout {
        RolloutStatus::Loaded(loaded) => loaded,
        RolloutStatus::Unloadable(u) => {
            // What it has always printed of a rollout with no state to show.
            println!(
                "{}: error stage null/null [] version null  ({})",
                u.name.as_deref().unwrap_or("?"),
                u.reason
            );
            return;
        }
    };
    let state = &v.state;
    let weights: Vec<String> = state
        .weights
        .iter()
        .map(|(k, w)| format!("{k} {w}%"))
        .collect();
    println!(
        "{}: {} stage {}/{} [{}] version {}{}",
        state.name,
        wire_name(&state.phase),
        state.stage,
        state.stages,
        weights.join(", "),
        state.version,
        state
            .reason
            .as_ref()
            .map(|r| format!("  ({r})"))
            .unwrap_or_default()
    );
    if let Some(f) = &v.figures.last {
        println!(
            "    last check {:.1} s ago (stage {}): each rule on the window it was judged on",
            now_ms().saturating_sub(f.checked_at_ms) as f64 / 1000.0,
            f.checked_stage
        );
    }
    if let Some(e) = &v.figures.error {
        println!("    no figures at the last check: {e}");
    }
    if let Some(f) = &v.figures.last {
        print_figures(f, state.candidates.len() > 1);
    }
}

/// The last check's figures: each rule's check, the A/B test, the sample ratio, the bandit and
/// each arm's window.
fn print_figures(f: &CheckFigures, several: bool) {
    for c in &f.checks {
        let arm = if several {
            format!("{} ", c.arm)
        } else {
            String::new()
        };
        let verdict = wire_name(&c.verdict);
        let stage = c.stage_value.map_or("-".to_owned(), |x| format!("{x:.4}"));
        let evidence = match (
            c.tost_p.flatten(),
            c.t_test_p.flatten(),
            c.mann_whitney_p.flatten(),
        ) {
            (Some(p), _, _) => format!("  TOST p {p:.3e}"),
            (_, Some(p), _) => format!("  paired t-test p {p:.3e}"),
            (_, _, Some(p)) => format!("  Mann-Whitney p {p:.3e}"),
            _ => String::new(),
        };
        if c.metric == Metric::Custom {
            print_custom_check(c, &arm);
            continue;
        }
        let acting = if c.dry_run {
            "  (dry run: not acted on)"
        } else if c.on_fail == ramp_controller::spec::OnFail::Pause {
            "  (on_fail: pause)"
        } else {
            ""
        };
        println!(
            "    check {arm}{:<12} {:>10} {} {:<26} [{}]   stage so far {stage} ({} samples){evidence}{acting}",
            wire_name(&c.metric),
            c.value.map_or("-".to_owned(), |x| format!("{x:.4}")),
            match c.bound.as_str() {
                "max" => "<=",
                "min" => ">=",
                _ => "vs baseline, worse by <=",
            },
            format!(
                "{} ({} samples, judged from {})",
                shown(&c.limit),
                shown(&c.samples),
                shown(&c.min_samples)
            ),
            if c.verdict == CheckVerdict::Pass { "ok" } else { &verdict },
            shown(&c.stage_samples)
        );
    }
    if let Some(ab) = &f.ab_test {
        // The statistics' own results, as they serialize (`sequential`, `abtest`).
        let null = Value::Null;
        if ab.comparisons.len() > 1 {
            println!(
                "    A/B/n {} (mSPRT per candidate against the baseline, Holm's correction, valid at every check):",
                wire_name(&ab.metric)
            );
            for c in &ab.comparisons {
                let r = c.result.as_ref().unwrap_or(&null);
                let fixed = c.fixed_horizon.as_ref().unwrap_or(&null);
                println!(
                    "      {:<12} {:.4} vs baseline {:.4}, lift {}, always-valid p = {}, fixed-horizon p (reference) = {}{}",
                    c.arm,
                    r["candidate_rate"].as_f64().unwrap_or(0.0),
                    r["baseline_rate"].as_f64().unwrap_or(0.0),
                    r["relative_lift"].as_f64().map_or("-".to_owned(), |l| format!("{:+.1}%", l * 100.0)),
                    r["p_value"].as_f64().map_or("-".to_owned(), |p| format!("{p:.4}")),
                    fixed["p_value"].as_f64().map_or("-".to_owned(), |p| format!("{p:.4}")),
                    if c.rejected { "  significant" } else { "" }
                );
            }
        } else {
            let r = ab.result.as_ref().unwrap_or(&null);
            let metric = wire_name(&ab.metric);
            match r["p_value"].as_f64() {
                Some(p) => println!(
                    "    A/B {metric} (mSPRT, valid at every check; units: {}): candidate {:.4} vs baseline {:.4}, lift {}, always-valid p = {p:.4}, {:.0}% confidence sequence of the {}difference [{:.4}, {:.4}], winner: {}",
                    match r["unit"].as_str() {
                        Some("user_bucket") => "users, by analysis bucket",
                        Some("user_bucket_cuped") => "users, by analysis bucket, adjusted by the pre-period (CUPED)",
                        _ => "requests",
                    },
                    r["candidate_rate"].as_f64().unwrap_or(0.0),
                    r["baseline_rate"].as_f64().unwrap_or(0.0),
                    r["relative_lift"].as_f64().map_or("-".to_owned(), |l| format!("{:+.1}%", l * 100.0)),
                    (1.0 - r["alpha"].as_f64().unwrap_or(0.0)) * 100.0,
                    r["cuped"]["variance_reduction"].as_f64().map_or(String::new(), |v| format!(
                        "CUPED-adjusted (plain {:.4}; variance x{:.2}) ",
                        r["cuped"]["unadjusted_difference"].as_f64().unwrap_or(0.0),
                        1.0 - v
                    )),
                    r["interval"][0].as_f64().unwrap_or(0.0),
                    r["interval"][1].as_f64().unwrap_or(0.0),
                    r["winner"].as_str().unwrap_or("?"),
                ),
                None => println!("    A/B {metric}: no result yet"),
            }
            let fixed = ab.fixed_horizon.as_ref().unwrap_or(&null);
            if let Some(p) = fixed["p_value"].as_f64() {
                println!(
                    "    A/B for reference only, fixed-horizon z-test on the same data (not valid when looked at repeatedly): z = {:.3}, p = {p:.4}",
                    fixed["z"].as_f64().unwrap_or(0.0)
                );
            }
            if ab.planned_per_arm > 0 {
                println!(
                    "    A/B fixed-horizon plan (reference): {} requests per arm",
                    ab.planned_per_arm
                );
            }
        }
    }
    if let Some(s) = f.sample_ratio.as_ref().filter(|s| s.is_object()) {
        println!(
            "    sample ratio (live arms, baseline first; units: {}) expected {:?}, observed {:?}, always-valid p = {:.3e}{}",
            match s["unit"].as_str() {
                Some("user_bucket") => "users",
                Some("exposure") => "Envoy's own replies, against equal loss on every arm",
                _ => "requests the models answered",
            },
            s["expected"], s["observed"], s["p_value"].as_f64().unwrap_or(1.0),
            if s["mismatch"] == true { "  MISMATCH" } else { "" }
        );
    }
    for (arm, p) in f.bandit.iter().flatten() {
        let posterior = p.as_ref().and_then(|p| p.posterior.as_ref());
        println!(
            "    bandit {arm:<10} trials {:>7}  reward rate {:.4}  95% credible [{:.4}, {:.4}]  P(best) {}",
            shown(&posterior.map(|p| p.trials)),
            posterior.map_or(0.0, |p| p.mean),
            posterior.map_or(0.0, |p| p.interval.0),
            posterior.map_or(0.0, |p| p.interval.1),
            p.as_ref()
                .and_then(|p| p.p_best)
                .map_or("-".to_owned(), |x| format!("{x:.4}"))
        );
    }
    if let Some(b) = &f.best_arm {
        println!(
            "    bandit decision: {} leads with P(best) {:.4}, promoted at {}; {}",
            b.leader,
            b.p_best,
            shown(&b.promote_at),
            b.method
        );
    }
    if !f.window.is_empty() {
        println!("    stage so far (since the stage began, at the last check):");
    }
    for (arm, w) in &f.window {
        let copies = &w.shadow;
        if copies.pairs > 0 {
            // Printed as JSON values, as always: their widths do not pad them.
            println!(
                "    {arm:<10} shadow copies {:>7}  model errors {:>5}  unreachable {:>5}  agreement {} of {}",
                shown(&copies.pairs),
                shown(&copies.failed),
                shown(&copies.unreachable),
                copies.agree,
                copies.labelled
            );
        }
        // The shadow statistics' own result, as it serializes (`shadowstats`).
        if let Some(st) = w.shadow_stats.as_ref().filter(|st| st.is_object()) {
            let num = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.4}"));
            println!(
                "    {arm:<10} shadow predictions {} pairs: mean diff {} (sd {}), correlation {}, paired t {} (p {}), 90% interval of the mean diff [{}, {}], max |diff| {}{}",
                st["n"],
                num(&st["mean_diff"]),
                num(&st["sd_diff"]),
                num(&st["correlation"]),
                num(&st["t"]),
                st["t_p"].as_f64().map_or("-".to_owned(), |p| format!("{p:.3e}")),
                num(&st["ci90"][0]),
                num(&st["ci90"][1]),
                num(&st["max_abs_diff"]),
                st["beyond"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|b| format!(", beyond {}: {}", b[0], b[1]))
                    .collect::<String>()
            );
        }
        println!(
            "    {arm:<10} requests {:>7}  errors {:>5}  error rate {:.4}  p95 {} ms",
            shown(&w.requests),
            shown(&w.errors),
            w.error_rate,
            w.p95_ms.map_or("-".to_owned(), |p| format!("{p:.1}"))
        );
    }
}

/// A custom rule's check: its figure against its bound (and the baseline's figure), the source,
/// and why it has no value or failed; no samples, as a custom figure has none.
fn print_custom_check(c: &RuleCheck, arm: &str) {
    let num = |v: Option<f64>| v.map_or("-".to_owned(), |x| format!("{x:.4}"));
    let limit = c.limit;
    let custom = c.custom.as_ref();
    let baseline = custom.and_then(|c| c.baseline_value);
    let bound = match c.bound.as_str() {
        "max" => format!("<= {limit}"),
        "min" => format!(">= {limit}"),
        "max_increase" => format!("<= baseline {} + {}%", num(baseline), limit * 100.0),
        "max_decrease" => format!(">= baseline {} - {}%", num(baseline), limit * 100.0),
        _ => format!("vs baseline {}, worse by <= {limit}", num(baseline)),
    };
    println!(
        "    check {arm}custom {:<12} {:>10} {bound} [{}] ({}; {} checks in a row without a value, a pause after {})",
        custom.map_or("?", |c| c.name.as_str()),
        num(c.value),
        match c.verdict {
            CheckVerdict::Pass => "ok",
            CheckVerdict::NotEnoughData => "no value",
            CheckVerdict::Fail => "fail",
        },
        custom.map_or("?", |c| c.source.as_str()),
        shown(&custom.map(|c| c.checks_without_value)),
        shown(&custom.map(|c| c.pause_after)),
    );
    if let Some(why) = &c.reason {
        println!("      {why}");
    }
}

fn print_plan(spec: &Spec) {
    println!(
        "rollout {}: {} (baseline) -> {} ({}), strategy {:?}, check every {} ms, roll back after {} failed checks{}",
        spec.name, spec.baseline, spec.candidates.join(", "),
        if spec.candidates.len() > 1 { "candidates" } else { "candidate" }, spec.strategy, spec.check_interval_ms, spec.failure_threshold,
        if spec.manual_promotion { ", manual promotion" } else { "" }
    );
    if let Some(ab) = &spec.ab_test {
        println!(
            "  A/B test on {:?} at {}% confidence{}{}",
            ab.metric,
            ab.confidence * 100.0,
            if ab.planned_per_arm > 0 {
                format!(", planned sample {} requests per arm", ab.planned_per_arm)
            } else {
                String::new()
            },
            if ab.experiment_stage > 0 {
                "; stage 1 is the pre-period (CUPED: sticky filters count each user under the arm stage 2 gives them)"
            } else {
                ""
            }
        );
    }
    for (i, s) in spec.stages.iter().enumerate() {
        let rules: Vec<String> = s
            .rules
            .iter()
            .map(|r| {
                let bound = match r.bound {
                    Bound::Max(v) => format!("<= {v}"),
                    Bound::Min(v) => format!(">= {v}"),
                    Bound::WorseThanBaseline(v) => format!("at most {v} worse than baseline"),
                    Bound::MaxIncrease(v) => format!("at most {}% above baseline", v * 100.0),
                    Bound::MaxDecrease(v) => format!("at most {}% below baseline", v * 100.0),
                };
                let acting = if r.dry_run {
                    " (dry run)"
                } else if r.on_fail == ramp_controller::spec::OnFail::Pause {
                    " (on_fail: pause)"
                } else {
                    ""
                };
                match &r.custom {
                    Some(c) => format!("custom {} ({}) {bound}{acting}", c.name, c.source.kind()),
                    None => format!("{:?} {bound}{acting}", r.metric),
                }
            })
            .collect();
        println!(
            "  stage {}: {:>5}%  at least {} s and {} candidate requests  {}",
            i + 1,
            s.weight,
            s.min_duration_ms / 1000,
            s.min_requests,
            if rules.is_empty() {
                String::new()
            } else {
                format!("rules: {}", rules.join(", "))
            }
        );
    }
}
