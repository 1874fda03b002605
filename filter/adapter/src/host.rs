//! Envoy, through the proxy-wasm ABI, as the library's [`Host`]: the SDK's host calls, and two raw
//! ABI calls where the SDK's would cost a copy or a detour.

use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType, Status};
use ramp_filter::host::{Body, Callout, Host, Map, MetricKind, SetError, Shared};

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

    /// The request's headers, serialized as the ABI lays them out (see `ramp_filter::headermap`).
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
