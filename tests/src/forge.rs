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

/// An Ethernet frame carrying IPv4/UDP from `src` to `dst:dport`, addressed
/// to `dst`'s k8s-ovs MAC (so the victim's kernel takes it).
pub fn udp_frame(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(42 + payload.len());
    f.extend_from_slice(&mac_for(dst));
    f.extend_from_slice(&mac_for(src));
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let csum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    // UDP checksum 0: "none", valid for IPv4.
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
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
}
