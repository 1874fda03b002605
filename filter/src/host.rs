//! The host operations the filter uses, as a trait: Envoy's proxy-wasm ABI is one implementation
//! (the `ramp-filter-wasm` crate, `filter/adapter`) and an in-memory host (`memhost`, native
//! tests) is the other, so the worker's orchestration (lease, polls, reports, shadow pairing, the
//! request path) is tested natively, as Kuadrant's wasm-shim tests its filter against a mock host.
//! Logging is not a host operation: the filter logs through the `log` facade, which the adapter
//! routes to Envoy's log and the tests capture.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
}

/// Why a shared-data write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetError {
    /// Another worker wrote the key since it was read: read again and retry.
    CasMismatch,
    Other,
}

/// A value in shared data and its CAS token.
pub type Shared = (Option<Vec<u8>>, Option<u32>);

/// One callout (`dispatch_http_call`).
pub struct Callout<'a> {
    pub cluster: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: Option<&'a [u8]>,
    pub timeout_ms: u64,
}

/// Which header map an operation works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Map {
    Request,
    Response,
    /// The answer to the callout being delivered (`on_callout`).
    CalloutResponse,
}

/// Which body an operation reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    Request,
    Response,
    CalloutResponse,
}

/// Everything the filter asks of its host. Methods never fail loudly: a host error is `None` or
/// `false`, and the caller keeps what it had (the request path must never panic).
pub trait Host {
    /// Wall-clock time in microseconds since the epoch.
    fn now_us(&self) -> u64;
    /// An environment variable of the VM (`vm_config.environment_variables`).
    fn env(&self, name: &str) -> Option<String>;

    fn shared_get(&self, key: &str) -> Option<Shared>;
    /// Writes `value` if the key's CAS is still `cas`.
    fn shared_set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SetError>;

    fn register_queue(&self, name: &str) -> Option<u32>;
    fn enqueue(&self, queue: u32, value: &[u8]) -> bool;
    fn dequeue(&self, queue: u32) -> Option<Vec<u8>>;

    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32>;
    fn increment_metric(&self, id: u32, by: u64) -> bool;
    fn record_metric(&self, id: u32, value: u64);

    /// Sends a callout; its token, or `None` when the host refused it (unknown cluster, ...).
    fn dispatch(&self, call: &Callout<'_>) -> Option<u32>;

    /// The request's headers serialized as the ABI lays them out (see `headermap`), read once.
    fn request_header_pairs(&self) -> Option<Vec<u8>>;
    fn header(&self, map: Map, name: &str) -> Option<Vec<u8>>;
    /// Replaces (or with `None` removes) a header of the request or the response.
    fn set_header(&self, map: Map, name: &str, value: Option<&str>);
    fn add_header(&self, map: Map, name: &str, value: &str);
    fn body(&self, which: Body, start: usize, size: usize) -> Option<Vec<u8>>;
}
