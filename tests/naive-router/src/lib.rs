//! A naive model router, as a team would write one with the proxy-wasm SDK: read one request
//! header, set the routing header from it. With `{"metrics": true}` it also does what any router
//! that can be judged must: read the response status, read the clock twice and record the latency
//! in an Envoy histogram, per request. `make bench` measures Ramp's request path against both.
#![cfg(target_arch = "wasm32")]

use std::time::SystemTime;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { latency: None }) });
}}

struct Root {
    /// The latency histogram, when the config asks for metrics.
    latency: Option<u32>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let config = self.get_plugin_configuration().unwrap_or_default();
        if config.windows(15).any(|w| w == b"\"metrics\": true") {
            self.latency =
                hostcalls::define_metric(MetricType::Histogram, "naive_router.latency_ms").ok();
        }
        true
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Router {
            latency: self.latency,
            started: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Router {
    latency: Option<u32>,
    started: Option<SystemTime>,
}

impl Context for Router {}

impl HttpContext for Router {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let user = self
            .get_http_request_header("x-user-id")
            .unwrap_or_default();
        let arm = if user.len().is_multiple_of(10) {
            "v2"
        } else {
            "v1"
        };
        self.set_http_request_header("x-ramp-arm", Some(arm));
        if self.latency.is_some() {
            self.started = Some(self.get_current_time());
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        if let (Some(id), Some(started)) = (self.latency, self.started) {
            let _status = self.get_http_response_header(":status");
            let ms = self
                .get_current_time()
                .duration_since(started)
                .map_or(0, |d| d.as_millis() as u64);
            let _ = hostcalls::record_metric(id, ms);
        }
        Action::Continue
    }
}
