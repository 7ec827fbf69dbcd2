//! The test clamd and rspamd (`attitude_test_support::{Clamd, Rspamd}`: offline, on free
//! loopback ports) as a program, for benchmarks: prints `listening clamd=ADDR rspamd=ADDR` once
//! both answer, and stops them when its standard input closes (at most an hour).
//!
//! `engines [STREAM_MAX_OCTETS]`

use std::io::Read;
use std::time::Duration;

use attitude_test_support::{Clamd, Rspamd};

fn main() {
    let stream_max: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("STREAM_MAX_OCTETS as a number"))
        .unwrap_or(64 * 1024 * 1024);
    let clamd = Clamd::start(stream_max);
    let rspamd = Rspamd::start();
    println!("listening clamd={} rspamd={}", clamd.addr, rspamd.addr);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(Duration::from_secs(3600));
    drop(rspamd);
    drop(clamd);
}
