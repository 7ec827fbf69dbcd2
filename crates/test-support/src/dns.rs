//! An in-process DNS server (hickory-server) answering from a fixed table (A, TXT, SRV), for the
//! DNSBL, SPF and backend-discovery tests: never the internet.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::str::FromStr;
use std::sync::Arc;

use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_server::Server;
use hickory_server::proto::rr::rdata::{A, SOA, SRV, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};

/// A record the test server answers.
#[derive(Debug, Clone, Copy)]
pub enum Rr<'a> {
    /// An IPv4 address.
    A(Ipv4Addr),
    /// A text record (e.g. SPF).
    Txt(&'a str),
    /// A service record: priority, weight, port, target name.
    Srv(u16, u16, u16, &'a str),
}

/// A DNS server on 127.0.0.1 (UDP), authoritative for one zone, on a thread of its own.
pub struct DnsServer {
    /// Its address, for `[dns] nameservers`.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer").finish_non_exhaustive()
    }
}

impl DnsServer {
    /// Serves `zone` (e.g. `"test."`) with these records (`("2.0.0.127.bl.test.", Rr::A(ip))`).
    pub fn start(zone: &str, records: &[(&str, Rr<'_>)]) -> DnsServer {
        Self::start_on("127.0.0.1:0".parse().expect("address"), zone, records)
    }

    /// Like [`DnsServer::start`], on a chosen address.
    pub fn start_on(addr: SocketAddr, zone: &str, records: &[(&str, Rr<'_>)]) -> DnsServer {
        Self::start_with_ttl(addr, zone, records, 60)
    }

    /// Like [`DnsServer::start_on`], with this TTL on every record (a short one lets a test
    /// change the answers by restarting the server on the same address).
    pub fn start_with_ttl(
        addr: SocketAddr,
        zone: &str,
        records: &[(&str, Rr<'_>)],
        ttl: u32,
    ) -> DnsServer {
        let origin = Name::from_str(zone).expect("zone name");
        let mut handler: InMemoryZoneHandler<TokioRuntimeProvider> =
            InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
        let soa = SOA::new(
            Name::from_str("ns.invalid.").expect("name"),
            Name::from_str("hostmaster.invalid.").expect("name"),
            1,
            60,
            60,
            60,
            ttl,
        );
        handler.upsert_mut(Record::from_rdata(origin.clone(), 60, RData::SOA(soa)), 1);
        for (name, rr) in records {
            let name = Name::from_str(name).expect("record name");
            let data = match rr {
                Rr::A(ip) => RData::A(A(*ip)),
                Rr::Txt(text) => RData::TXT(TXT::new(vec![(*text).to_string()])),
                Rr::Srv(priority, weight, port, target) => RData::SRV(SRV::new(
                    *priority,
                    *weight,
                    *port,
                    Name::from_str(target).expect("SRV target"),
                )),
            };
            handler.upsert_mut(Record::from_rdata(name, ttl, data), 1);
        }
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin), vec![Arc::new(handler)]);
        let socket = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind DNS on {addr}: {e}"));
        socket.set_nonblocking(true).expect("nonblocking");
        let addr = socket.local_addr().expect("address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let mut server = Server::new(catalog);
                server.register_socket(tokio::net::UdpSocket::from_std(socket).expect("socket"));
                let _ = stopped.await;
                let _ = server.shutdown_gracefully().await;
            });
        });
        DnsServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A UDP socket on 127.0.0.1 that never answers: a nameserver that times out.
pub fn silent_nameserver() -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = socket.local_addr().expect("address");
    (socket, addr)
}
