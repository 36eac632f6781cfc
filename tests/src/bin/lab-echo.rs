//! A small TCP/UDP server and client for service tests, run inside lab pods
//! (`ip netns exec <pod> lab-echo ...`). The server answers every
//! connection or datagram with one line naming itself and the peer address it
//! saw, so a test can tell which endpoint answered and what source address
//! reached it (the client pod's, or a masquerading node's).
//!
//! ```text
//! lab-echo serve tcp|udp ADDR:PORT NAME     # until killed
//! lab-echo serve-many IP NAME tcp/PORT udp/PORT ...   # every socket in one process, until killed
//! lab-echo ask tcp|udp ADDR:PORT [--count N] [--timeout-ms T] [--size BYTES]
//! ```
//! `ask` prints each answer line; with `--count` it makes N connections (or
//! exchanges) one after another and prints `ok=<n> failed=<n> per_sec=<r>`.
//! Exit 0 when every attempt was answered.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn usage() -> ExitCode {
    eprintln!("usage: lab-echo serve tcp|udp ADDR:PORT NAME | lab-echo ask tcp|udp ADDR:PORT [--count N] [--timeout-ms T]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve-many") {
        return serve_many(&args[1..]);
    }
    let (Some(mode), Some(proto), Some(addr)) = (args.first(), args.get(1), args.get(2)) else {
        return usage();
    };
    let Ok(addr) = addr.parse::<SocketAddr>() else { return usage() };
    match (mode.as_str(), proto.as_str()) {
        ("serve", p) => {
            let name = args.get(3).cloned().unwrap_or_else(|| "server".into());
            let r = if p == "tcp" { serve_tcp(addr, &name) } else { serve_udp(addr, &name) };
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("lab-echo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        ("ask", p) => {
            let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
            let count: Option<u32> = flag("--count").and_then(|v| v.parse().ok());
            let timeout =
                Duration::from_millis(flag("--timeout-ms").and_then(|v| v.parse().ok()).unwrap_or(2000));
            // A UDP datagram of this size (the pod fragments one above its MTU).
            let size: usize = flag("--size").and_then(|v| v.parse().ok()).unwrap_or(6);
            let once = |print: bool| -> bool {
                let r = if p == "tcp" { ask_tcp(addr, timeout) } else { ask_udp(addr, timeout, size) };
                match r {
                    Ok(line) => {
                        if print {
                            println!("{line}");
                        }
                        true
                    }
                    Err(e) => {
                        if print {
                            eprintln!("lab-echo: {addr}: {e}");
                        }
                        false
                    }
                }
            };
            match count {
                None => {
                    if once(true) {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Some(n) => {
                    let t = Instant::now();
                    let ok = (0..n).filter(|_| once(false)).count() as u32;
                    let secs = t.elapsed().as_secs_f64();
                    println!("ok={ok} failed={} per_sec={:.1}", n - ok, f64::from(ok) / secs);
                    if ok == n {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
            }
        }
        _ => usage(),
    }
}

/// `IP NAME proto/port...`: one thread per socket, all bound before the
/// first answer, so a caller that sees one port answer knows all listen.
fn serve_many(args: &[String]) -> ExitCode {
    let (Some(ip), Some(name)) = (args.first(), args.get(1)) else { return usage() };
    let mut sockets = Vec::new();
    for spec in &args[2..] {
        let Some((proto, port)) = spec.split_once('/') else { return usage() };
        let Ok(addr) = format!("{ip}:{port}").parse::<SocketAddr>() else { return usage() };
        let bound = match proto {
            "tcp" => TcpListener::bind(addr).map(Socket::Tcp),
            "udp" => UdpSocket::bind(addr).map(Socket::Udp),
            _ => return usage(),
        };
        match bound {
            Ok(s) => sockets.push(s),
            Err(e) => {
                eprintln!("lab-echo: bind {spec} on {ip}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let threads: Vec<_> = sockets
        .into_iter()
        .map(|s| {
            let name = name.clone();
            std::thread::spawn(move || match s {
                Socket::Tcp(l) => accept_tcp(&l, &name),
                Socket::Udp(u) => answer_udp(&u, &name),
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    ExitCode::FAILURE
}

enum Socket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

fn serve_tcp(addr: SocketAddr, name: &str) -> std::io::Result<()> {
    accept_tcp(&TcpListener::bind(addr)?, name)
}

fn accept_tcp(l: &TcpListener, name: &str) -> std::io::Result<()> {
    for conn in l.incoming() {
        let Ok(mut c) = conn else { continue };
        let peer = c.peer_addr().map(|p| p.to_string()).unwrap_or_default();
        let _ = writeln!(c, "{name} peer={peer}");
    }
    Ok(())
}

fn serve_udp(addr: SocketAddr, name: &str) -> std::io::Result<()> {
    answer_udp(&UdpSocket::bind(addr)?, name)
}

fn answer_udp(s: &UdpSocket, name: &str) -> std::io::Result<()> {
    let mut buf = vec![0u8; 65536];
    loop {
        let (_, peer) = s.recv_from(&mut buf)?;
        let _ = s.send_to(format!("{name} peer={peer}\n").as_bytes(), peer);
    }
}

fn ask_tcp(addr: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let c = TcpStream::connect_timeout(&addr, timeout)?;
    c.set_read_timeout(Some(timeout))?;
    let mut line = String::new();
    BufReader::new(c).read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::other("closed without an answer"));
    }
    Ok(line.trim_end().to_string())
}

fn ask_udp(addr: SocketAddr, timeout: Duration, size: usize) -> std::io::Result<String> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    // Broadcast destinations too (the hostile tests send to 255.255.255.255).
    s.set_broadcast(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.connect(addr)?;
    let mut payload = b"hello\n".to_vec();
    payload.resize(size.max(1), b'.');
    s.send(&payload)?;
    let mut buf = [0u8; 1500];
    let n = s.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim_end().to_string())
}
