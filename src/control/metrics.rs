//! Snapshot and re-encryption progress in the server's `--metrics`: a
//! prometheus-client [`Collector`] that reads the control socket's tasks
//! (the snapshot sessions and re-encryption jobs, by export) at scrape
//! time. The NBD layer's collector has the I/O series; these tasks are the
//! control socket's, so their gauges are here.
//!
//! ```text
//! envol_reencryption_bytes_done{export="db"}    12582912
//! envol_reencryption_bytes_total{export="db"}   67108864
//! envol_reencryption_running{export="db"}       1
//! envol_snapshot_chunks_left{export="db"}       3
//! envol_snapshot_copied_bytes{export="db"}      0
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;

use super::active_snapshot::ActiveSnapshot;
use super::reencryption_job::ReencryptionJob;

/// Register with `Registry::register_collector` (see
/// [`Controller::task_metrics`](super::Controller::task_metrics)).
pub struct TaskMetrics {
    pub(super) snapshots: Arc<Mutex<BTreeMap<String, ActiveSnapshot>>>,
    pub(super) reencryptions: Arc<Mutex<BTreeMap<String, Arc<ReencryptionJob>>>>,
}

impl std::fmt::Debug for TaskMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskMetrics").finish_non_exhaustive()
    }
}

type Rows = Vec<(String, u64)>;

/// A job as scraped: export, (bytes done, bytes in all), running.
type JobRow = (String, (u64, u64), bool);

impl Collector for TaskMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Read under the locks, encoded after: a scrape never holds them
        // while it writes.
        let jobs: Vec<JobRow> = self
            .reencryptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, job)| (name.clone(), job.bytes(), job.is_running()))
            .collect();
        let sessions: Vec<(String, u64, u64)> = self
            .snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(name, s)| {
                let usage = s.view.as_ref().map(|v| v.usage());
                (
                    name.clone(),
                    usage.map_or(0, |u| u.chunks_left),
                    usage.map_or(0, |u| u.copied_bytes),
                )
            })
            .collect();
        let rows = |f: &dyn Fn(&JobRow) -> u64| -> Rows {
            jobs.iter().map(|j| (j.0.clone(), f(j))).collect()
        };
        gauge(
            &mut encoder,
            "reencryption_bytes_done",
            "Bytes of the volume under the new data key, by export, of the re-encryption running in the server (or its last one).",
            &rows(&|j| j.1.0),
        )?;
        gauge(
            &mut encoder,
            "reencryption_bytes_total",
            "Bytes of the volume being re-encrypted, by export.",
            &rows(&|j| j.1.1),
        )?;
        gauge(
            &mut encoder,
            "reencryption_running",
            "1 while a re-encryption runs in the server for the export, 0 once it completed or stopped.",
            &rows(&|j| u64::from(j.2)),
        )?;
        gauge(
            &mut encoder,
            "snapshot_chunks_left",
            "Chunks a snapshot of the attached volume has still to read (file volumes), by export.",
            &sessions
                .iter()
                .map(|s| (s.0.clone(), s.1))
                .collect::<Rows>(),
        )?;
        gauge(
            &mut encoder,
            "snapshot_copied_bytes",
            "Bytes copied aside for a snapshot of the attached volume, held in the server's memory, by export.",
            &sessions
                .iter()
                .map(|s| (s.0.clone(), s.2))
                .collect::<Rows>(),
        )
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(String, u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (export, value) in rows {
        ConstGauge::new(*value as i64)
            .encode(family.encode_family(&[("export", export.as_str())])?)?;
    }
    Ok(())
}
