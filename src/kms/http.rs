//! The HTTP front door of the KMS: AWS's JSON 1.1 protocol over HTTP/1.1.
//!
//! `POST /` with `X-Amz-Target: TrentService.<Operation>` and a JSON body.
//! This layer only bounds the body, verifies the SigV4 signature, maps the
//! access key to a principal, and hands the operation to the service core;
//! errors go back as `{"__type": ..., "message": ...}` with AWS's status.

use std::future::IntoFuture;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::net::TcpListener;

use super::error::{ErrorKind, KmsError};
use super::service::{Kms, RequestContext};
use super::sigv4::{self, AuthError, SignedRequest};
use super::tls::{Peer, TlsListener};

/// Largest request body accepted. AWS KMS requests are small: the biggest
/// members are a 4 KiB plaintext, a 6 KiB ciphertext or a 32 KiB policy.
pub const MAX_BODY: usize = 256 * 1024;

const TARGET_PREFIX: &str = "TrentService.";
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

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

fn error_response(request_id: &str, err: &KmsError) -> Response {
    let status = StatusCode::from_u16(err.kind.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    let body = json!({ "__type": err.kind.aws_type(), "message": err.message }).to_string();
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-amzn-requestid", v);
    }
    h.insert(
        "x-amzn-errortype",
        HeaderValue::from_static(err.kind.aws_type()),
    );
    resp
}

fn ok_response(request_id: &str, body: serde_json::Value) -> Response {
    let mut resp = (StatusCode::OK, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-amzn-requestid", v);
    }
    resp
}

fn auth_error(e: &AuthError) -> KmsError {
    let kind = match e {
        AuthError::MissingAuthenticationToken(_) => ErrorKind::MissingAuthenticationToken,
        AuthError::IncompleteSignature(_) => ErrorKind::IncompleteSignature,
        AuthError::InvalidSignature(_) => ErrorKind::InvalidSignature,
        AuthError::UnrecognizedClient(_) => ErrorKind::UnrecognizedClient,
        AuthError::RequestExpired(_) => ErrorKind::RequestExpired,
    };
    KmsError::new(kind, e.message().to_string())
}

/// The operation named by X-Amz-Target, if the header is well formed.
fn target_operation(headers: &HeaderMap) -> Option<String> {
    let t = headers.get("x-amz-target")?.to_str().ok()?;
    let op = t.strip_prefix(TARGET_PREFIX)?;
    if op.is_empty() || op.len() > 64 || !op.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    Some(op.to_string())
}

async fn handle(
    State(kms): State<Arc<Kms>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    req: Request,
) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let source = peer.to_string();
    let (parts, body) = req.into_parts();
    let operation = target_operation(&parts.headers);
    let op_name = operation.clone().unwrap_or_else(|| "-".into());

    let reject = |kms: &Kms, err: KmsError| {
        kms.audit_rejected(&request_id, Some(&source), &op_name, &err);
        error_response(&request_id, &err)
    };

    let body: Bytes = match axum::body::to_bytes(Body::new(body), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return reject(
                &kms,
                KmsError::new(
                    ErrorKind::RequestEntityTooLarge,
                    format!("request body exceeds {MAX_BODY} bytes"),
                ),
            );
        }
    };

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
    let method = parts.method.as_str().to_string();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();

    // Signature checks and the operation touch SQLite and do crypto: keep
    // them off the async workers.
    let kms2 = kms.clone();
    let rid = request_id.clone();
    let src = source.clone();
    let result = tokio::task::spawn_blocking(move || {
        let signed = SignedRequest {
            method: &method,
            path: &path,
            query: &query,
            headers: &headers,
            body: &body,
        };
        let principal = std::cell::RefCell::new(None);
        let lookup = |akid: &str| match kms2.credentials(akid) {
            Ok(Some((p, secret))) => {
                *principal.borrow_mut() = Some(p);
                Some(secret)
            }
            _ => None,
        };
        let verified = sigv4::verify(&signed, kms2.clock().now(), kms2.region(), "kms", lookup);
        if let Err(e) = verified {
            return Err(auth_error(&e));
        }
        let Some(principal) = principal.into_inner() else {
            return Err(KmsError::new(
                ErrorKind::UnrecognizedClient,
                "The security token included in the request is invalid.",
            ));
        };
        if method != "POST" || path != "/" {
            return Err(KmsError::new(
                ErrorKind::UnknownOperation,
                "requests must be POST / with an X-Amz-Target header",
            ));
        }
        let content_type = headers
            .iter()
            .find(|(n, _)| n == "content-type")
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        let media = content_type.split(';').next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case(CONTENT_TYPE)
            && !media.eq_ignore_ascii_case("application/x-amz-json-1.0")
        {
            return Err(KmsError::new(
                ErrorKind::Serialization,
                format!("Content-Type must be {CONTENT_TYPE}"),
            ));
        }
        let Some(operation) = operation else {
            return Err(KmsError::new(
                ErrorKind::UnknownOperation,
                "missing or malformed X-Amz-Target header (expected TrentService.<Operation>)",
            ));
        };
        let ctx = RequestContext {
            principal,
            request_id: rid,
            source: Some(src),
        };
        Ok(kms2.handle(&ctx, &operation, &body))
    })
    .await;

    match result {
        Ok(Ok(Ok(value))) => ok_response(&request_id, value),
        // The core audited it.
        Ok(Ok(Err(e))) => error_response(&request_id, &e),
        // Rejected before reaching the core.
        Ok(Err(e)) => reject(&kms, e),
        Err(_) => reject(&kms, KmsError::internal("request handler failed")),
    }
}
