//! The API's connections, bounded: a client that opens sockets and sends nothing (or trickles a
//! header) cannot use up the process's file descriptors and lock the filters out. `axum::serve`
//! has neither a connection limit nor a header timeout, so connections are accepted here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How long a connection may take to send a request's headers, counted from when it opens or
/// its previous answer was sent: a slow-header (slowloris) or idle connection is closed after
/// it. At the default `poll_ms` (1 s) the filters keep a long poll open or post a report at least
/// every second, so their connections are never idle this long; with a `poll_ms` above 40 s
/// (a long poll waits at most 30 s) a connection may close between polls, and a poll sent just
/// as it closes fails and is made again a period later.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes a connection may buffer while reading (hyper's default is 400 KiB): with 10,000
/// connections each trickling an endless header, that default let a client with no token make
/// the controller hold about 4 GB. Request headers are small; bodies are read in chunks past it.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;

/// File descriptors kept for everything but API connections: SQLite, the specs directory, hook
/// calls (at most `GATE_HOOKS_AT_ONCE + NOTICE_HOOKS_AT_ONCE` at a time), Prometheus queries, the
/// listener.
pub const RESERVED_FDS: u64 = 256;

/// Counted for `/metrics` and the log.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    pub open: AtomicU64,
    pub refused: AtomicU64,
}

/// Raises the soft limit of open files to the hard one (as Go's runtime does), and returns the
/// connection limit it allows: `wanted`, or what the limit leaves after `RESERVED_FDS`.
pub fn connection_limit(wanted: Option<usize>) -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write/read only the struct passed, which lives on this stack.
    let soft = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            if lim.rlim_cur < lim.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    rlim_max: lim.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    lim.rlim_cur = lim.rlim_max;
                }
            }
            lim.rlim_cur
        } else {
            1024
        }
    };
    let room = usize::try_from(soft.saturating_sub(RESERVED_FDS))
        .unwrap_or(usize::MAX)
        .max(16);
    wanted.unwrap_or(10_000).min(room)
}

/// Connections the kernel queues for `accept` (capped by `net.core.somaxconn`): a fleet of
/// Envoys reconnecting at once after a restart, or a burst while the accept loop's worker is
/// busy, must not overflow it (std's 128 did: dropped SYNs cost a client a 1 s retransmit).
const BACKLOG: u32 = 4096;

/// A listening socket on `addr` with a backlog of `BACKLOG`.
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // A restarted controller rebinds its port at once, though old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Serves `router` on `listener` with at most `max` connections at a time. A connection past
/// the limit is closed at once (rather than left in the kernel's backlog), and counted.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    max: usize,
    stats: Arc<ConnectionStats>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(max));
    let mut last_accept_error = None::<std::time::Instant>;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors (EMFILE) or a connection reset before accept: wait a little
                // rather than spin, and say so at most once a minute.
                if last_accept_error.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    eprintln!("rampctl: accepting a connection: {e}");
                    last_accept_error = Some(std::time::Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let stats = stats.clone();
        stats.open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(READ_BUFFER_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            // A connection's end (closed, reset, timed out) is the client's business.
            let _ = connection.await;
            stats.open.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
}

/// Hands memory freed by closed connections back to the system every `every`. glibc's malloc
/// keeps what it freed for reuse: 8,000 long polls held 117 MB of RSS after they were all gone.
/// musl's allocator (the release image) returns memory by itself and has no `malloc_trim`.
pub async fn trim_memory(every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free pages of the allocator's own heap.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}
