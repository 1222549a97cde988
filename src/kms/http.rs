//! The HTTP front door of the KMS: AWS's JSON 1.1 protocol over HTTP/1.1.
//!
//! `POST /` with `X-Amz-Target: TrentService.<Operation>` and a JSON body.
//! This file is the transport only: axum, TLS, reading the body up to its
//! bound, and a blocking thread per request. What a request means (SigV4,
//! access key → principal, the operation, AWS-shaped errors) is
//! [`request::respond`], which the `kms_request` fuzz target calls too.

use std::future::IntoFuture;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;

use super::service::Kms;
use super::sigv4::SignedRequest;
use super::tls::{Peer, TlsListener};

pub mod request;

pub use request::{MAX_BODY, Reply};

/// Builds the router for one service instance.
pub fn router(kms: Arc<Kms>) -> Router {
    Router::new().fallback(handle).with_state(kms)
}

/// How often keys past their deletion window, or due for automatic rotation,
/// are looked for between requests.
const DELETION_SWEEP: std::time::Duration = std::time::Duration::from_secs(60);

/// How long requests still in flight when shutdown begins get to finish.
/// Idle connections close at once; this bounds only a client that keeps a
/// request open (half-sent, say), which must not hold the server up forever.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Serves until `shutdown` resolves, then finishes in-flight requests (for
/// at most `SHUTDOWN_GRACE`). With a TLS configuration, every connection is
/// HTTPS.
pub async fn serve(
    kms: Arc<Kms>,
    listener: TcpListener,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
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
    let (began_tx, began) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        let _ = began_tx.send(());
    };
    let app = router(kms).into_make_service_with_connect_info::<Peer>();
    let result = match tls {
        None => {
            let serving = axum::serve(listener, app).with_graceful_shutdown(shutdown);
            within_grace(serving.into_future(), began).await
        }
        Some(config) => {
            let listener = TlsListener::new(listener, config)?;
            let serving = axum::serve(listener, app).with_graceful_shutdown(shutdown);
            within_grace(serving.into_future(), began).await
        }
    };
    sweeper.abort();
    result
}

/// Runs `serving` to its end, or until `SHUTDOWN_GRACE` after shutdown
/// began, whichever is first. Connections left open then are dropped with
/// the runtime; requests already inside the service core run to completion
/// there (they are blocking tasks, which a runtime waits for).
async fn within_grace(
    serving: impl Future<Output = std::io::Result<()>>,
    began: tokio::sync::oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let deadline = async move {
        match began.await {
            Ok(()) => tokio::time::sleep(SHUTDOWN_GRACE).await,
            // Serving ended without a shutdown: nothing to bound.
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        result = serving => result,
        () = deadline => {
            tracing::warn!(
                "KMS: closing connections still open {} s after shutdown began",
                SHUTDOWN_GRACE.as_secs()
            );
            Ok(())
        }
    }
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

    // Stop reading at the bound: a larger body is refused unread.
    let body: Bytes = match axum::body::to_bytes(Body::new(body), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return into_response(request::refuse_oversized(
                &kms,
                &headers,
                &request_id,
                &source,
            ));
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
