//! The proxy-wasm glue: reads the host's config and request, calls the pure library, writes headers
//! and metrics back. Kept thin; nothing here may panic (a panic traps the VM for the whole worker).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use fastrand::Rng;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

use crate::config::{KeySource, Rollout};
use crate::metrics::{all_arm_stat_names, class_index, fail_open_stat_name};
use crate::request::{cookie_value, must_strip, query_value, set_cookie_value, sticky_source};
use crate::select::{choose, Reason, RequestKeys};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    std::panic::set_hook(Box::new(|info| {
        let _ = hostcalls::log(LogLevel::Critical, &format!("ramp: panic: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(RampRoot::default()) });
}}

/// Metric ids of one arm, as the host returned them.
struct ArmMetrics {
    requests: u32,
    responses: [u32; 4],
    latency_ms: u32,
}

/// What a worker's HTTP contexts share: the active config, its metrics and the live weights.
struct Active {
    rollout: Rollout,
    weights: Vec<f64>,
    metrics: Vec<ArmMetrics>,
    fail_open: u32,
}

#[derive(Default)]
struct RampRoot {
    active: Option<Rc<Active>>,
    rng: Option<Rc<RefCell<Rng>>>,
}

impl Context for RampRoot {}

impl RootContext for RampRoot {
    fn on_vm_start(&mut self, _: usize) -> bool {
        self.rng = Some(Rc::new(RefCell::new(Rng::with_seed(host_seed(
            self.get_current_time(),
        )))));
        true
    }

    fn on_configure(&mut self, _: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let rollout = match Rollout::from_json(&bytes) {
            Ok(r) => r,
            Err(e) => {
                // Returning false makes Envoy refuse this config; the previous one (if any) stays.
                log(LogLevel::Error, &format!("ramp: {e}; config refused"));
                return false;
            }
        };
        match define_metrics(&rollout) {
            Ok((metrics, fail_open)) => {
                log(
                    LogLevel::Info,
                    &format!(
                        "ramp: rollout {:?} configured with {} arms",
                        rollout.name,
                        rollout.arms.len()
                    ),
                );
                self.active = Some(Rc::new(Active {
                    weights: rollout.weights(),
                    rollout,
                    metrics,
                    fail_open,
                }));
                true
            }
            Err(e) => {
                log(
                    LogLevel::Error,
                    &format!("ramp: cannot define metrics: {e:?}; config refused"),
                );
                false
            }
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        let rng = self.rng.clone().unwrap_or_else(|| {
            Rc::new(RefCell::new(Rng::with_seed(host_seed(
                self.get_current_time(),
            ))))
        });
        Some(Box::new(RampHttp {
            active: self.active.clone(),
            rng,
            chosen: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

fn define_metrics(rollout: &Rollout) -> Result<(Vec<ArmMetrics>, u32), proxy_wasm::types::Status> {
    let mut out = Vec::with_capacity(rollout.arms.len());
    for names in all_arm_stat_names(rollout) {
        let mut responses = [0u32; 4];
        for (slot, name) in responses.iter_mut().zip(&names.responses) {
            *slot = hostcalls::define_metric(MetricType::Counter, name)?;
        }
        out.push(ArmMetrics {
            requests: hostcalls::define_metric(MetricType::Counter, &names.requests)?,
            responses,
            latency_ms: hostcalls::define_metric(MetricType::Histogram, &names.latency_ms)?,
        });
    }
    let fail_open =
        hostcalls::define_metric(MetricType::Counter, &fail_open_stat_name(&rollout.name))?;
    Ok((out, fail_open))
}

/// The arm a request went to, kept for the response side.
struct Chosen {
    arm: usize,
    started: SystemTime,
    set_cookie: Option<String>,
}

struct RampHttp {
    active: Option<Rc<Active>>,
    rng: Rc<RefCell<Rng>>,
    chosen: Option<Chosen>,
}

impl Context for RampHttp {}

impl RampHttp {
    fn sticky_key(&self, rollout: &Rollout) -> Option<String> {
        let (source, name) = sticky_source(rollout)?;
        match source {
            KeySource::Header => self.get_http_request_header(name),
            KeySource::Cookie => {
                let header = self.get_http_request_header("cookie")?;
                cookie_value(&header, name).map(str::to_owned)
            }
            KeySource::Query => {
                let path = self.get_http_request_header(":path")?;
                query_value(&path, name).map(str::to_owned)
            }
        }
    }
}

impl HttpContext for RampHttp {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let Some(active) = self.active.clone() else {
            return Action::Continue;
        };
        let rollout = &active.rollout;
        for (name, _) in self.get_http_request_headers() {
            if must_strip(rollout, &name) {
                self.set_http_request_header(&name, None);
            }
        }
        let override_value = rollout
            .override_
            .as_ref()
            .and_then(|o| self.get_http_request_header(&o.header));
        let sticky_key = self.sticky_key(rollout);
        let keys = RequestKeys {
            override_value: override_value.as_deref(),
            sticky_key: sticky_key.as_deref(),
        };
        let decision = match self.rng.try_borrow_mut() {
            Ok(mut rng) => choose(rollout, &active.weights, keys, &mut rng),
            Err(_) => {
                let _ = hostcalls::increment_metric(active.fail_open, 1);
                crate::select::Decision {
                    arm: rollout.baseline,
                    reason: Reason::Baseline,
                    new_sticky_key: None,
                }
            }
        };
        let Some(arm) = rollout.arms.get(decision.arm) else {
            return Action::Continue;
        };
        self.set_http_request_header(&rollout.routing_header, Some(&arm.name));
        if let Some(cluster) = &arm.cluster {
            self.set_http_request_header(&rollout.cluster_header, Some(cluster));
        }
        if let Some(m) = active.metrics.get(decision.arm) {
            let _ = hostcalls::increment_metric(m.requests, 1);
        }
        let set_cookie = match (&rollout.sticky, decision.new_sticky_key) {
            (Some(s), Some(key)) => Some(set_cookie_value(&s.name, &key, s.cookie_max_age_s)),
            _ => None,
        };
        self.chosen = Some(Chosen {
            arm: decision.arm,
            started: self.get_current_time(),
            set_cookie,
        });
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let (Some(active), Some(chosen)) = (self.active.as_ref(), self.chosen.take()) else {
            return Action::Continue;
        };
        if let Some(m) = active.metrics.get(chosen.arm) {
            let status = self
                .get_http_response_header(":status")
                .and_then(|s| s.parse::<u32>().ok())
                .and_then(class_index);
            if let Some(class) = status.and_then(|c| m.responses.get(c)) {
                let _ = hostcalls::increment_metric(*class, 1);
            }
            let elapsed = self
                .get_current_time()
                .duration_since(chosen.started)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let _ = hostcalls::record_metric(m.latency_ms, elapsed);
        }
        let rollout = &active.rollout;
        if let (Some(header), Some(arm)) = (&rollout.response_header, rollout.arms.get(chosen.arm))
        {
            self.set_http_response_header(header, Some(&arm.name));
        }
        if let Some(cookie) = chosen.set_cookie {
            self.add_http_response_header("set-cookie", &cookie);
        }
        Action::Continue
    }
}

fn log(level: LogLevel, msg: &str) {
    let _ = hostcalls::log(level, msg);
}

/// Seed for this worker's RNG: the host's clock mixed with WASI's random source (through std's
/// RandomState), so two workers started in the same nanosecond still differ.
fn host_seed(now: SystemTime) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let nanos = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(nanos);
    h.finish()
}
