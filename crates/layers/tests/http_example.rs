//! Runs the HTTP example (`examples/http_429.rs`): the generic layers answer 429 in an HTTP stack.

#[allow(dead_code)]
#[path = "../examples/http_429.rs"]
mod example;

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn get(addr: SocketAddr, path: &str, key: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let key = key
        .map(|k| format!("x-api-key: {k}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\n{key}connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, response)
}

#[tokio::test]
async fn http_stack_answers_429_from_the_same_layers() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(example::serve(listener));

    // Rate: 3 per minute per key, then 429 with Retry-After.
    for _ in 0..3 {
        assert_eq!(get(addr, "/", Some("alice")).await.0, 200);
    }
    let (status, response) = get(addr, "/", Some("alice")).await;
    assert_eq!(status, 429, "{response}");
    // A third of a minute between requests, rounded up to whole seconds.
    assert!(
        response
            .to_ascii_lowercase()
            .contains("retry-after: 20\r\n"),
        "{response}"
    );
    assert!(response.contains("rate limit"), "{response}");
    // Another key, and requests without a key, are served.
    assert_eq!(get(addr, "/", Some("bob")).await.0, 200);
    assert_eq!(get(addr, "/", None).await.0, 200);

    // Concurrency: one request in flight per key.
    let slow = tokio::spawn(get(addr, "/slow", Some("carol")));
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (status, response) = get(addr, "/", Some("carol")).await;
    assert_eq!(status, 429, "{response}");
    assert!(response.contains("concurrency limit"), "{response}");
    assert_eq!(slow.await.unwrap().0, 200);
    server.abort();
}
