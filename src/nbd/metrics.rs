//! The server's Prometheus metrics: a prometheus-client [`Collector`] that
//! reads every export's counters (`export_stats.rs`) at scrape time and
//! encodes them as metric families labelled by `export` (and `command` or
//! `errno`). Nothing here runs on the request path: the request path adds
//! to the export's atomics, a scrape reads them. An export detached
//! disappears from the next scrape with its series.
//!
//! Snapshot and re-encryption progress are the control socket's tasks, so
//! their gauges are its collector (`control/metrics.rs`), not this one.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::export_stats::{COMMAND_NAMES, ERRNO_NAMES, ExportMetrics};
use super::registry::ExportRegistry;
use std::sync::Arc;

/// Reads a server's exports at each scrape; register it with
/// `Registry::register_collector` (see [`Server::metrics`](super::Server::metrics)).
#[derive(Debug)]
pub struct ServerMetrics(pub(crate) Arc<ExportRegistry>);

type Exports = [(String, ExportMetrics)];

impl Collector for ServerMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let exports = self.0.metrics();
        per_command(
            &mut encoder,
            &exports,
            "nbd_requests",
            "NBD requests read, by export and command (refused ones included).",
            |m, c| m.commands[c].requests,
        )?;
        per_command(
            &mut encoder,
            &exports,
            "nbd_request_bytes",
            "Bytes of the NBD requests admitted to the device, by export and command (READ/WRITE: data; TRIM, WRITE_ZEROES, CACHE, BLOCK_STATUS: the range).",
            |m, c| m.commands[c].bytes,
        )?;
        latency(&mut encoder, &exports)?;
        errors(&mut encoder, &exports)?;
        per_export_gauge(
            &mut encoder,
            &exports,
            "nbd_requests_in_flight",
            "NBD requests read and not yet answered, by export.",
            |m| m.counters.in_flight,
        )?;
        per_export_gauge(
            &mut encoder,
            &exports,
            "nbd_connections",
            "NBD connections in transmission on the export now.",
            |m| m.counters.clients,
        )?;
        let mut family = encoder.encode_descriptor(
            "nbd_connections",
            "NBD connections that reached transmission on the export, ever.",
            None,
            MetricType::Counter,
        )?;
        for (name, m) in exports {
            ConstCounter::new(m.connections).encode(family.encode_family(&[("export", name)])?)?;
        }
        Ok(())
    }
}

fn per_command(
    encoder: &mut DescriptorEncoder,
    exports: &Exports,
    name: &str,
    help: &str,
    value: impl Fn(&ExportMetrics, usize) -> u64,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (export, m) in exports {
        for (c, command) in COMMAND_NAMES.iter().enumerate() {
            let labels = [("export", export.as_str()), ("command", command)];
            ConstCounter::new(value(m, c)).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

fn latency(encoder: &mut DescriptorEncoder, exports: &Exports) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "nbd_request_duration_seconds",
        "NBD request latency, from its header read to its reply written, by export and command.",
        None,
        MetricType::Histogram,
    )?;
    for (export, m) in exports {
        for (c, command) in COMMAND_NAMES.iter().enumerate() {
            let labels = [("export", export.as_str()), ("command", command)];
            let l = &m.commands[c].latency;
            family
                .encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(l.sum_seconds, l.count, &l.buckets, None)?;
        }
    }
    Ok(())
}

fn errors(encoder: &mut DescriptorEncoder, exports: &Exports) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "nbd_errors",
        "NBD error replies, by export and errno (refused requests, device errors, ESHUTDOWN of a forced detach).",
        None,
        MetricType::Counter,
    )?;
    for (export, m) in exports {
        for (e, errno) in ERRNO_NAMES.iter().enumerate() {
            let labels = [("export", export.as_str()), ("errno", errno)];
            ConstCounter::new(m.errors[e]).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

fn per_export_gauge(
    encoder: &mut DescriptorEncoder,
    exports: &Exports,
    name: &str,
    help: &str,
    value: impl Fn(&ExportMetrics) -> u64,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (export, m) in exports {
        ConstGauge::new(value(m)).encode(family.encode_family(&[("export", export.as_str())])?)?;
    }
    Ok(())
}
