//! `rampctl serve`: puts the layers together. Concurrency model: each rollout has a published
//! snapshot (`registry`) that polls read and long-poll on, never waiting on a check; one
//! reconciler task per rollout (`reconciler`) does the checks and their IO; the store is touched
//! on blocking threads only, for one statement or transaction at a time; reports are validated on
//! arrival, kept in memory and written in batches by the flusher.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::{TokenOptions, Tokens};
use crate::service::App;

pub struct Config {
    pub listen: SocketAddr,
    pub db: PathBuf,
    /// A PostgreSQL connection string (`--store`): replicas on one database instead of `db`.
    pub store: Option<String>,
    /// Who may call what (`--auth-token`, `--report-token`, `--read-token`, `--metrics-token`,
    /// `--insecure-no-auth`).
    pub tokens: TokenOptions,
    /// A directory of rollout specs to reconcile (`--specs`), and how often to read it.
    pub specs: Option<PathBuf>,
    pub specs_every: Duration,
    /// At most this many API connections at a time (`--max-connections`); `None`: 10,000, or
    /// what the open-files limit allows.
    pub max_connections: Option<usize>,
    /// A PEM file of CAs that outgoing https (hooks, Prometheus) trusts besides the system's.
    pub ca_file: Option<PathBuf>,
}

/// Runs until the process is stopped.
pub async fn serve(cfg: Config) -> anyhow::Result<()> {
    let tokens = Tokens::new(cfg.tokens)?;
    if tokens.is_open() {
        eprintln!(
            "rampctl: WARNING: --insecure-no-auth: anyone who can reach {} can read, report on and change every rollout",
            cfg.listen
        );
    }
    // Before the store: a CA file that cannot be used stops the start, not every hook later.
    let outgoing = crate::tls::Outgoing::new(cfg.ca_file.as_deref())?;
    let start: crate::service::Starter = |app, handle| {
        tokio::spawn(crate::reconciler::run(app, handle));
    };
    let app = match cfg.store.clone() {
        None => {
            let db = cfg.db.clone();
            let (store, loaded) = tokio::task::spawn_blocking(move || {
                let store = crate::store::sqlite::Store::open(&db)?;
                let loaded = crate::service::load(&store)?;
                anyhow::Ok((store, loaded))
            })
            .await??;
            (App::new(Box::new(store), outgoing, start), loaded)
        }
        Some(url) => {
            let (store, loaded) = tokio::task::spawn_blocking({
                let url = url.clone();
                move || {
                    let store = crate::store::postgres::Store::open(&url)?;
                    let loaded = crate::service::load(&store)?;
                    anyhow::Ok((store, loaded))
                }
            })
            .await??;
            eprintln!(
                "rampctl: a replica on PostgreSQL: reconciles the rollouts whose lease it holds (a dead holder's lease ends at once, an unreachable one's within {} s)",
                crate::store::postgres::LEASE_PERIOD_S
            );
            let leases = Arc::new(crate::store::postgres::Leases::new(&url));
            (
                App::new(Box::new(store), outgoing, start).with_leases(leases),
                loaded,
            )
        }
    };
    let (app, loaded) = (Arc::new(app.0), app.1);
    if let Some(url) = cfg.store.clone() {
        crate::replicas::follow(app.clone(), url);
    }
    for handle in loaded {
        app.register(handle);
    }
    let router = crate::server::router(app.clone(), Arc::new(tokens));
    let listener = crate::connections::listen(cfg.listen)?;
    let max_connections = crate::connections::connection_limit(cfg.max_connections);
    eprintln!(
        "rampctl: at most {max_connections} connections, each closed after {} s without a request",
        crate::connections::HEADER_TIMEOUT.as_secs()
    );
    eprintln!("rampctl: outgoing https trusts {}", app.outgoing.trusted);
    eprintln!("rampctl: serving on http://{}", listener.local_addr()?);
    if let Some(dir) = cfg.specs {
        tokio::spawn(crate::watcher::watch(app.clone(), dir, cfg.specs_every));
    }
    tokio::spawn(crate::flusher::flush_reports(app.clone()));
    tokio::spawn(crate::connections::trim_memory(Duration::from_secs(5)));
    crate::connections::serve(listener, router, max_connections, Arc::default()).await?;
    Ok(())
}
