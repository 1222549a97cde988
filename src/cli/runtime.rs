//! What the serving commands share at run time: the async runtime and the
//! shutdown signal.

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
