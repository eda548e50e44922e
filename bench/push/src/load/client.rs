//! A minimal blocking HTTP/1.1 keep-alive client for loopback benchmarking: one GET at a
//! time on one connection, response read to the end (Content-Length bodies only).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One keep-alive connection.
pub struct Connection {
    addr: SocketAddr,
    request: Vec<u8>,
    stream: Option<BufReader<TcpStream>>,
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status code.
    Status(u16),
    /// Connection or protocol failure.
    Failed,
}

impl Connection {
    /// A connection (opened lazily) sending `GET path` with `Host: host`.
    pub fn new(addr: SocketAddr, host: &str, path: &str) -> Self {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: meshwarden-load\r\n\r\n");
        Self {
            addr,
            request: request.into_bytes(),
            stream: None,
        }
    }

    fn open(&mut self) -> io::Result<&mut BufReader<TcpStream>> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            self.stream = Some(BufReader::new(s));
        }
        Ok(self.stream.as_mut().expect("just opened"))
    }

    /// Opens the connection now, so the first measured request does not pay for it.
    pub fn warm(&mut self) -> io::Result<()> {
        self.open().map(|_| ())
    }

    /// Sends the request and reads the whole response. A failure drops the connection; the
    /// next call opens a new one.
    pub fn get(&mut self) -> Outcome {
        match self.exchange() {
            Ok((status, keep)) => {
                if !keep {
                    self.stream = None;
                }
                Outcome::Status(status)
            }
            Err(_) => {
                self.stream = None;
                Outcome::Failed
            }
        }
    }

    fn exchange(&mut self) -> io::Result<(u16, bool)> {
        let request = self.request.clone();
        let reader = self.open()?;
        reader.get_mut().write_all(&request)?;
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let status = parse_status(&line).ok_or(io::ErrorKind::InvalidData)?;
        let mut length: usize = 0;
        let mut keep = true;
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse().map_err(|_| io::ErrorKind::InvalidData)?;
                } else if name.eq_ignore_ascii_case("connection")
                    && value.eq_ignore_ascii_case("close")
                {
                    keep = false;
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    // Only fixed-length bodies are expected from the benchmark upstream.
                    return Err(io::ErrorKind::InvalidData.into());
                }
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        Ok((status, keep))
    }
}

/// The status code of an HTTP/1.x status line.
pub fn parse_status(line: &str) -> Option<u16> {
    let mut parts = line.split_whitespace();
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status("HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status("HTTP/1.0 503 Service Unavailable"), Some(503));
        assert_eq!(parse_status("SSH-2.0 x"), None);
        assert_eq!(parse_status(""), None);
    }

    #[test]
    fn reads_keep_alive_responses_and_reconnects_after_close() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            // First connection: two keep-alive responses, then one that closes.
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            for body in ["ok", "hello"] {
                let _ = s.read(&mut buf).unwrap();
                write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
            }
            let _ = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 429 Too Many\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .unwrap();
            drop(s);
            let (mut s, _) = listener.accept().unwrap();
            let _ = s.read(&mut buf).unwrap();
            s.write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
        });
        let mut c = Connection::new(addr, "x", "/");
        assert_eq!(c.get(), Outcome::Status(200));
        assert_eq!(c.get(), Outcome::Status(200));
        assert_eq!(c.get(), Outcome::Status(429));
        assert_eq!(c.get(), Outcome::Status(204));
        server.join().unwrap();
    }
}
