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
use ramp_controller::report::RolloutReport;
use ramp_controller::server::now_ms;
use ramp_controller::spec::{Bound, Spec};

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
    /// Check a rollout spec (YAML or JSON) and print the stages it describes.
    Validate {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Run the controller: HTTP API, rollout loop, SQLite store.
    Serve {
        #[arg(long, default_value = "127.0.0.1:9090")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value = "ramp.db")]
        db: PathBuf,
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
        /// A read-only token: status, list, history, /v1/specs, live state and /metrics (also
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
        #[arg(long)]
        json: bool,
    },
    /// Start a rollout from a spec file.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// All rollouts.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One rollout: stage, weights, the current window's figures.
    Status {
        name: String,
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
        #[arg(long)]
        json: bool,
    },
    /// A shell completion script: `source <(rampctl completion bash)`.
    Completion { shell: clap_complete::Shell },
    /// Next stage now (or, with --full, straight to 100%).
    Promote {
        name: String,
        #[arg(long)]
        full: bool,
        /// With several candidates (A/B/n, bandit): the one that takes the candidates' share.
        #[arg(long)]
        arm: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Hold the rollout where it is: no more checks act and the weights stay (`resume` goes on).
    Pause {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Go on after a pause (or a `set-weight` hold): the stage's weight and checks again.
    Resume {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Send all traffic back to the baseline now (also after promotion).
    Rollback {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Stop the rollout for good: all traffic back to the baseline, and it never resumes.
    Abort {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Hold the candidate at WEIGHT percent (pauses the rollout; `resume` returns to the schedule).
    SetWeight {
        name: String,
        weight: f64,
        #[arg(long)]
        json: bool,
    },
    /// The rollout's events.
    History {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// The decision record: every promotion, advance, pause, rollback and dry-run failure with
    /// the figures it was made on, and the per-check series (plain text by default).
    Report {
        name: String,
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
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(ramp_controller::serve::serve(
                ramp_controller::serve::Config {
                    listen,
                    db,
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
            api.show(api.call("GET", "/v1/rollouts", None), json, |v| {
                for r in v["rollouts"].as_array().into_iter().flatten() {
                    print_status(r);
                }
            })
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
            api.show(api.call("GET", "/v1/specs", None), json, |v| {
                println!(
                    "specs directory {}{}",
                    v["dir"].as_str().unwrap_or("(none: serve without --specs)"),
                    v["error"]
                        .as_str()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                );
                for f in v["files"].as_array().into_iter().flatten() {
                    println!(
                        "  {:<24} {:<20} {}",
                        f["file"].as_str().unwrap_or("?"),
                        f["rollout"].as_str().unwrap_or("-"),
                        f["error"]
                            .as_str()
                            .map(|e| format!("INVALID: {e}"))
                            .or_else(|| f["change"].as_str().map(str::to_owned))
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
            let mut body =
                serde_json::json!({"command": if full { "promote_full" } else { "promote" }});
            if let Some(arm) = arm {
                body["arm"] = serde_json::json!(arm);
            }
            api()?.send_command(&name, body, json)
        }
        Cmd::Pause { name, json } => api()?.command(&name, "pause", json),
        Cmd::Resume { name, json } => api()?.command(&name, "resume", json),
        Cmd::Rollback { name, json } => api()?.command(&name, "roll_back", json),
        Cmd::Abort { name, json } => api()?.command(&name, "abort", json),
        Cmd::SetWeight { name, weight, json } => api()?.send_command(
            &name,
            serde_json::json!({"command": "set_weight", "weight": weight}),
            json,
        ),
        Cmd::History { name, json } => {
            let api = api()?;
            api.show(
                api.call("GET", &format!("/v1/rollouts/{name}/history"), None),
                json,
                |v| {
                    for e in v["events"].as_array().into_iter().flatten() {
                        println!(
                            "{}  {:<12} {}",
                            e["at_ms"],
                            e["kind"].as_str().unwrap_or(""),
                            e["detail"].as_str().unwrap_or("")
                        );
                    }
                },
            )
        }
        Cmd::Report { name, json, html } => {
            let api = api()?;
            let answer = api.call("GET", &format!("/v1/rollouts/{name}/report"), None);
            let v = match answer {
                Ok(v) => v,
                Err(e) => return api.show(Err(e), json, |_| {}),
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
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<serde_json::Value, String> {
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
        let json = |r: ureq::Response| -> Option<serde_json::Value> {
            serde_json::from_str(&r.into_string().ok()?).ok()
        };
        match resp {
            Ok(r) => json(r)
                .ok_or_else(|| "the controller answered something that is not JSON".to_owned()),
            Err(ureq::Error::Status(code, r)) => {
                let v = json(r).unwrap_or_default();
                Err(format!(
                    "HTTP {code}: {}",
                    v["error"].as_str().unwrap_or("(no message)")
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

    fn command(&self, name: &str, command: &str, json: bool) -> anyhow::Result<ExitCode> {
        self.send_command(name, serde_json::json!({ "command": command }), json)
    }

    fn send_command(
        &self,
        name: &str,
        body: serde_json::Value,
        json: bool,
    ) -> anyhow::Result<ExitCode> {
        self.show(
            self.call(
                "POST",
                &format!("/v1/rollouts/{name}/commands"),
                Some(body.to_string()),
            ),
            json,
            print_status,
        )
    }

    fn show(
        &self,
        answer: Result<serde_json::Value, String>,
        json: bool,
        human: impl Fn(&serde_json::Value),
    ) -> anyhow::Result<ExitCode> {
        match answer {
            Ok(v) if json => println!("{v}"),
            Ok(v) => human(&v),
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
        if json {
            println!("{v}");
        } else {
            print_status(&v);
            print_stage_progress(&v);
        }
        let code = match v["phase"].as_str() {
            Some("starting" | "progressing" | "paused") => None,
            Some("succeeded") => Some(ExitCode::SUCCESS),
            Some("rolled_back") => Some(ExitCode::from(EXIT_ROLLED_BACK)),
            Some("aborted") => Some(ExitCode::from(EXIT_ABORTED)),
            _ => Some(ExitCode::from(EXIT_UNLOADABLE)),
        };
        if let Some(code) = code {
            if !json {
                eprintln!(
                    "rampctl: {name} is {}",
                    v["phase"].as_str().unwrap_or("unknown")
                );
            }
            return Ok(code);
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            eprintln!(
                "rampctl: {name} is still {} after {:?}",
                v["phase"].as_str().unwrap_or("?"),
                timeout.unwrap_or_default()
            );
            return Ok(ExitCode::from(EXIT_TIMEOUT));
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// Time spent in the stage against its minimum, as a bar, and the time left.
fn print_stage_progress(v: &serde_json::Value) {
    let (Some(started), Some(min)) = (
        v["stage_started_ms"].as_u64(),
        v["stage_min_duration_ms"].as_u64(),
    ) else {
        return;
    };
    let elapsed = now_ms().saturating_sub(started);
    let frac = if min == 0 {
        1.0
    } else {
        (elapsed as f64 / min as f64).min(1.0)
    };
    let filled = (frac * 30.0).round() as usize;
    println!(
        "    stage time [{}{}] {:>3.0}%  {} s left; candidate requests {} of {} needed",
        "#".repeat(filled),
        ".".repeat(30 - filled),
        frac * 100.0,
        min.saturating_sub(elapsed) / 1000,
        v["candidate"]
            .as_str()
            .map_or(0, |c| v["window"][c]["requests"].as_u64().unwrap_or(0)),
        v["stage_min_requests"]
    );
}

fn print_status(v: &serde_json::Value) {
    let weights: Vec<String> = v["weights"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, w)| format!("{k} {}%", w.as_f64().unwrap_or(f64::NAN)))
        .collect();
    println!(
        "{}: {} stage {}/{} [{}] version {}{}",
        v["name"].as_str().unwrap_or("?"),
        v["phase"].as_str().unwrap_or("?"),
        v["stage"],
        v["stages"],
        weights.join(", "),
        v["version"],
        v["reason"]
            .as_str()
            .map(|r| format!("  ({r})"))
            .unwrap_or_default()
    );
    if let Some(at) = v["checked_at_ms"].as_u64() {
        println!(
            "    last check {:.1} s ago (stage {}): each rule on the window it was judged on",
            now_ms().saturating_sub(at) as f64 / 1000.0,
            v["checked_stage"]
        );
    }
    if let Some(e) = v["figures_error"].as_str() {
        println!("    no figures at the last check: {e}");
    }
    let several = v["candidates"].as_array().is_some_and(|c| c.len() > 1);
    for c in v["checks"].as_array().into_iter().flatten() {
        let arm = if several {
            format!("{} ", c["arm"].as_str().unwrap_or("?"))
        } else {
            String::new()
        };
        let verdict = c["verdict"].as_str().unwrap_or("?");
        let stage = c["stage_value"]
            .as_f64()
            .map_or("-".to_owned(), |x| format!("{x:.4}"));
        let evidence = match (
            c["tost_p"].as_f64(),
            c["t_test_p"].as_f64(),
            c["mann_whitney_p"].as_f64(),
        ) {
            (Some(p), _, _) => format!("  TOST p {p:.3e}"),
            (_, Some(p), _) => format!("  paired t-test p {p:.3e}"),
            (_, _, Some(p)) => format!("  Mann-Whitney p {p:.3e}"),
            _ => String::new(),
        };
        if c["metric"] == "custom" {
            print_custom_check(c, &arm);
            continue;
        }
        let acting = if c["dry_run"] == true {
            "  (dry run: not acted on)"
        } else if c["on_fail"] == "pause" {
            "  (on_fail: pause)"
        } else {
            ""
        };
        println!(
            "    check {arm}{:<12} {:>10} {} {:<26} [{}]   stage so far {stage} ({} samples){evidence}{acting}",
            c["metric"].as_str().unwrap_or("?"),
            c["value"]
                .as_f64()
                .map_or("-".to_owned(), |x| format!("{x:.4}")),
            match c["bound"].as_str() {
                Some("max") => "<=",
                Some("min") => ">=",
                _ => "vs baseline, worse by <=",
            },
            format!(
                "{} ({} samples, judged from {})",
                c["limit"], c["samples"], c["min_samples"]
            ),
            if verdict == "pass" { "ok" } else { verdict },
            c["stage_samples"]
        );
    }
    let comparisons = v["ab_test"]["comparisons"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if comparisons.len() > 1 {
        println!(
            "    A/B/n {} (mSPRT per candidate against the baseline, Holm's correction, valid at every check):",
            v["ab_test"]["metric"].as_str().unwrap_or("?")
        );
        for c in &comparisons {
            let r = &c["result"];
            println!(
                "      {:<12} {:.4} vs baseline {:.4}, lift {}, always-valid p = {}, fixed-horizon p (reference) = {}{}",
                c["arm"].as_str().unwrap_or("?"),
                r["candidate_rate"].as_f64().unwrap_or(0.0),
                r["baseline_rate"].as_f64().unwrap_or(0.0),
                r["relative_lift"].as_f64().map_or("-".to_owned(), |l| format!("{:+.1}%", l * 100.0)),
                r["p_value"].as_f64().map_or("-".to_owned(), |p| format!("{p:.4}")),
                c["fixed_horizon"]["p_value"].as_f64().map_or("-".to_owned(), |p| format!("{p:.4}")),
                if c["rejected"] == true { "  significant" } else { "" }
            );
        }
    } else if let Some(ab) = v["ab_test"].as_object() {
        let r = &ab["result"];
        match r["p_value"].as_f64() {
            Some(p) => println!(
                "    A/B {} (mSPRT, valid at every check; units: {}): candidate {:.4} vs baseline {:.4}, lift {}, always-valid p = {p:.4}, {:.0}% confidence sequence of the difference [{:.4}, {:.4}], winner: {}",
                ab["metric"].as_str().unwrap_or("?"),
                if r["unit"] == "user_bucket" { "users, by analysis bucket" } else { "requests" },
                r["candidate_rate"].as_f64().unwrap_or(0.0),
                r["baseline_rate"].as_f64().unwrap_or(0.0),
                r["relative_lift"].as_f64().map_or("-".to_owned(), |l| format!("{:+.1}%", l * 100.0)),
                (1.0 - r["alpha"].as_f64().unwrap_or(0.0)) * 100.0,
                r["interval"][0].as_f64().unwrap_or(0.0),
                r["interval"][1].as_f64().unwrap_or(0.0),
                r["winner"].as_str().unwrap_or("?"),
            ),
            None => println!("    A/B {}: no result yet", ab["metric"].as_str().unwrap_or("?")),
        }
        let f = &ab["fixed_horizon"];
        if let Some(p) = f["p_value"].as_f64() {
            println!(
                "    A/B for reference only, fixed-horizon z-test on the same data (not valid when looked at repeatedly): z = {:.3}, p = {p:.4}",
                f["z"].as_f64().unwrap_or(0.0)
            );
        }
        if let Some(n) = ab["planned_per_arm"].as_u64().filter(|&n| n > 0) {
            println!("    A/B fixed-horizon plan (reference): {n} requests per arm");
        }
    }
    if let Some(s) = v["sample_ratio"].as_object() {
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
    for (arm, p) in v["bandit"].as_object().into_iter().flatten() {
        println!(
            "    bandit {arm:<10} trials {:>7}  reward rate {:.4}  95% credible [{:.4}, {:.4}]  P(best) {}",
            p["trials"],
            p["mean"].as_f64().unwrap_or(0.0),
            p["interval"][0].as_f64().unwrap_or(0.0),
            p["interval"][1].as_f64().unwrap_or(0.0),
            p["p_best"].as_f64().map_or("-".to_owned(), |x| format!("{x:.4}"))
        );
    }
    if let Some(b) = v["best_arm"].as_object() {
        println!(
            "    bandit decision: {} leads with P(best) {:.4}, promoted at {}; {}",
            b["leader"].as_str().unwrap_or("?"),
            b["p_best"].as_f64().unwrap_or(0.0),
            b["promote_at"],
            b["method"].as_str().unwrap_or("")
        );
    }
    if v["window"].as_object().is_some_and(|w| !w.is_empty()) {
        println!("    stage so far (since the stage began, at the last check):");
    }
    for (arm, w) in v["window"].as_object().into_iter().flatten() {
        let copies = &w["shadow"];
        if copies["pairs"].as_u64().unwrap_or(0) > 0 {
            println!(
                "    {arm:<10} shadow copies {:>7}  model errors {:>5}  unreachable {:>5}  agreement {} of {}",
                copies["pairs"], copies["failed"], copies["unreachable"], copies["agree"], copies["labelled"]
            );
        }
        let st = &w["shadow_stats"];
        if st.is_object() {
            let num =
                |v: &serde_json::Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.4}"));
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
            w["requests"],
            w["errors"],
            w["error_rate"].as_f64().unwrap_or(0.0),
            w["p95_ms"]
                .as_f64()
                .map_or("-".to_owned(), |p| format!("{p:.1}"))
        );
    }
}

/// A custom rule's check: its figure against its bound (and the baseline's figure), the source,
/// and why it has no value or failed; no samples, as a custom figure has none.
fn print_custom_check(c: &serde_json::Value, arm: &str) {
    let num = |v: &serde_json::Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.4}"));
    let limit = c["limit"].as_f64().unwrap_or(f64::NAN);
    let bound = match c["bound"].as_str() {
        Some("max") => format!("<= {limit}"),
        Some("min") => format!(">= {limit}"),
        Some("max_increase") => format!(
            "<= baseline {} + {}%",
            num(&c["baseline_value"]),
            limit * 100.0
        ),
        Some("max_decrease") => format!(
            ">= baseline {} - {}%",
            num(&c["baseline_value"]),
            limit * 100.0
        ),
        _ => format!(
            "vs baseline {}, worse by <= {limit}",
            num(&c["baseline_value"])
        ),
    };
    let verdict = c["verdict"].as_str().unwrap_or("?");
    println!(
        "    check {arm}custom {:<12} {:>10} {bound} [{}] ({}; {} checks in a row without a value, a pause after {})",
        c["name"].as_str().unwrap_or("?"),
        num(&c["value"]),
        match verdict {
            "pass" => "ok",
            "not_enough_data" => "no value",
            v => v,
        },
        c["source"].as_str().unwrap_or("?"),
        c["checks_without_value"],
        c["pause_after"],
    );
    if let Some(why) = c["reason"].as_str() {
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
            "  A/B test on {:?} at {}% confidence{}",
            ab.metric,
            ab.confidence * 100.0,
            if ab.planned_per_arm > 0 {
                format!(", planned sample {} requests per arm", ab.planned_per_arm)
            } else {
                String::new()
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
