//! The test DNS server as a program, for benchmarks: serves one zone on a UDP address until it
//! is killed (at most an hour).
//!
//! `dns_server LISTEN ZONE [NAME=A:1.2.3.4 | NAME=TXT:text]...`

use std::net::SocketAddr;
use std::time::Duration;

use attitude_test_support::{DnsServer, Rr};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: dns_server LISTEN ZONE [NAME=A:1.2.3.4 | NAME=TXT:text]...";
    let (Some(listen), Some(zone)) = (args.first(), args.get(1)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().expect("LISTEN as IP:PORT");
    let parsed: Vec<(String, String, String)> = args[2..]
        .iter()
        .map(|a| {
            let (name, rest) = a.split_once('=').expect(usage);
            let (kind, value) = rest.split_once(':').expect(usage);
            (name.to_string(), kind.to_string(), value.to_string())
        })
        .collect();
    let records: Vec<(&str, Rr<'_>)> = parsed
        .iter()
        .map(|(name, kind, value)| {
            let rr = match kind.as_str() {
                "A" => Rr::A(value.parse().expect("an IPv4 address")),
                "TXT" => Rr::Txt(value),
                _ => panic!("{usage}"),
            };
            (name.as_str(), rr)
        })
        .collect();
    let server = DnsServer::start_on(listen, zone, &records);
    println!("listening dns={}", server.addr);
    std::thread::sleep(Duration::from_secs(3600));
}
