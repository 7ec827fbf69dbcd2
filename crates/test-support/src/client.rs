//! A scripted raw SMTP client.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A blocking SMTP client that sends exactly the bytes it is given.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// Connects and reads the greeting (which must be 220).
    pub fn connect(addr: SocketAddr) -> Self {
        let mut client = Self::connect_raw(addr);
        let greeting = client.reply();
        assert!(greeting.starts_with("220"), "greeting: {greeting}");
        client
    }

    /// Connects from a chosen loopback source address (e.g. 127.0.0.2) and reads the greeting,
    /// whatever it is: `(client, greeting)`.
    pub fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> (Self, String) {
        let mut client = Self::connect_raw_from(addr, source);
        let greeting = client.try_reply().unwrap_or_default();
        (client, greeting)
    }

    /// Connects from a chosen loopback source address without reading anything.
    pub fn connect_raw_from(addr: SocketAddr, source: std::net::IpAddr) -> Self {
        let domain = if source.is_ipv4() {
            socket2::Domain::IPV4
        } else {
            socket2::Domain::IPV6
        };
        let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None).expect("socket");
        socket
            .bind(&SocketAddr::new(source, 0).into())
            .unwrap_or_else(|e| panic!("bind {source}: {e}"));
        socket
            .connect(&addr.into())
            .unwrap_or_else(|e| panic!("connect {addr} from {source}: {e}"));
        Self::from_stream(socket.into())
    }

    /// Connects without reading anything.
    pub fn connect_raw(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        Self::from_stream(stream)
    }

    fn from_stream(stream: TcpStream) -> Self {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Self {
            reader: BufReader::new(stream.try_clone().expect("clone")),
            writer: stream,
        }
    }

    /// Sets how long a read may wait.
    pub fn set_read_timeout(&self, timeout: Duration) {
        self.writer
            .set_read_timeout(Some(timeout))
            .expect("timeout");
    }

    /// Sends raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("send");
    }

    /// Sends raw bytes; false if the peer has closed the connection.
    pub fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.writer.write_all(bytes).is_ok() && self.writer.flush().is_ok()
    }

    /// Reads one complete (possibly multi-line) reply; returns all its lines joined with "\n".
    /// Panics on EOF.
    pub fn reply(&mut self) -> String {
        self.try_reply()
            .expect("connection closed while waiting for a reply")
    }

    /// Reads one complete reply, or `None` at EOF.
    pub fn try_reply(&mut self) -> Option<String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read reply: {e} (got so far: {lines:?})"),
            }
            let line = line.trim_end_matches(['\r', '\n']).to_owned();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                return Some(lines.join("\n"));
            }
        }
    }

    /// Sends one command line (CRLF added) and returns its reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// EHLO, MAIL, RCPTs and DATA; panics unless each is accepted.
    pub fn start_data(&mut self, from: &str, rcpts: &[&str]) {
        let r = self.cmd("EHLO client.test");
        assert!(r.starts_with("250"), "EHLO: {r}");
        self.start_data_after_ehlo(from, rcpts);
    }

    /// MAIL, RCPTs and DATA in a session that said EHLO; panics unless each is accepted.
    pub fn start_data_after_ehlo(&mut self, from: &str, rcpts: &[&str]) {
        let r = self.cmd(&format!("MAIL FROM:<{from}>"));
        assert!(r.starts_with("250"), "MAIL: {r}");
        for rcpt in rcpts {
            let r = self.cmd(&format!("RCPT TO:<{rcpt}>"));
            assert!(r.starts_with("250"), "RCPT {rcpt}: {r}");
        }
        let r = self.cmd("DATA");
        assert!(r.starts_with("354"), "DATA: {r}");
    }

    /// True once the peer has closed the connection (reads until EOF, up to the read timeout).
    pub fn is_closed(&mut self) -> bool {
        let mut buf = [0u8; 256];
        loop {
            match self.reader.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}
