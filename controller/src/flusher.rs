//! The task that writes what the API and the reconcilers keep in memory to the store, in batches:
//! the reports accepted since the last pass (the newest per Envoy) and the checks queued for the
//! report's series. Reports are cumulative, so a crash loses nothing that the Envoys' next reports
//! do not bring back; a failed write is kept for the next pass.

use std::sync::Arc;
use std::time::Duration;

use crate::service::App;
use crate::window::Report;

/// How often accepted reports are written to the store.
const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// Writes the reports accepted since the last pass, in one transaction.
pub async fn flush_reports(app: Arc<App>) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    loop {
        tick.tick().await;
        let mut batch: Vec<(String, Arc<Report>)> = Vec::new();
        for handle in app.all() {
            let mut book = handle.reports();
            for instance in std::mem::take(&mut book.unsaved) {
                if let Some(r) = book.newest.get(&instance) {
                    batch.push((handle.name.clone(), r.clone()));
                }
            }
        }
        flush_checks(&app).await;
        if app.replicated() {
            flush_figures(&app).await;
        }
        if batch.is_empty() {
            continue;
        }
        // Which instances to mark unsaved again if the write fails (names, not the reports).
        let marks: Vec<(String, String)> = batch
            .iter()
            .map(|(name, r)| (name.clone(), r.instance.clone()))
            .collect();
        let written = app
            .db(move |s| {
                let reports: Vec<(&str, &Report)> =
                    batch.iter().map(|(n, r)| (n.as_str(), &**r)).collect();
                s.put_reports(&reports)
            })
            .await;
        if let Err(e) = written {
            eprintln!("rampctl: reports not written (kept for the next pass): {e}");
            for (name, instance) in marks {
                if let Some(h) = app.rollout(&name) {
                    h.reports().unsaved.insert(instance);
                }
            }
        }
    }
}

/// Writes the checks queued since the last pass (the report's series), one transaction per
/// rollout; a failed write puts them back for the next pass.
async fn flush_checks(app: &Arc<App>) {
    for handle in app.all() {
        let points = handle.take_checks();
        if points.is_empty() {
            continue;
        }
        let (name, again) = (handle.name.clone(), points.clone());
        if let Err(e) = app.db(move |s| s.put_checks(&name, &points)).await {
            eprintln!(
                "rampctl: {}: checks not written (kept for the next pass): {e}",
                handle.name
            );
            handle.return_checks(again);
        }
    }
}

/// Replicas: the figures this replica's checks published since the last pass, for the others'
/// status (`App::refresh` shows them there). A failed write waits for the next check's.
async fn flush_figures(app: &Arc<App>) {
    for handle in app.all() {
        if !handle.take_figures_unsaved() {
            continue;
        }
        let Some(json) = handle
            .current()
            .figures
            .as_deref()
            .and_then(|f| serde_json::to_string(f).ok())
        else {
            continue;
        };
        let name = handle.name.clone();
        if let Err(e) = app.db(move |s| s.put_figures(&name, &json)).await {
            eprintln!("rampctl: {}: figures not written: {e}", handle.name);
        }
    }
}
