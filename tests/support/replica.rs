//! Real HTTP servers that stand in for replicas of an external service. Each is a
//! small threaded HTTP/1.1 server with keep-alive whose behaviour can be switched
//! while it runs: answer, fail with 503, hang, or hold requests until the test lets
//! them go. `/health` answers 200 unless the replica hangs everything.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a replica answers requests other than `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// 200 with `replica <name> path <path> request-id <id>`.
    Ok = 0,
    /// 503.
    Fail = 1,
    /// Never answers (until stopped).
    Hang = 2,
    /// Never answers anything, `/health` included.
    HangAll = 3,
    /// Alternates: every other request fails with 503.
    Flap = 4,
    /// Holds each request (counted when it arrives) until the mode changes, then
    /// answers it as [`Mode::Ok`] would: a gate the test opens.
    Hold = 5,
}

struct Shared {
    name: String,
    mode: AtomicU8,
    hits: AtomicUsize,
    stopped: AtomicBool,
    connections: Mutex<Vec<TcpStream>>,
    last_headers: Mutex<Vec<(String, String)>>,
}

/// A running replica.
pub struct Replica {
    shared: Arc<Shared>,
    pub address: String,
}

impl Replica {
    /// Start a replica named `name` on a free loopback port.
    pub fn start(name: &str) -> Replica {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind replica");
        let address = listener.local_addr().expect("addr").to_string();
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            mode: AtomicU8::new(Mode::Ok as u8),
            hits: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
            connections: Mutex::new(Vec::new()),
            last_headers: Mutex::new(Vec::new()),
        });
        let accept_shared = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if accept_shared.stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                if let Ok(clone) = stream.try_clone() {
                    lock(&accept_shared.connections).push(clone);
                }
                let shared = accept_shared.clone();
                std::thread::spawn(move || serve(shared, stream));
            }
            // Dropping the listener here closes the port: new connections are refused.
        });
        Replica { shared, address }
    }

    /// Switch behaviour.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Requests served (other than `/health`).
    pub fn hits(&self) -> usize {
        self.shared.hits.load(Ordering::SeqCst)
    }

    /// Headers of the last non-health request.
    pub fn last_headers(&self) -> Vec<(String, String)> {
        lock(&self.shared.last_headers).clone()
    }

    /// Stop: close the port and every open connection, as a crashed process would.
    pub fn kill(&self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag and drops the listener.
        let _ = TcpStream::connect_timeout(
            &self.address.parse().expect("address"),
            Duration::from_millis(200),
        );
        for stream in lock(&self.shared.connections).drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
        // Wait until the port refuses connections.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline
            && TcpStream::connect_timeout(
                &self.address.parse().expect("address"),
                Duration::from_millis(100),
            )
            .is_ok()
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn serve(shared: Arc<Shared>, stream: TcpStream) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut writer = write_half;
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_owned();
        let mut headers = Vec::new();
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_owned());
                if name == "content-length" {
                    content_length = value.parse().unwrap_or(0);
                }
                headers.push((name, value));
            }
        }
        let mut body = vec![0u8; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if shared.stopped.load(Ordering::SeqCst) {
            return;
        }
        let mode = shared.mode.load(Ordering::SeqCst);
        let is_health = path == "/health";
        if mode == Mode::HangAll as u8 || (mode == Mode::Hang as u8 && !is_health) {
            if !is_health {
                shared.hits.fetch_add(1, Ordering::SeqCst);
            }
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until && !shared.stopped.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            return;
        }
        if mode == Mode::Hold as u8 && !is_health {
            shared.hits.fetch_add(1, Ordering::SeqCst);
            let until = Instant::now() + Duration::from_secs(30);
            while shared.mode.load(Ordering::SeqCst) == Mode::Hold as u8 {
                if Instant::now() >= until || shared.stopped.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let text = format!("replica {} path {path} released\n", shared.name);
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{text}",
                text.len()
            );
            if writer.write_all(response.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        let (status, text) = if is_health {
            ("200 OK", "ok\n".to_owned())
        } else {
            let hit = shared.hits.fetch_add(1, Ordering::SeqCst);
            let request_id = headers
                .iter()
                .find(|(name, _)| name == "x-request-id")
                .map(|(_, value)| value.clone())
                .unwrap_or_default();
            *lock(&shared.last_headers) = headers;
            if mode == Mode::Fail as u8 || (mode == Mode::Flap as u8 && hit.is_multiple_of(2)) {
                (
                    "503 Service Unavailable",
                    format!("replica {} failing\n", shared.name),
                )
            } else {
                (
                    "200 OK",
                    format!(
                        "replica {} path {path} request-id {request_id}\n",
                        shared.name
                    ),
                )
            }
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{text}",
            text.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}
