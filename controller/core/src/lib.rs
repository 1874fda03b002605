//! rampctl's pure core: the rollout spec and its validation, the rules, the windows they judge,
//! the stage machine, the statistics behind every verdict, and the operator API's types. Plain
//! functions over data: no network, no clock, no store, no async runtime, so every decision is
//! unit-tested, and the CLI and the server share one definition of what they exchange. The
//! `ramp-controller` crate (`rampctl`) does the IO around it.

pub mod abtest;
pub mod api;
pub mod bestarm;
pub mod check;
pub mod cuped;
pub mod cuped_sim;
pub mod custom_plan;
pub mod custom_template;
pub mod custom_verdict;
pub mod events;
pub mod exposure;
pub mod guard;
pub mod guardrail;
pub mod histogram;
pub mod lookback;
pub mod machine;
pub mod posterior;
pub mod ranktest;
pub mod record;
pub mod redact;
pub mod report;
pub mod report_html;
pub mod rules;
pub mod sequential;
pub mod shadowstats;
pub mod simulate;
pub mod spec;
pub mod stage_history;
pub mod status;
pub mod units;
pub mod window;
