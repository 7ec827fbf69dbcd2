//! The same generic layers in front of a hyper HTTP service: the SMTP proxy answers 421/450,
//! here the answer is `429 Too Many Requests` with `Retry-After`.
//!
//! ```sh
//! cargo run -p attitude-layers --example http_429 -- 127.0.0.1:8080
//! curl -i -H 'x-api-key: alice' http://127.0.0.1:8080/      # 200, 200, 200, then 429
//! ```
//! Per API key: at most 3 requests per minute and 1 in flight; `/slow` takes half a second.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::num::NonZeroU32;
use std::time::Duration;

use attitude_layers::Rejection;
use attitude_layers::keyed_concurrency::KeyedConcurrencyLayer;
use attitude_layers::rate_limit::RateLimitLayer;
use bytes::Bytes;
use governor::Quota;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};

type Res = Response<Full<Bytes>>;

/// The limit key: the `x-api-key` header; requests without one are not limited.
fn api_key(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// HTTP's answer to a refused request.
fn too_many(_req: Request<Incoming>, why: Rejection) -> Ready<Result<Res, Infallible>> {
    let mut response = Response::builder()
        .status(StatusCode::TOO_MANY_REQUESTS)
        .header("content-type", "text/plain");
    if let Some(after) = why.retry_after {
        // Whole seconds, rounded up.
        let seconds = after.as_millis().div_ceil(1000).max(1);
        response = response.header("retry-after", seconds.to_string());
    }
    let body = format!(
        "too many requests ({} limit, rule {})\n",
        why.layer, why.rule
    );
    ready(Ok(response
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")))
}

async fn app(req: Request<Incoming>) -> Result<Res, Infallible> {
    if req.uri().path() == "/slow" {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(Response::new(Full::new(Bytes::from_static(b"hello\n"))))
}

/// Serves HTTP on `listener` with the limit layers in front of `app`.
pub(crate) async fn serve(listener: TcpListener) {
    let rate = RateLimitLayer::new(
        "per-key-rate",
        Quota::per_minute(NonZeroU32::new(3).expect("non-zero")),
        100_000,
        api_key as fn(&Request<Incoming>) -> Option<String>,
        too_many as fn(_, _) -> _,
    );
    let concurrency = KeyedConcurrencyLayer::new(
        "per-key-concurrency",
        1,
        api_key as fn(&Request<Incoming>) -> Option<String>,
        too_many as fn(_, _) -> _,
    );
    let service = ServiceBuilder::new()
        .layer(concurrency)
        .layer(rate)
        .service_fn(app);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let service = service.clone();
        tokio::spawn(async move {
            let hyper_service = hyper::service::service_fn(move |req| service.clone().oneshot(req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), hyper_service)
                .await;
        });
    }
}

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let listener = TcpListener::bind(&addr).await.expect("bind");
    println!("listening http={}", listener.local_addr().expect("addr"));
    serve(listener).await;
}
