//! The KMS's Prometheus metrics: requests by operation and outcome, a
//! latency histogram by operation, and keys by state.
//!
//! Requests are counted by `service` (`Kms::handle` and the audits of
//! requests refused before an operation), so the HTTP server and the
//! in-process KMS of `envol up` count alike. Keys by state are read from
//! the store at each scrape. Label values come from fixed sets only: an
//! operation name this KMS does not know is `unknown` (the name is the
//! client's input, and a label per made-up name would let a stranger grow
//! the metrics without bound); an outcome is `ok` or an AWS error type.
//! Nothing here sees key material.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use super::error::KmsError;
use super::key_state::KeyState;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OperationLabel {
    operation: &'static str,
}

/// The request families; clones share the counts.
#[derive(Clone)]
pub(crate) struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Family<OperationLabel, Histogram, fn() -> Histogram>,
}

impl fmt::Debug for RequestMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RequestMetrics")
    }
}

/// Latency buckets from 100 µs to about 13 s: an in-process Decrypt takes
/// well under a millisecond, one over HTTPS a few, a slow disk much more.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 18))
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl RequestMetrics {
    /// Counts one request; `operation` must come from the fixed set (see
    /// `ops::operation_label`); `outcome` is `ok` or the AWS error type.
    /// `elapsed`: how long the operation ran (requests refused before one
    /// ran have none).
    pub(crate) fn record(
        &self,
        operation: &'static str,
        outcome: &'static str,
        elapsed: Option<Duration>,
    ) {
        self.requests
            .get_or_create(&RequestLabels { operation, outcome })
            .inc();
        if let Some(elapsed) = elapsed {
            self.latency
                .get_or_create(&OperationLabel { operation })
                .observe(elapsed.as_secs_f64());
        }
    }
}

/// Where the collector reads the keys' states at scrape time.
pub(crate) trait KeyStates: Send + Sync + 'static {
    /// Keys per stored state name.
    fn count_by_state(&self) -> Result<Vec<(String, u64)>, KmsError>;
}

/// The KMS's metrics as a prometheus-client [`Collector`]
/// (`Registry::register_collector`); see `Kms::metrics`.
pub struct KmsMetrics {
    pub(crate) requests: RequestMetrics,
    pub(crate) keys: Arc<dyn KeyStates>,
}

impl fmt::Debug for KmsMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KmsMetrics")
    }
}

const STATES: [KeyState; 3] = [
    KeyState::Enabled,
    KeyState::Disabled,
    KeyState::PendingDeletion,
];

impl Collector for KmsMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let requests = &self.requests.requests;
        requests.encode(encoder.encode_descriptor(
            "kms_requests",
            "KMS requests by operation and outcome (ok, or the AWS error type).",
            None,
            requests.metric_type(),
        )?)?;
        let latency = &self.requests.latency;
        latency.encode(encoder.encode_descriptor(
            "kms_request_duration_seconds",
            "How long KMS operations ran, by operation.",
            None,
            latency.metric_type(),
        )?)?;
        // A store that cannot be read leaves the family out of this scrape
        // (and says why in the log) rather than reporting made-up zeros.
        let counts = match self.keys.count_by_state() {
            Ok(counts) => counts,
            Err(e) => {
                tracing::error!("metrics: cannot count keys by state: {e}");
                return Ok(());
            }
        };
        let mut family = encoder.encode_descriptor(
            "kms_keys",
            "Master keys by state.",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for state in STATES {
            let n = counts
                .iter()
                .filter(|(s, _)| s == state.as_str())
                .map(|(_, n)| *n)
                .sum::<u64>();
            ConstGauge::new(n).encode(family.encode_family(&[("state", state.as_str())])?)?;
        }
        Ok(())
    }
}
