//! A test model server: plain HTTP/1.1 with keep-alive on a free loopback port, answering JSON that
//! says which arm it is and which `x-ramp-*` headers reached it. Its behaviour (failure rate, delay)
//! can be changed while it runs, so later tests can turn a healthy candidate into a faulty one. It
//! also exports its own metrics on `/metrics` in Prometheus' text format, as a real model server
//! does, for the rules on a team's own metrics. It can also stream its answers token by token as
//! an OpenAI-compatible chat model does (server-sent events), for the streaming rules.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// How the server answers; fields are read per request.
#[derive(Default)]
pub struct Behaviour {
    /// Fail (HTTP 500) one request in every `fail_every` (0: never); `/fail` paths always fail.
    pub fail_every: AtomicU64,
    /// Fail exactly this many requests per thousand, spread evenly (request n fails when
    /// floor(n * p / 1000) steps up), so a 30% failure rate is 30% of any window, not just on average.
    pub fail_permille: AtomicU64,
    /// Fail each request independently with this chance, per thousand (a Bernoulli draw): the
    /// binomial noise an A/A test must tolerate, which the evenly spread `fail_permille` lacks.
    pub fail_chance_permille: AtomicU64,
    /// Extra delay per request, in milliseconds.
    pub delay_ms: AtomicU64,
    /// When non-zero, answer with `x-ramp-reward: <value / 1e6>` (the model's own reward).
    pub reward_micros: AtomicU64,
    /// The answer's `prediction` is the query parameter `x` times this, in thousandths (0: 1000).
    pub prediction_milli: AtomicU64,
    /// Gaussian noise added to the prediction: its standard deviation in millionths (0: none).
    pub noise_sd_micros: AtomicU64,
    /// The model's own metric: its mean prediction confidence, in millionths, exported on
    /// `/metrics` as `model_confidence{arm="<arm>"}` (and by `kpi::KpiServer` as JSON).
    pub confidence_micros: AtomicU64,
    /// When non-zero, answer as an OpenAI-compatible streaming chat model: headers at once
    /// (`content-type: text/event-stream`, chunked), then this many token events, the first after
    /// `ttft_ms`, the next ones `inter_token_ms` apart, then (with `usage`) a last event with the
    /// `usage` block, then `data: [DONE]`.
    pub stream_tokens: AtomicU64,
    pub ttft_ms: AtomicU64,
    pub inter_token_ms: AtomicU64,
    pub usage: AtomicBool,
}

/// The prompt tokens a streamed answer's `usage` reports.
pub const STREAM_PROMPT_TOKENS: u64 = 12;

/// A standard normal draw (Box-Muller).
fn standard_normal() -> f64 {
    let u = fastrand::f64().max(f64::MIN_POSITIVE);
    let v = fastrand::f64();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

impl Behaviour {
    fn fails(&self, n: u64, path: &str) -> bool {
        let every = self.fail_every.load(Ordering::Relaxed);
        let permille = self.fail_permille.load(Ordering::Relaxed);
        let chance = self.fail_chance_permille.load(Ordering::Relaxed);
        path.contains("fail")
            || (every > 0 && n.is_multiple_of(every))
            || (permille > 0 && n * permille / 1000 > (n - 1) * permille / 1000)
            || (chance > 0 && fastrand::u64(0..1000) < chance)
    }
}

/// What a server has seen, beyond the request count.
#[derive(Default)]
pub struct Seen {
    /// Requests carrying Ramp's shadow-copy marker header.
    pub marked: AtomicU64,
    /// Requests whose Host carries "-shadow" (Envoy writes `host-shadow:port` on a mirrored request).
    pub shadow_host: AtomicU64,
    /// Bytes of request bodies received.
    pub body_bytes: AtomicU64,
}

pub struct ModelServer {
    pub arm: String,
    pub port: u16,
    pub behaviour: Arc<Behaviour>,
    pub seen: Arc<Seen>,
    served: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl ModelServer {
    pub fn start(arm: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let behaviour = Arc::new(Behaviour::default());
        let seen = Arc::new(Seen::default());
        let served = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = Shared {
            arm: arm.to_owned(),
            behaviour: behaviour.clone(),
            seen: seen.clone(),
            served: served.clone(),
        };
        let stop_flag = stop.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stop_flag.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let ctx = ctx.clone();
                thread::spawn(move || serve_connection(stream, &ctx));
            }
        });
        Ok(Self {
            arm: arm.to_owned(),
            port,
            behaviour,
            seen,
            served,
            stop,
        })
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

#[derive(Clone)]
struct Shared {
    arm: String,
    behaviour: Arc<Behaviour>,
    seen: Arc<Seen>,
    served: Arc<AtomicU64>,
}

fn serve_connection(stream: TcpStream, ctx: &Shared) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    while let Some(req) = read_request(&mut reader) {
        // A scrape is not a prediction: it is answered apart and not counted as served.
        if req.path == "/metrics" {
            let body = exposition(ctx);
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            if writer.write_all(head.as_bytes()).is_err()
                || writer.write_all(body.as_bytes()).is_err()
                || req.close
            {
                break;
            }
            continue;
        }
        let n = ctx.served.fetch_add(1, Ordering::SeqCst) + 1;
        let delay = ctx.behaviour.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            thread::sleep(Duration::from_millis(delay));
        }
        let fail = ctx.behaviour.fails(n, &req.path);
        let ramp_headers: serde_json::Map<String, serde_json::Value> = req
            .headers
            .iter()
            .filter(|(k, _)| k.starts_with("x-ramp-") || k == "canary")
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        if header("x-ramp-shadow-copy").is_some() {
            ctx.seen.marked.fetch_add(1, Ordering::SeqCst);
        }
        if header("host").is_some_and(|h| h.contains("-shadow")) {
            ctx.seen.shadow_host.fetch_add(1, Ordering::SeqCst);
        }
        ctx.seen
            .body_bytes
            .fetch_add(req.body_len as u64, Ordering::SeqCst);
        let x: Option<f64> = req
            .path
            .split_once('?')
            .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("x=")))
            .and_then(|v| v.parse().ok());
        let scale = match ctx.behaviour.prediction_milli.load(Ordering::Relaxed) {
            0 => 1000,
            m => m,
        };
        let noise_sd = ctx.behaviour.noise_sd_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let prediction = x.map(|x| {
            let noise = if noise_sd > 0.0 {
                noise_sd * standard_normal()
            } else {
                0.0
            };
            x * scale as f64 / 1000.0 + noise
        });
        let body = serde_json::json!({
            "arm": ctx.arm, "headers": ramp_headers, "path": req.path,
            "prediction": prediction, "body_len": req.body_len,
        })
        .to_string();
        let status = if fail {
            "500 Internal Server Error"
        } else {
            "200 OK"
        };
        let tokens = ctx.behaviour.stream_tokens.load(Ordering::Relaxed);
        if tokens > 0 && !fail {
            if stream_answer(&mut writer, ctx, tokens).is_err() || req.close {
                break;
            }
            continue;
        }
        let reward = match ctx.behaviour.reward_micros.load(Ordering::Relaxed) {
            0 => String::new(),
            r => format!("x-ramp-reward: {}\r\n", r as f64 / 1e6),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nx-served-by: {}\r\n{reward}content-length: {}\r\n\r\n",
            ctx.arm,
            body.len()
        );
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(body.as_bytes()).is_err()
        {
            break;
        }
        if req.close {
            break;
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
}

/// A streamed chat answer (server-sent events over a chunked body), as `Behaviour::stream_tokens`
/// describes it.
fn stream_answer(writer: &mut TcpStream, ctx: &Shared, tokens: u64) -> std::io::Result<()> {
    let b = &ctx.behaviour;
    writer.write_all(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nx-served-by: {}\r\ntransfer-encoding: chunked\r\n\r\n",
            ctx.arm
        )
        .as_bytes(),
    )?;
    writer.flush()?;
    let chunk = |w: &mut TcpStream, data: &str| -> std::io::Result<()> {
        w.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())?;
        w.flush()
    };
    thread::sleep(Duration::from_millis(b.ttft_ms.load(Ordering::Relaxed)));
    for t in 0..tokens {
        if t > 0 {
            thread::sleep(Duration::from_millis(
                b.inter_token_ms.load(Ordering::Relaxed),
            ));
        }
        let event = serde_json::json!({
            "object": "chat.completion.chunk", "model": ctx.arm,
            "choices": [{"index": 0, "delta": {"content": format!("tok{t} ")}}]
        });
        chunk(writer, &format!("data: {event}\n\n"))?;
    }
    if b.usage.load(Ordering::Relaxed) {
        let event = serde_json::json!({
            "object": "chat.completion.chunk", "model": ctx.arm, "choices": [],
            "usage": {"prompt_tokens": STREAM_PROMPT_TOKENS, "completion_tokens": tokens,
                      "total_tokens": STREAM_PROMPT_TOKENS + tokens}
        });
        chunk(writer, &format!("data: {event}\n\n"))?;
    }
    chunk(writer, "data: [DONE]\n\n")?;
    writer.write_all(b"0\r\n\r\n")?;
    writer.flush()
}

/// The server's own metrics in Prometheus' text format (0.0.4), labelled with its arm.
fn exposition(ctx: &Shared) -> String {
    let confidence = ctx.behaviour.confidence_micros.load(Ordering::Relaxed) as f64 / 1e6;
    let arm = &ctx.arm;
    format!(
        "# HELP model_confidence Mean confidence of the model's predictions.\n# TYPE model_confidence gauge\nmodel_confidence{{arm=\"{arm}\"}} {confidence}\n# HELP model_predictions_total Predictions answered.\n# TYPE model_predictions_total counter\nmodel_predictions_total{{arm=\"{arm}\"}} {}\n",
        ctx.served.load(Ordering::SeqCst)
    )
}

pub(crate) struct Request {
    pub(crate) path: String,
    headers: Vec<(String, String)>,
    body_len: usize,
    pub(crate) close: bool,
}

pub(crate) fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    // Bytes, not `read_line`: header values may carry obs-text that is not UTF-8.
    let mut read_line = || -> Option<String> {
        let mut raw = Vec::new();
        (reader.read_until(b'\n', &mut raw).ok()? > 0)
            .then(|| String::from_utf8_lossy(&raw).into_owned())
    };
    let line = read_line()?;
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut headers = Vec::new();
    loop {
        let h = read_line()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body_len = if chunked {
        read_chunked(reader)?
    } else {
        let mut body = vec![0; len];
        reader.read_exact(&mut body).ok()?;
        len
    };
    let close = headers
        .iter()
        .any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"));
    Some(Request {
        path,
        headers,
        body_len,
        close,
    })
}

/// Reads a chunked body (RFC 9112 section 7.1), returning its length.
fn read_chunked(reader: &mut BufReader<TcpStream>) -> Option<usize> {
    let mut total = 0;
    loop {
        let mut line = Vec::new();
        reader.read_until(b'\n', &mut line).ok()?;
        let size_text = String::from_utf8_lossy(&line);
        let size = usize::from_str_radix(size_text.trim().split(';').next()?, 16).ok()?;
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk).ok()?;
        if size == 0 {
            return Some(total);
        }
        total += size;
    }
}
