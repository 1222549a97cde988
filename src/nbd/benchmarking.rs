//! Hidden entry points for `benches/request_metrics.rs`: what the request
//! path records per request, on a real export's counters, without a
//! connection around it.

use std::sync::Arc;

use super::export_stats::ExportStats;
use super::protocol::Request;

/// One export's counters.
pub struct RequestRecording(Arc<ExportStats>);

impl Default for RequestRecording {
    fn default() -> Self {
        Self(Arc::new(ExportStats::new()))
    }
}

impl RequestRecording {
    /// What a loop records for one admitted request, start to end: counted
    /// with its bytes and in flight at admission, its latency when its
    /// reply is done (the token drops).
    pub fn admitted_and_answered(&self, request: &Request) {
        drop(self.0.request(request, true));
    }

    /// What an error reply adds.
    pub fn failed(&self, errno: u32) {
        self.0.failed(errno);
    }

    /// A scrape's reading of every counter.
    pub fn read(&self) -> super::ExportMetrics {
        self.0.read_metrics()
    }
}
