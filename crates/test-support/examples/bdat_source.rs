//! A bounded load client that sends messages in BDAT chunks (RFC 3030), for benchmarks:
//! `smtp-source` only speaks DATA. Each session sends its share of the messages on one
//! connection (MAIL and RCPT pipelined, then every chunk of the message pipelined), and the run
//! stops after the last message or `--max-seconds`, whichever comes first.
//!
//! `bdat_source HOST:PORT [--sessions 10] [--messages 2000] [--size 102400] [--chunk 32768]
//!  [--data] [--max-seconds 300]`
//!
//! Prints `RESULT mode=bdat sessions=.. messages=.. failed=.. seconds=.. msgs_per_s=.. MB_per_s=..`.
//! `--data` sends the same messages with DATA, for comparison.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Options {
    addr: SocketAddr,
    sessions: usize,
    messages: usize,
    size: usize,
    chunk: usize,
    data: bool,
    max_seconds: u64,
}

fn options() -> Options {
    let usage = "usage: bdat_source HOST:PORT [--sessions N] [--messages N] [--size OCTETS] \
                 [--chunk OCTETS] [--data] [--max-seconds S]";
    let mut args = std::env::args().skip(1);
    let addr = args.next().and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        eprintln!("{usage}");
        std::process::exit(2)
    });
    let mut o = Options {
        addr,
        sessions: 10,
        messages: 2000,
        size: 100 * 1024,
        chunk: 32 * 1024,
        data: false,
        max_seconds: 300,
    };
    while let Some(flag) = args.next() {
        if flag == "--data" {
            o.data = true;
            continue;
        }
        let value: u64 = args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
            eprintln!("{flag} needs a number\n{usage}");
            std::process::exit(2)
        });
        match flag.as_str() {
            "--sessions" => o.sessions = value.max(1) as usize,
            "--messages" => o.messages = value as usize,
            "--size" => o.size = value.max(64) as usize,
            "--chunk" => o.chunk = value.max(1) as usize,
            "--max-seconds" => o.max_seconds = value,
            _ => {
                eprintln!("unknown option {flag}\n{usage}");
                std::process::exit(2)
            }
        }
    }
    o
}

/// A message of `size` octets: a few headers, then 76-character lines.
fn message(size: usize) -> Vec<u8> {
    let mut m =
        b"From: bench@example.org\r\nTo: sink@example.com\r\nSubject: bdat bench\r\n\r\n".to_vec();
    let line = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmn\r\n";
    while m.len() + line.len() <= size {
        m.extend_from_slice(line);
    }
    m
}

type Conn = BufReader<TcpStream>;

async fn reply(conn: &mut Conn) -> std::io::Result<u16> {
    let mut line = String::new();
    loop {
        line.clear();
        if conn.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return Ok(line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0));
        }
    }
}

/// One session: its `count` messages; returns how many were accepted.
async fn session(o: &Options, count: usize, body: &[u8]) -> std::io::Result<usize> {
    let mut conn = BufReader::new(TcpStream::connect(o.addr).await?);
    conn.get_mut().set_nodelay(true)?;
    reply(&mut conn).await?;
    conn.get_mut()
        .write_all(b"EHLO bdat-source.test\r\n")
        .await?;
    reply(&mut conn).await?;
    let mut accepted = 0;
    let stuffed = if o.data {
        let mut wire = body.to_vec();
        wire.extend_from_slice(b".\r\n");
        wire
    } else {
        Vec::new()
    };
    for _ in 0..count {
        conn.get_mut()
            .write_all(b"MAIL FROM:<bench@example.org>\r\nRCPT TO:<sink@example.com>\r\n")
            .await?;
        let (mail, rcpt) = (reply(&mut conn).await?, reply(&mut conn).await?);
        if mail != 250 || rcpt != 250 {
            conn.get_mut().write_all(b"RSET\r\n").await?;
            reply(&mut conn).await?;
            continue;
        }
        let verdict = if o.data {
            conn.get_mut().write_all(b"DATA\r\n").await?;
            if reply(&mut conn).await? != 354 {
                continue;
            }
            conn.get_mut().write_all(&stuffed).await?;
            reply(&mut conn).await?
        } else {
            let chunks: Vec<&[u8]> = body.chunks(o.chunk).collect();
            for (i, chunk) in chunks.iter().enumerate() {
                let last = if i + 1 == chunks.len() { " LAST" } else { "" };
                let head = format!("BDAT {}{last}\r\n", chunk.len());
                conn.get_mut().write_all(head.as_bytes()).await?;
                conn.get_mut().write_all(chunk).await?;
            }
            let mut verdict = 0;
            for _ in &chunks {
                verdict = reply(&mut conn).await?;
            }
            verdict
        };
        if verdict == 250 {
            accepted += 1;
        }
    }
    conn.get_mut().write_all(b"QUIT\r\n").await?;
    let _ = reply(&mut conn).await;
    Ok(accepted)
}

fn main() {
    let o = options();
    let body = message(o.size);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let accepted: usize = runtime.block_on(async {
        let o = &o;
        let body = &body;
        let work = futures::future::join_all((0..o.sessions).map(|i| {
            let count = o.messages / o.sessions + usize::from(i < o.messages % o.sessions);
            async move { session(o, count, body).await.unwrap_or(0) }
        }));
        tokio::time::timeout(Duration::from_secs(o.max_seconds), work)
            .await
            .map(|done| done.into_iter().sum())
            .unwrap_or(0)
    });
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "RESULT mode={} sessions={} messages={} failed={} seconds={seconds:.2} msgs_per_s={:.0} MB_per_s={:.1}",
        if o.data { "data" } else { "bdat" },
        o.sessions,
        accepted,
        o.messages - accepted.min(o.messages),
        accepted as f64 / seconds,
        accepted as f64 * body.len() as f64 / seconds / 1e6,
    );
}
