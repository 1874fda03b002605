//! `rampctl`: the operator's command line for Ramp rollouts. So far it validates rollout specs and
//! shows the plan they describe; `serve` and the rollout commands come with the controller service.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
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
    match cli.command {
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

fn print_plan(spec: &Spec) {
    println!(
        "rollout {}: {} (baseline) -> {} (candidate), check every {} ms, roll back after {} failed checks",
        spec.name, spec.baseline, spec.candidate, spec.check_interval_ms, spec.failure_threshold
    );
    for (i, s) in spec.stages.iter().enumerate() {
        let rules: Vec<String> = s
            .rules
            .iter()
            .map(|r| {
                let bound = match r.bound {
                    Bound::Max(v) => format!("<= {v}"),
                    Bound::Min(v) => format!(">= {v}"),
                    Bound::WorseThanBaseline(v) => format!("at most {v} worse than baseline"),
                };
                format!("{:?} {bound}", r.metric)
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
