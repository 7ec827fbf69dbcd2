//! The admin HTTP server: `/metrics` (Prometheus text), `/healthz`, `/readyz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::config::DEFAULT_POOL;
use crate::stack::pools::Pools;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Histogram buckets for every `*_seconds` metric (SMTP transactions take milliseconds to
/// minutes).
const SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0, 120.0,
];

/// Buckets for the shared state's round trips (Redis answers in well under a millisecond on a
/// LAN; the command timeout is 50 ms by default).
const STATE_BUCKETS: [f64; 11] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];

/// Installs the Prometheus recorder (once per process).
pub(crate) fn install_recorder() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("attitude_state_operation_seconds".into()),
            &STATE_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        })
        .and_then(|b| b.install_recorder())
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))
}

/// What `/readyz` reports: not ready while draining, nor while the default pool or a pool
/// marked `required` has no backend up (a load balancer then sends clients to another
/// replica).
#[derive(Clone)]
pub(crate) struct Readiness {
    /// Cleared on SIGTERM.
    pub serving: Arc<AtomicBool>,
    /// The backend pools.
    pub pools: Arc<Pools>,
}

/// Runs the admin server until `stop`.
pub(crate) async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    ready: Readiness,
    stop: CancellationToken,
) {
    // The exporter needs periodic upkeep (histogram and idle-metric housekeeping).
    let upkeep = {
        let handle = handle.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => handle.run_upkeep(),
                }
            }
        })
    };
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let handle = handle.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let response = respond(&req, &handle, &ready);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = conn.await {
                tracing::debug!(%error, "admin connection");
            }
        });
    }
    upkeep.abort();
}

fn respond(
    req: &Request<Incoming>,
    handle: &PrometheusHandle,
    ready: &Readiness,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain; charset=utf-8")
            .body(Full::new(Bytes::from(body)))
            .expect("valid response")
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
    }
    match req.uri().path() {
        "/metrics" => Response::builder()
            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
            .body(Full::new(Bytes::from(handle.render())))
            .expect("valid response"),
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" if !ready.serving.load(Ordering::Relaxed) => {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into())
        }
        "/readyz" => match ready.pools.unready().as_slice() {
            [] => text(StatusCode::OK, "ready\n".into()),
            [one] if one == DEFAULT_POOL => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "no backend mail server up\n".into(),
            ),
            pools => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no backend mail server up in pool {}\n", pools.join(", ")),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}
