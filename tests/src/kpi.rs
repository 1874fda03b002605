//! A team's own JSON metrics API for tests, the kind an Argo Rollouts `web` metric reads: answers
//! `GET /rollouts/<rollout>/arms/<arm>` with that arm's model server's own metric,
//! `{"rollout", "arm", "model": {"confidence"}}`, read from the server's `Behaviour` at each call
//! (404 for an arm it does not know). Plain HTTP/1.1 on a free loopback port.

use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::upstream::{read_request, Behaviour, ModelServer};

pub struct KpiServer {
    pub port: u16,
    /// Requests answered.
    pub hits: Arc<AtomicU64>,
}

impl KpiServer {
    /// Serves the metric of each of `models` under its arm's name.
    pub fn start(models: &[&ModelServer]) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let arms: Arc<Vec<(String, Arc<Behaviour>)>> = Arc::new(
            models
                .iter()
                .map(|m| (m.arm.clone(), m.behaviour.clone()))
                .collect(),
        );
        let hits = Arc::new(AtomicU64::new(0));
        let counted = hits.clone();
        thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                let (arms, counted) = (arms.clone(), counted.clone());
                thread::spawn(move || serve(stream, &arms, &counted));
            }
        });
        Ok(Self { port, hits })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

fn serve(stream: TcpStream, arms: &[(String, Arc<Behaviour>)], hits: &AtomicU64) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    while let Some(req) = read_request(&mut reader) {
        hits.fetch_add(1, Ordering::Relaxed);
        let path = req.path.split('?').next().unwrap_or_default();
        let found = path
            .strip_prefix("/rollouts/")
            .and_then(|rest| rest.split_once("/arms/"))
            .and_then(|(rollout, arm)| {
                let (_, b) = arms.iter().find(|(a, _)| a == arm)?;
                let confidence = b.confidence_micros.load(Ordering::Relaxed) as f64 / 1e6;
                Some(serde_json::json!({"rollout": rollout, "arm": arm,
                                        "model": {"confidence": confidence}}))
            });
        let (status, body) = match found {
            Some(v) => ("200 OK", v.to_string()),
            None => ("404 Not Found", r#"{"error": "no such arm"}"#.to_owned()),
        };
        let answer = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(answer.as_bytes()).is_err() || req.close {
            break;
        }
    }
    let _ = writer.shutdown(Shutdown::Both);
}
