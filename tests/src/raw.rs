//! Raw packets in a lab pod: what a pod with CAP_NET_RAW can send (any
//! frame out of its eth0), what a pod's interface receives (a packet socket
//! on its eth0: every frame the switch delivered, whether or not the pod's
//! stack then takes it), and small helper processes that hold real
//! connections open. Frames come from [`crate::forge`]; the sockets are
//! Python's (python3 is part of the lab's setup), run inside the pod's
//! network namespace and ended by PID.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::forge::ipv4_of;
use crate::Netns;

/// Sends every frame of `frames`, `repeat` times over, out of `iface` in
/// `netns` (AF_PACKET: the frames leave exactly as given).
pub fn send_frames(netns: &Netns, iface: &str, frames: &[Vec<u8>], repeat: u32) -> Result<()> {
    let hex: Vec<String> = frames
        .iter()
        .map(|f| format!("'{}'", f.iter().map(|b| format!("{b:02x}")).collect::<String>()))
        .collect();
    let script = format!(
        "import socket,time\ns=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\ns.bind(('{iface}',0))\n\
         fs=[bytes.fromhex(h) for h in [{}]]\nfor _ in range({repeat}):\n    for f in fs:\n        s.send(f); time.sleep(0.01)\n",
        hex.join(",")
    );
    netns.exec(&["python3", "-c", &script])?;
    Ok(())
}

/// A Python process in a pod that prints `ready` once set up, then one line
/// per event; its lines are collected by a thread. Killed by PID on drop.
struct Script {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Script {
    fn start(netns: &Netns, what: &str, script: &str, args: &[&str]) -> Result<Script> {
        let mut argv = vec!["python3", "-u", "-c", script];
        argv.extend_from_slice(args);
        let argv = netns.wrap(&argv);
        let mut child = Command::new(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {what} in {}", netns.name))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if line == "ready" {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                    continue;
                }
                if let Ok(mut v) = sink.lock() {
                    v.push(line);
                }
            }
        });
        let mut s = Script { child, lines };
        if ready_rx.recv_timeout(Duration::from_secs(15)).is_err() {
            let _ = s.child.kill();
            let mut err = String::new();
            if let Some(mut e) = s.child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            bail!("{what} in {} did not get ready: {}", netns.name, err.trim());
        }
        Ok(s)
    }

    fn clear(&self) {
        if let Ok(mut v) = self.lines.lock() {
            v.clear();
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const CAPTURE: &str = r#"
import socket,sys
s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW,socket.htons(3))
s.bind((sys.argv[1],0))
print('ready')
while True:
    f,a=s.recvfrom(65535)
    # 4: PACKET_OUTGOING, the pod's own frames.
    if a[2]!=4:
        print(f.hex())
"#;

/// Every frame an interface of a pod receives, from its start on: the
/// victim's view of what the switch delivered.
pub struct Capture {
    script: Script,
}

impl Capture {
    pub fn start(netns: &Netns, iface: &str) -> Result<Capture> {
        Ok(Capture { script: Script::start(netns, "a packet capture", CAPTURE, &[iface])? })
    }

    /// Forgets what was received so far.
    pub fn clear(&self) {
        self.script.clear();
    }

    /// The IPv4 packets received so far.
    pub fn packets(&self) -> Vec<Vec<u8>> {
        let hex = |l: &str| -> Option<Vec<u8>> {
            (0..l.len())
                .step_by(2)
                .map(|i| l.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
                .collect()
        };
        self.script
            .lines()
            .iter()
            .filter_map(|l| hex(l))
            .filter_map(|f| ipv4_of(&f).map(<[u8]>::to_vec))
            .collect()
    }

    /// Whether a received packet is `packet`, byte for byte (the switch
    /// forwards without rewriting the IP packet).
    pub fn got(&self, packet: &[u8]) -> bool {
        self.packets().iter().any(|p| p == packet)
    }

    /// Waits until `packet` was received or `within` passed (a convergence
    /// wait for a packet that is expected, never a measure).
    pub fn wait_for(&self, packet: &[u8], within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.got(packet) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.got(packet)
    }
}

const PEER: &str = r#"
import socket,sys,threading
me,tport,uport=sys.argv[1],int(sys.argv[2]),int(sys.argv[3])
l=socket.socket(); l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); l.bind((me,tport)); l.listen(64)
u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); u.bind((me,uport))
held=[]
def accept():
    while True:
        c,_=l.accept(); held.append(c)
threading.Thread(target=accept,daemon=True).start()
print('ready')
while True:
    d,a=u.recvfrom(2048); u.sendto(d,a)
"#;

/// A peer that accepts TCP connections on `tcp` and keeps them open, and
/// echoes UDP datagrams on `udp`: the other end of a victim's real
/// connections.
pub struct Peer {
    _script: Script,
}

impl Peer {
    pub fn start(netns: &Netns, ip: &str, tcp: u16, udp: u16) -> Result<Peer> {
        let (t, u) = (tcp.to_string(), udp.to_string());
        Ok(Peer { _script: Script::start(netns, "a peer server", PEER, &[ip, &t, &u])? })
    }
}

const HOLD: &str = r#"
import socket,sys,time
me=sys.argv[1]
tcp=[];udp=[]
for spec in sys.argv[2:]:
    p,sport,ip,port=spec.split(':'); sport=int(sport); port=int(port)
    if p=='tcp':
        s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)
        s.bind((me,sport)); s.settimeout(5); s.connect((ip,port)); tcp.append(s)
    else:
        s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind((me,sport)); s.connect((ip,port))
        s.settimeout(0.3); udp.append((s,p=='udp'))
def refresh(need):
    for s,answered in udp:
        for _ in range(20 if need and answered else 1):
            try:
                s.send(b'keep'); s.recv(100); break
            except Exception:
                pass
        else:
            if need and answered:
                sys.exit('no answer on %s' % (s.getpeername(),))
refresh(True)
print('ready')
while True:
    time.sleep(2); refresh(False)
"#;

/// A pod's own connections, opened from fixed source ports and kept alive
/// (UDP refreshed every 2 s) until dropped: what a victim has in conntrack.
/// Each spec is `tcp:SPORT:IP:PORT` (connected), `udp:SPORT:IP:PORT` (a
/// datagram answered) or `udpq:SPORT:IP:PORT` (datagrams sent, no answer
/// awaited).
pub struct Connections {
    _script: Script,
}

impl Connections {
    pub fn open(netns: &Netns, ip: &str, specs: &[String]) -> Result<Connections> {
        let mut args = vec![ip];
        args.extend(specs.iter().map(String::as_str));
        Ok(Connections { _script: Script::start(netns, "the victim's connections", HOLD, &args)? })
    }
}

const UDP_SINK: &str = r#"
import socket,sys
u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); u.bind((sys.argv[1],int(sys.argv[2])))
print('ready')
while True:
    u.recvfrom(2048)
"#;

/// A UDP port that takes every datagram and answers none, neither with data
/// nor with an error: whatever error a client of it gets was forged.
pub struct UdpSink {
    _script: Script,
}

impl UdpSink {
    pub fn start(netns: &Netns, ip: &str, port: u16) -> Result<UdpSink> {
        Ok(UdpSink { _script: Script::start(netns, "a UDP sink", UDP_SINK, &[ip, &port.to_string()])? })
    }
}

const UDP_CLIENT: &str = r#"
import socket,sys,time
me,sport,ip,port=sys.argv[1],int(sys.argv[2]),sys.argv[3],int(sys.argv[4])
s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind((me,sport)); s.connect((ip,port)); s.settimeout(0.2)
first=True
while True:
    try:
        s.send(b'ask'); s.recv(100); print('answer')
    except ConnectionRefusedError:
        print('refused')
    except socket.timeout:
        pass
    if first:
        print('ready'); first=False
    time.sleep(0.1)
"#;

/// A UDP client as a resolver is one: a socket bound to `sport` and
/// connected to `ip:port`, asking every 0.1 s; each answer and each
/// "connection refused" (an ICMP port unreachable the kernel matched to
/// the socket) is counted. Ready once its first datagram went out.
pub struct UdpClient {
    script: Script,
}

impl UdpClient {
    pub fn start(netns: &Netns, me: &str, sport: u16, ip: &str, port: u16) -> Result<UdpClient> {
        let args = [me, &sport.to_string(), ip, &port.to_string()];
        Ok(UdpClient { script: Script::start(netns, "a UDP client", UDP_CLIENT, &args)? })
    }

    /// How many of its datagrams were refused so far.
    pub fn refusals(&self) -> usize {
        self.script.lines().iter().filter(|l| *l == "refused").count()
    }

    /// How many were answered so far.
    pub fn answers(&self) -> usize {
        self.script.lines().iter().filter(|l| *l == "answer").count()
    }
}
