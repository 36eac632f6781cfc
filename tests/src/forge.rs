//! Hand-built packets for the hostile-tenant tests: what an attacker in a
//! pod can put into an ordinary UDP socket (no raw socket needed), such as a
//! complete VXLAN datagram for a node's tunnel port. Pure: bytes only.

use std::net::Ipv4Addr;

/// The MAC k8s-ovs gives an interface with `ip` (as the agent does).
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

/// The IPv4 header checksum (RFC 791): one's complement of the one's
/// complement sum of the header's 16-bit words.
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in header.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// IP protocol numbers of the packets built here.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// TCP header flags.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// An IPv4 packet (20-byte header, DF, TTL 64, identification `id`) from
/// `src` to `dst` carrying `payload` as protocol `proto`.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, id: u16, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let csum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    ip.extend_from_slice(payload);
    ip
}

/// The checksum of a TCP or UDP `segment` (its checksum field zeroed) with
/// the IPv4 pseudo-header (RFC 793, RFC 768).
fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(12 + segment.len());
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(segment);
    ipv4_checksum(&pseudo)
}

/// An IPv4/UDP packet from `src:sport` to `dst:dport`, checksummed.
pub fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut seg = Vec::with_capacity(8 + payload.len());
    seg.extend_from_slice(&sport.to_be_bytes());
    seg.extend_from_slice(&dport.to_be_bytes());
    seg.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    seg.extend_from_slice(&[0, 0]);
    seg.extend_from_slice(payload);
    let csum = l4_checksum(src, dst, PROTO_UDP, &seg);
    // 0 means "no checksum" in UDP over IPv4: a computed 0 is sent as 0xffff.
    let csum = if csum == 0 { 0xffff } else { csum };
    seg[6..8].copy_from_slice(&csum.to_be_bytes());
    ipv4(src, dst, PROTO_UDP, 0x1234, &seg)
}

/// An IPv4/TCP segment (20-byte header, window 512) from `src:sport` to
/// `dst:dport` with `flags` ([`tcp_flags`]), checksummed.
#[allow(clippy::too_many_arguments)]
pub fn tcp(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut seg = Vec::with_capacity(20 + payload.len());
    seg.extend_from_slice(&sport.to_be_bytes());
    seg.extend_from_slice(&dport.to_be_bytes());
    seg.extend_from_slice(&seq.to_be_bytes());
    seg.extend_from_slice(&ack.to_be_bytes());
    seg.extend_from_slice(&[0x50, flags, 0x02, 0x00, 0, 0, 0, 0]);
    seg.extend_from_slice(payload);
    let csum = l4_checksum(src, dst, PROTO_TCP, &seg);
    seg[16..18].copy_from_slice(&csum.to_be_bytes());
    ipv4(src, dst, PROTO_TCP, 0x1234, &seg)
}

/// An IPv4/ICMP message: `typ`, `code`, the 4 bytes after the checksum
/// (`rest`: identifier and sequence of an echo, unused in an error) and `body`.
pub fn icmp(src: Ipv4Addr, dst: Ipv4Addr, typ: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut m = vec![typ, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    let csum = ipv4_checksum(&m);
    m[2..4].copy_from_slice(&csum.to_be_bytes());
    ipv4(src, dst, PROTO_ICMP, 0x1234, &m)
}

/// An ICMP error (destination unreachable: 3, time exceeded: 11) from `src`
/// to `dst` about `original`, a packet `dst` sent: its IP header and the
/// start of its payload, as a router or the destination quotes it (RFC 792).
pub fn icmp_error(src: Ipv4Addr, dst: Ipv4Addr, typ: u8, code: u8, original: &[u8]) -> Vec<u8> {
    // Header + 8 bytes is RFC 792's minimum; Linux quotes up to 576 bytes in
    // all. A whole TCP header lets every conntrack parse the quoted segment.
    let quoted = &original[..original.len().min(20 + 20)];
    icmp(src, dst, typ, code, [0; 4], quoted)
}

/// An Ethernet frame from `src_mac` to `dst_mac` carrying the IPv4 `packet`.
pub fn ether(src_mac: [u8; 6], dst_mac: [u8; 6], packet: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + packet.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(packet);
    f
}

/// An Ethernet frame carrying IPv4/UDP from `src` to `dst:dport`, addressed
/// to `dst`'s k8s-ovs MAC (so the victim's kernel takes it).
pub fn udp_frame(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    ether(mac_for(src), mac_for(dst), &udp(src, dst, sport, dport, payload))
}

/// The IPv4 packet of an Ethernet `frame` (its padding cut off by the IP
/// total length), if it carries one.
pub fn ipv4_of(frame: &[u8]) -> Option<&[u8]> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    frame.get(14..14 + total)
}

/// The UDP payload of a VXLAN datagram (RFC 7348): the 8-byte header with
/// the I flag and `vni`, then the inner frame.
pub fn vxlan_payload(vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut v = vec![0x08, 0, 0, 0];
    v.extend_from_slice(&((vni & 0x00ff_ffff) << 8).to_be_bytes());
    v.extend_from_slice(inner);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_known_header() {
        // RFC 1071's example header (checksum field zeroed) sums to 0xb861.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0, 0, 0xc0, 0xa8, 0x00, 0x01, 0xc0,
            0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_checksum(&h), 0xb861);
        let mut with = h;
        with[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(ipv4_checksum(&with), 0);
    }

    #[test]
    fn vxlan_datagram_layout() {
        let inner = udp_frame(Ipv4Addr::new(172, 11, 0, 2), Ipv4Addr::new(172, 11, 4, 3), 4000, 5353, b"x");
        assert_eq!(inner.len(), 14 + 20 + 8 + 1);
        assert_eq!(&inner[0..6], &[0x0a, 0x58, 172, 11, 4, 3]);
        assert_eq!(ipv4_checksum(&inner[14..34]), 0, "header checksum verifies");
        let v = vxlan_payload(0xc8, &inner);
        assert_eq!(&v[..8], &[0x08, 0, 0, 0, 0, 0, 0xc8, 0]);
        assert_eq!(&v[8..], &inner[..]);
    }

    /// Every checksum of a built packet verifies: a receiver's stack (and
    /// conntrack) would drop it otherwise, and a test would pass for the
    /// wrong reason.
    #[test]
    fn built_packets_carry_valid_checksums() {
        let (a, b) = (Ipv4Addr::new(172, 11, 0, 2), Ipv4Addr::new(172, 11, 4, 3));
        let seg = tcp(a, b, 40100, 80, 7, 9, tcp_flags::SYN | tcp_flags::ACK, b"hi");
        assert_eq!(ipv4_checksum(&seg[..20]), 0);
        assert_eq!(l4_checksum(a, b, PROTO_TCP, &seg[20..]), 0);
        assert_eq!(seg[33], tcp_flags::SYN | tcp_flags::ACK);
        let dgram = udp(b, a, 53, 40200, b"answer");
        assert_eq!(l4_checksum(b, a, PROTO_UDP, &dgram[20..]), 0);
        let err = icmp_error(b, a, 3, 3, &seg);
        assert_eq!(ipv4_checksum(&err[20..]), 0, "ICMP checksum");
        assert_eq!(&err[28..], &seg[..40], "the quoted header and the whole TCP header");
        let frame = ether(mac_for(b), mac_for(a), &err);
        let mut padded = frame.clone();
        padded.extend_from_slice(&[0; 6]);
        assert_eq!(ipv4_of(&padded), Some(&err[..]));
    }
}
