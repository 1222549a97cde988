//! What the serving commands share at run time: the async runtime, the
//! shutdown signal, and the open-file limit their connection caps need.

use super::error::CliError;

/// A multi-threaded runtime for the commands that serve.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError(format!("cannot start the async runtime: {e}")))
}

/// A future that resolves when SIGINT or SIGTERM arrives. The handlers are
/// installed *now*, not when the future is first polled: a signal that
/// arrives between "ready" being printed and serving starting must still mean
/// a graceful shutdown, not the default action (death without a flush).
/// Call it inside the runtime, before announcing readiness.
pub(crate) fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            // Without signal handlers, fall back to Ctrl-C only.
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

/// Raises the soft `RLIMIT_NOFILE` to `needed` if it is lower (up to the
/// hard limit). Returns the limit that applies when it is still too low,
/// for the caller to warn about. Once, at start-up, before anything sizes
/// itself by the limit (the KMS's connection cap does): the one place in
/// the process that changes it.
pub(crate) fn raise_open_file_limit(needed: u64) -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let current = limit.current?;
    if current >= needed {
        return None;
    }
    let raised = limit.maximum.map_or(needed, |max| max.min(needed));
    if raised > current {
        limit.current = Some(raised);
        if setrlimit(Resource::Nofile, limit).is_ok() {
            return (raised < needed).then_some(raised);
        }
    }
    Some(current)
}
