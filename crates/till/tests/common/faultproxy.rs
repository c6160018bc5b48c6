//! A fault-injecting TCP proxy for tests that run a hub and tills as real
//! processes. A till enrolled through the proxy's URL reaches the hub only
//! through it; switching the fault changes what the till sees, for new and
//! for already open connections.
//!
//! Faults:
//! - `Pass`: bytes flow both ways.
//! - `Cut`: the listening socket is closed (new connections are refused,
//!   ECONNREFUSED) and open connections are closed.
//! - `BlackHole`: connections are accepted and read, nothing is ever
//!   answered (the client waits for its own timeout).
//! - `Delay(ms)`: every chunk, in either direction, waits `ms` first.
//! - `DropMid`: the request reaches the hub; of its answer only the first
//!   half is sent, then the connection is closed (an unknown outcome: the
//!   hub may have committed).
//! - `Reset`: a connection that sends anything is closed with a TCP RST
//!   (closing a socket with unread data makes Linux send RST instead of FIN).
//!
//! std only: one thread accepts, one thread per connection relays both
//! directions over non-blocking sockets, so that closing a connection drops
//! every handle of it at once.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the proxy does to the traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Pass,
    Cut,
    BlackHole,
    Delay(u64),
    DropMid,
    Reset,
}

/// How long the upstream may stay silent before a held `DropMid` answer
/// counts as complete.
const DROP_MID_IDLE: Duration = Duration::from_millis(40);
/// Poll period of the non-blocking loops.
const TICK: Duration = Duration::from_millis(1);

struct Shared {
    fault: Mutex<Fault>,
    upstream: SocketAddr,
    stop: AtomicBool,
    /// Whether the listening socket is open (false while `Cut`).
    listening: AtomicBool,
    accepted: AtomicU64,
    /// Connections closed with half an answer (`DropMid`).
    dropped_mid: AtomicU64,
    /// Connections closed with unread data, i.e. with RST (`Reset`).
    reset: AtomicU64,
}

impl Shared {
    fn fault(&self) -> Fault {
        *self.fault.lock().expect("fault lock")
    }
}

/// A running proxy; stops (and closes every connection) on drop.
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream`.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        listener.set_nonblocking(true).expect("non-blocking listener");
        let shared = Arc::new(Shared {
            fault: Mutex::new(Fault::Pass),
            upstream,
            stop: AtomicBool::new(false),
            listening: AtomicBool::new(true),
            accepted: AtomicU64::new(0),
            dropped_mid: AtomicU64::new(0),
            reset: AtomicU64::new(0),
        });
        let s = shared.clone();
        let accept = std::thread::spawn(move || accept_loop(listener, port, s));
        FaultProxy { port, shared, accept: Some(accept) }
    }

    /// Starts a proxy in front of an `http://127.0.0.1:PORT` URL.
    pub fn in_front_of(url: &str) -> FaultProxy {
        let addr = url.trim_start_matches("http://").trim_end_matches('/');
        FaultProxy::start(addr.parse().unwrap_or_else(|e| panic!("{url} is not http://IP:PORT: {e}")))
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Switches the fault; returns once the listening socket matches it
    /// (closed for `Cut`, open otherwise).
    pub fn set(&self, fault: Fault) {
        *self.shared.fault.lock().expect("fault lock") = fault;
        let want_listening = fault != Fault::Cut;
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.shared.listening.load(Ordering::SeqCst) != want_listening {
            assert!(Instant::now() < deadline, "the proxy did not switch to {fault:?} within 5 s");
            std::thread::sleep(TICK);
        }
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections cut after half an answer so far.
    pub fn dropped_mid(&self) -> u64 {
        self.shared.dropped_mid.load(Ordering::SeqCst)
    }

    /// Connections reset so far.
    pub fn resets(&self) -> u64 {
        self.shared.reset.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn accept_loop(listener: TcpListener, port: u16, shared: Arc<Shared>) {
    let mut listener = Some(listener);
    while !shared.stop.load(Ordering::SeqCst) {
        let fault = shared.fault();
        if fault == Fault::Cut {
            // Closing the listening socket: connecting now gets ECONNREFUSED.
            listener = None;
            shared.listening.store(false, Ordering::SeqCst);
            std::thread::sleep(TICK);
            continue;
        }
        let Some(l) = &listener else {
            // Back from a cut: listen on the same port again (std sets
            // SO_REUSEADDR, so lingering connections do not block it).
            match TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => {
                    l.set_nonblocking(true).expect("non-blocking listener");
                    listener = Some(l);
                    shared.listening.store(true, Ordering::SeqCst);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
            continue;
        };
        match l.accept() {
            Ok((client, _)) => {
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                let s = shared.clone();
                std::thread::spawn(move || handle(client, fault, s));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(TICK),
            Err(_) => std::thread::sleep(TICK),
        }
    }
}

/// Whether the socket has data to read (or EOF), without consuming it.
fn readable(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    match s.peek(&mut b) {
        Ok(_) => true,
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    }
}

/// Writes everything to a non-blocking socket; false if the peer is gone.
fn write_all(s: &mut TcpStream, mut data: &[u8], shared: &Shared) -> bool {
    while !data.is_empty() {
        if shared.stop.load(Ordering::SeqCst) {
            return false;
        }
        match s.write(data) {
            Ok(0) => return false,
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(TICK),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

enum Got {
    Data(usize),
    Nothing,
    Closed,
}

fn read_some(s: &mut TcpStream, buf: &mut [u8]) -> Got {
    match s.read(buf) {
        Ok(0) => Got::Closed,
        Ok(n) => Got::Data(n),
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => Got::Nothing,
        Err(_) => Got::Closed,
    }
}

fn handle(mut client: TcpStream, fault: Fault, shared: Arc<Shared>) {
    if client.set_nonblocking(true).is_err() {
        return;
    }
    let _ = client.set_nodelay(true);
    match fault {
        Fault::Cut => {}
        Fault::Reset => {
            // Wait for the request, leave it unread and close: RST.
            let deadline = Instant::now() + Duration::from_secs(5);
            while !readable(&client) && Instant::now() < deadline && !shared.stop.load(Ordering::SeqCst) {
                std::thread::sleep(TICK);
            }
            shared.reset.fetch_add(1, Ordering::SeqCst);
        }
        Fault::BlackHole => {
            // Read and discard until the fault changes or the client gives up.
            let mut buf = [0u8; 16 * 1024];
            while shared.fault() == Fault::BlackHole && !shared.stop.load(Ordering::SeqCst) {
                match read_some(&mut client, &mut buf) {
                    Got::Closed => return,
                    Got::Data(_) => {}
                    Got::Nothing => std::thread::sleep(TICK),
                }
            }
        }
        Fault::Pass | Fault::Delay(_) | Fault::DropMid => {
            let Ok(up) = TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(2)) else { return };
            if up.set_nonblocking(true).is_err() {
                return;
            }
            let _ = up.set_nodelay(true);
            relay(client, up, &shared);
        }
    }
}

/// Relays both directions in one thread, applying the current fault to
/// every chunk; returning drops (closes) both sockets.
fn relay(mut client: TcpStream, mut up: TcpStream, shared: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    // A `DropMid` answer held back until the upstream goes quiet.
    let mut held: Vec<u8> = Vec::new();
    let mut held_at = Instant::now();
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let fault = shared.fault();
        match fault {
            Fault::Cut => return,
            Fault::Reset => {
                // Close with the next request unread: RST.
                if readable(&client) {
                    shared.reset.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                std::thread::sleep(TICK);
                continue;
            }
            _ => {}
        }
        let mut idle = true;
        match read_some(&mut client, &mut buf) {
            Got::Closed => return,
            Got::Nothing => {}
            Got::Data(n) => {
                idle = false;
                match fault {
                    Fault::BlackHole => {}
                    Fault::Delay(ms) => {
                        std::thread::sleep(Duration::from_millis(ms));
                        if !write_all(&mut up, &buf[..n], shared) {
                            return;
                        }
                    }
                    _ => {
                        if !write_all(&mut up, &buf[..n], shared) {
                            return;
                        }
                    }
                }
            }
        }
        match read_some(&mut up, &mut buf) {
            Got::Closed => {
                if !held.is_empty() {
                    let half = held.len() / 2;
                    let _ = write_all(&mut client, &held[..half], shared);
                    shared.dropped_mid.fetch_add(1, Ordering::SeqCst);
                }
                return;
            }
            Got::Nothing => {}
            Got::Data(n) => {
                idle = false;
                match fault {
                    Fault::BlackHole => {}
                    Fault::DropMid => {
                        held.extend_from_slice(&buf[..n]);
                        held_at = Instant::now();
                    }
                    Fault::Delay(ms) => {
                        std::thread::sleep(Duration::from_millis(ms));
                        if !write_all(&mut client, &buf[..n], shared) {
                            return;
                        }
                    }
                    _ => {
                        if !write_all(&mut client, &buf[..n], shared) {
                            return;
                        }
                    }
                }
            }
        }
        if !held.is_empty() && held_at.elapsed() >= DROP_MID_IDLE {
            let half = held.len() / 2;
            let _ = write_all(&mut client, &held[..half], shared);
            shared.dropped_mid.fetch_add(1, Ordering::SeqCst);
            return;
        }
        if idle {
            std::thread::sleep(TICK);
        }
    }
}
