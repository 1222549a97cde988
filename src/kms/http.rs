//! The HTTP front door of the KMS: AWS's JSON 1.1 protocol over HTTP/1.1.
//!
//! `POST /` with `X-Amz-Target: TrentService.<Operation>` and a JSON body.
//! This file is the transport only: axum, TLS, reading the body up to its
//! bound and deadline, and a blocking thread per request. The accept loop
//! (connection cap, TLS handshakes) is `accept`; one connection's deadlines
//! are `connection`; their bounds are `limits`. What a request means (SigV4,
//! access key → principal, the operation, AWS-shaped errors) is
//! [`request::respond`], which the `kms_request` fuzz target calls too.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::CONNECTION;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use super::service::Kms;
use super::sigv4::SignedRequest;
use super::tls::Peer;

mod accept;
mod connection;
pub mod limits;
pub mod request;

pub use accept::REFUSAL_LOG_INTERVAL;
pub use connection::BodyDeadline;
pub use limits::Limits;
pub use request::{MAX_BODY, Reply};

/// Builds the router for one service instance.
pub fn router(kms: Arc<Kms>) -> Router {
    Router::new().fallback(handle).with_state(kms)
}

/// How often keys past their deletion window, or due for automatic rotation,
/// are looked for between requests.
const DELETION_SWEEP: std::time::Duration = std::time::Duration::from_secs(60);

/// How often the unauthenticated-failure summary is looked at (it is
/// written once per `audit::UNAUTHENTICATED_SUMMARY_INTERVAL`).
const AUDIT_SUMMARY_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// How long requests still in flight when shutdown begins get to finish.
/// Idle connections close at once; this bounds only a client that keeps a
/// request open (half-sent, say), which must not hold the server up forever.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Serves until `shutdown` resolves, then finishes in-flight requests (for
/// at most `SHUTDOWN_GRACE`). With a TLS configuration, every connection is
/// HTTPS. `limits` bound what a client may hold: connections, and how long
/// each may take over its handshake, header and body or sit idle.
pub async fn serve(
    kms: Arc<Kms>,
    listener: TcpListener,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Requests sweep too, but an idle KMS must still destroy and rotate keys
    // on time.
    let sweeper_kms = kms.clone();
    let sweeper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(DELETION_SWEEP);
        loop {
            tick.tick().await;
            let k = sweeper_kms.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = k.sweep() {
                    tracing::error!("scheduled key work: {e}");
                }
            })
            .await;
        }
    });
    // Unauthenticated failures are counted into a summary line (kms/audit.rs);
    // write it when its interval is over even if no request comes to do it.
    let summary_kms = kms.clone();
    let summariser = tokio::spawn(async move {
        let mut tick = tokio::time::interval(AUDIT_SUMMARY_CHECK);
        loop {
            tick.tick().await;
            let k = summary_kms.clone();
            let _ = tokio::task::spawn_blocking(move || k.flush_audit_summary(false)).await;
        }
    });
    let graceful = GracefulShutdown::new();
    accept::accept_until(
        listener,
        tls,
        router(kms.clone()),
        limits,
        &graceful,
        shutdown,
    )
    .await;
    // Idle connections close at once; requests in flight get the grace.
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "KMS: closing connections still open {} s after shutdown began",
            SHUTDOWN_GRACE.as_secs()
        );
    }
    sweeper.abort();
    summariser.abort();
    kms.flush_audit_summary(true);
    Ok(())
}

/// Marks a response as the connection's last: after a body that was not
/// read whole, what is left of it would be read as the next request.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Writes a [`Reply`] as an HTTP response.
fn into_response(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut resp = (status, reply.body).into_response();
    let h = resp.headers_mut();
    for (name, value) in reply.headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    resp
}

async fn handle(
    State(kms): State<Arc<Kms>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Request,
) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let source = peer.addr.to_string();
    let (parts, body) = req.into_parts();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();

    // Stop reading at the bound: a larger body is refused unread. A body
    // that stops arriving is refused at its deadline, and the connection
    // closed (what is left of the body would be read as the next request).
    let deadline = parts
        .extensions
        .get::<BodyDeadline>()
        .map_or(limits::DEFAULT_BODY_TIMEOUT, |d| d.0);
    let reading = axum::body::to_bytes(Body::new(body), MAX_BODY);
    let body: Bytes = match tokio::time::timeout(deadline, reading).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            let inner = e.into_inner();
            let reply = if inner.is::<http_body_util::LengthLimitError>() {
                request::refuse_oversized(&kms, &headers, &request_id, &source)
            } else {
                // The client went away mid-body, or sent broken chunking.
                request::refuse_unreadable_body(&kms, &headers, &request_id, &source, &inner)
            };
            return closing(into_response(reply));
        }
        Err(_) => {
            let reply = request::refuse_slow_body(&kms, &headers, &request_id, &source, deadline);
            return closing(into_response(reply));
        }
    };

    let method = parts.method.as_str().to_string();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();

    // Signature checks and the operation touch SQLite and do crypto: keep
    // them off the async workers.
    let worker_kms = kms.clone();
    let worker_headers = headers.clone();
    let rid = request_id.clone();
    let src = source.clone();
    let reply = tokio::task::spawn_blocking(move || {
        let signed = SignedRequest {
            method: &method,
            path: &path,
            query: &query,
            headers: &worker_headers,
            body: &body,
        };
        request::respond(&worker_kms, &signed, &rid, &src, peer.over_tls)
    })
    .await
    .unwrap_or_else(|_| request::refuse_internal(&kms, &headers, &request_id, &source));
    into_response(reply)
}
