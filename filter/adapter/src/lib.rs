//! Ramp's filter as the proxy-wasm module Envoy loads. The logic is the `ramp-filter` library,
//! pure and `#![forbid(unsafe_code)]`; this crate is the glue, as the SDK's examples and
//! Kuadrant's wasm-shim split them: Envoy's host calls behind the library's `Host` trait
//! (`host`), the SDK's contexts handing every callback to the library's `Worker` and its
//! `Exchange`s, and the library's `log` records routed to Envoy's log. No policy lives here; it is
//! the only code allowed `unsafe` (two raw ABI calls, in `host`). Built for `wasm32-wasip1` only:
//! on any other target the crate is empty.
#![cfg(all(target_arch = "wasm32", target_os = "wasi"))]
#![deny(unsafe_code)]

mod host;

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use ramp_filter::host::Host;
use ramp_filter::worker::{Exchange, Worker, TICK_MS};

use crate::host::ProxyHost;

proxy_wasm::main! {{
    // The SDK's logger: the library's `log` records go to Envoy's log (`proxy_log`), at Info and
    // above, under Envoy's own `wasm` log level as well.
    proxy_wasm::set_log_level(LogLevel::Info);
    std::panic::set_hook(Box::new(|info| {
        let _ = hostcalls::log(LogLevel::Critical, &format!("ramp: panic: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(RampRoot { worker: None }) });
}}

/// Seed for a worker's RNG: the host's clock mixed with WASI's random source (through std's
/// RandomState), so two workers started in the same nanosecond still differ.
fn host_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(ProxyHost.now_us());
    h.finish()
}

struct RampRoot {
    worker: Option<Worker<ProxyHost>>,
}

impl Context for RampRoot {
    fn on_http_call_response(&mut self, token: u32, _: usize, body_size: usize, _: usize) {
        if let Some(w) = self.worker.as_mut() {
            w.on_callout(token, body_size);
        }
    }
}

impl RootContext for RampRoot {
    fn on_vm_start(&mut self, _: usize) -> bool {
        self.worker = Some(Worker::start(ProxyHost, host_seed()));
        true
    }

    fn on_configure(&mut self, _: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let worker = self
            .worker
            .get_or_insert_with(|| Worker::start(ProxyHost, host_seed()));
        // Returning false makes Envoy refuse this config; the previous one (if any) stays.
        let ok = worker.configure(&bytes);
        if ok {
            self.set_tick_period(Duration::from_millis(TICK_MS));
        }
        ok
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        if let Some(w) = self.worker.as_mut() {
            w.on_queue_ready(queue_id);
        }
    }

    fn on_tick(&mut self) {
        if let Some(w) = self.worker.as_mut() {
            w.tick();
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(RampHttp(
            self.worker.as_ref().map(Worker::exchange),
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct RampHttp(Option<Exchange<ProxyHost>>);

impl Context for RampHttp {}

impl HttpContext for RampHttp {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        if let Some(x) = self.0.as_mut() {
            x.on_request_headers(end_of_stream);
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if let Some(x) = self.0.as_mut() {
            x.on_request_body(body_size, end_of_stream);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        if let Some(x) = self.0.as_mut() {
            x.on_response_headers(end_of_stream);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if let Some(x) = self.0.as_mut() {
            x.on_response_body(body_size, end_of_stream);
        }
        Action::Continue
    }
}
