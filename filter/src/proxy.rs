//! The proxy-wasm adapter: Envoy's host calls behind the [`Host`] trait, and the SDK's contexts
//! handing every callback to the [`Worker`] and its [`Exchange`]s. No policy lives here.

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};

use crate::host::{Body, Callout, Host, Level, Map, MetricKind, SetError, Shared};
use crate::worker::{Exchange, Worker, TICK_MS};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    std::panic::set_hook(Box::new(|info| {
        let _ = hostcalls::log(LogLevel::Critical, &format!("ramp: panic: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(RampRoot { worker: None }) });
}}

/// Envoy, through the proxy-wasm ABI.
#[derive(Clone, Copy)]
pub struct ProxyHost;

fn map_type(map: Map) -> MapType {
    match map {
        Map::Request => MapType::HttpRequestHeaders,
        Map::Response => MapType::HttpResponseHeaders,
        Map::CalloutResponse => MapType::HttpCallResponseHeaders,
    }
}

impl Host for ProxyHost {
    fn now_us(&self) -> u64 {
        raw::now_ns() / 1000
    }

    fn log(&self, level: Level, message: &str) {
        let level = match level {
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        let _ = hostcalls::log(level, message);
    }

    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn shared_get(&self, key: &str) -> Option<Shared> {
        hostcalls::get_shared_data(key).ok()
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SetError> {
        match hostcalls::set_shared_data(key, Some(value), Some(cas)) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SetError::CasMismatch),
            Err(_) => Err(SetError::Other),
        }
    }

    fn register_queue(&self, name: &str) -> Option<u32> {
        hostcalls::register_shared_queue(name).ok()
    }

    fn enqueue(&self, queue: u32, value: &[u8]) -> bool {
        hostcalls::enqueue_shared_queue(queue, Some(value)).is_ok()
    }

    fn dequeue(&self, queue: u32) -> Option<Vec<u8>> {
        hostcalls::dequeue_shared_queue(queue).ok().flatten()
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32> {
        let kind = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
        };
        hostcalls::define_metric(kind, name).ok()
    }

    fn increment_metric(&self, id: u32, by: u64) -> bool {
        hostcalls::increment_metric(id, by.min(i64::MAX as u64) as i64).is_ok()
    }

    fn record_metric(&self, id: u32, value: u64) {
        let _ = hostcalls::record_metric(id, value);
    }

    fn dispatch(&self, call: &Callout<'_>) -> Option<u32> {
        hostcalls::dispatch_http_call(
            call.cluster,
            call.headers.to_vec(),
            call.body,
            Vec::new(),
            Duration::from_millis(call.timeout_ms),
        )
        .ok()
    }

    fn request_header_pairs(&self) -> Option<Vec<u8>> {
        raw::request_header_pairs()
    }

    fn header(&self, map: Map, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(map_type(map), name)
            .ok()
            .flatten()
    }

    fn set_header(&self, map: Map, name: &str, value: Option<&str>) {
        let _ = hostcalls::set_map_value(map_type(map), name, value);
    }

    fn add_header(&self, map: Map, name: &str, value: &str) {
        let _ = hostcalls::add_map_value(map_type(map), name, value);
    }

    fn body(&self, which: Body, start: usize, size: usize) -> Option<Vec<u8>> {
        let which = match which {
            Body::Request => BufferType::HttpRequestBody,
            Body::Response => BufferType::HttpResponseBody,
            Body::CalloutResponse => BufferType::HttpCallResponseBody,
        };
        hostcalls::get_buffer(which, start, size).ok().flatten()
    }
}

/// The raw ABI calls: the request's header map serialized, without the SDK's decoder, and the
/// clock as the integer it is.
#[allow(unsafe_code)]
mod raw {
    use proxy_wasm::types::MapType;

    #[link(wasm_import_module = "env")]
    extern "C" {
        // Declared with plain integers (the SDK's version returns an enum, and a value outside it
        // would be undefined behaviour) so the serialized map can be read as it comes.
        #[link_name = "proxy_get_header_map_pairs"]
        fn raw_get_header_map_pairs(map_type: u32, data: *mut *mut u8, size: *mut usize) -> u32;
        #[link_name = "proxy_get_current_time_nanoseconds"]
        fn raw_get_current_time_nanoseconds(time: *mut u64) -> u32;
    }

    /// The host's clock in nanoseconds since the epoch (0 if it fails), read twice per request:
    /// without the SDK's detour through `SystemTime` and back.
    pub fn now_ns() -> u64 {
        let mut time: u64 = 0;
        // SAFETY: the host writes one u64 through the pointer, which points at a live local.
        let status = unsafe { raw_get_current_time_nanoseconds(&mut time) };
        if status == 0 {
            time
        } else {
            0
        }
    }

    /// The request's headers, serialized as the ABI lays them out (see [`crate::headermap`]).
    pub fn request_header_pairs() -> Option<Vec<u8>> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: the host fills `data`/`size` with a buffer it allocated through this module's
        // `proxy_on_memory_allocate` (the SDK's allocator, a `Vec<u8>` of exactly `size` bytes),
        // which we take ownership of here, as the SDK's own `get_map` does. Status 0 is `Ok`.
        unsafe {
            let status =
                raw_get_header_map_pairs(MapType::HttpRequestHeaders as u32, &mut data, &mut size);
            if status != 0 || data.is_null() {
                return None;
            }
            Some(Vec::from_raw_parts(data, size, size))
        }
    }
}

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
