//! OXM / NXM match fields: the `ofp_match` of FLOW_MOD and flow stats, and
//! the field headers that set_field, move and output_reg name.
//!
//! A header is `class (16) | field (7) | hasmask (1) | length (8)`. Standard
//! fields use class 0x8000 (OXM_OF); registers and tunnel addresses exist only
//! as Nicira classes 0x0000 (NXM_OF) / 0x0001 (NXM_NX). We encode the OXM form
//! when there is one (that is what OVS returns in OpenFlow 1.5) and decode both.

use std::net::Ipv4Addr;

use super::wire::{be_uint, pad_to_8, patch_u16, put_u16, put_u32, put_uint, Reader};
use super::CodecError;
use crate::flow::{
    Field, Ipv4Prefix, Mac, Masked, Match, Reg, ETH_TYPE_ARP, ETH_TYPE_IP, IP_PROTO_SCTP, IP_PROTO_TCP,
    IP_PROTO_UDP,
};

pub const OXM_OF: u16 = 0x8000;
pub const NXM_OF: u16 = 0x0000;
pub const NXM_NX: u16 = 0x0001;
/// OpenFlow 1.5 packet registers: 64-bit `xregN` = `reg(2N) << 32 | reg(2N+1)`.
/// OVS uses them for registers in OpenFlow 1.5 replies.
pub const OXM_PKT_REGS: u16 = 0x8001;
pub const OXM_EXPERIMENTER: u16 = 0xffff;
const OFPMT_OXM: u16 = 1;

pub const fn header(class: u16, field: u8, hasmask: bool, len: u8) -> u32 {
    ((class as u32) << 16) | ((field as u32) << 9) | ((hasmask as u32) << 8) | len as u32
}

// Standard OXM field numbers (OpenFlow 1.5 section 7.2.3.7).
const OF_IN_PORT: u8 = 0;
const OF_ETH_DST: u8 = 3;
const OF_ETH_SRC: u8 = 4;
const OF_ETH_TYPE: u8 = 5;
const OF_VLAN_VID: u8 = 6;
const OF_IP_PROTO: u8 = 10;
const OF_IPV4_SRC: u8 = 11;
const OF_IPV4_DST: u8 = 12;
const OF_TCP_DST: u8 = 14;
const OF_UDP_DST: u8 = 16;
const OF_SCTP_DST: u8 = 18;
const OF_ARP_OP: u8 = 21;
const OF_ARP_SPA: u8 = 22;
const OF_ARP_TPA: u8 = 23;
const OF_ARP_SHA: u8 = 24;
const OF_ARP_THA: u8 = 25;
const OF_TUNNEL_ID: u8 = 38;
// Nicira field numbers (nicira-ext.h / meta-flow.h).
const NX_TUN_ID: u8 = 16;
const NX_ARP_SHA: u8 = 17;
const NX_ARP_THA: u8 = 18;
const NX_TUN_IPV4_SRC: u8 = 31;
const NX_TUN_IPV4_DST: u8 = 32;
const NX_IP_FRAG: u8 = 26;
/// `nw_frag` bit: the packet is a fragment.
const FRAG_ANY: u64 = 0x1;
const NX_CT_STATE: u8 = 105;
const NX_CT_MARK: u8 = 107;
const NX_CT_NW_SRC: u8 = 120;
const NX_CT_NW_DST: u8 = 121;
const NX_CONJ_ID: u8 = 37;
const NXOF_IN_PORT: u8 = 0;
const NXOF_ETH_DST: u8 = 1;
const NXOF_ETH_SRC: u8 = 2;
const NXOF_ETH_TYPE: u8 = 3;
const NXOF_VLAN_TCI: u8 = 4;
const NXOF_IP_PROTO: u8 = 6;
const NXOF_IP_SRC: u8 = 7;
const NXOF_IP_DST: u8 = 8;
const NXOF_TCP_DST: u8 = 10;
const NXOF_UDP_DST: u8 = 12;
const NXOF_ARP_OP: u8 = 15;
const NXOF_ARP_SPA: u8 = 16;
const NXOF_ARP_TPA: u8 = 17;

fn field_bytes(f: Field) -> u8 {
    (f.width() / 8) as u8
}

/// The (class, field number) a [`Field`] is encoded with: OXM if it has one.
fn field_id(f: Field) -> (u16, u8) {
    match f {
        Field::Reg(r) => (NXM_NX, r.index() as u8),
        Field::TunId => (OXM_OF, OF_TUNNEL_ID),
        Field::TunSrc => (NXM_NX, NX_TUN_IPV4_SRC),
        Field::TunDst => (NXM_NX, NX_TUN_IPV4_DST),
        Field::EthSrc => (OXM_OF, OF_ETH_SRC),
        Field::EthDst => (OXM_OF, OF_ETH_DST),
        Field::IpSrc => (OXM_OF, OF_IPV4_SRC),
        Field::IpDst => (OXM_OF, OF_IPV4_DST),
        Field::ArpOp => (OXM_OF, OF_ARP_OP),
        Field::ArpSpa => (OXM_OF, OF_ARP_SPA),
        Field::ArpTpa => (OXM_OF, OF_ARP_TPA),
        Field::ArpSha => (OXM_OF, OF_ARP_SHA),
        Field::ArpTha => (OXM_OF, OF_ARP_THA),
        Field::CtMark => (NXM_NX, NX_CT_MARK),
        Field::CtNwSrc => (NXM_NX, NX_CT_NW_SRC),
        Field::CtNwDst => (NXM_NX, NX_CT_NW_DST),
    }
}

/// The Nicira (NXM) id of a field, as move and output_reg conventionally name it.
fn nxm_id(f: Field) -> (u16, u8) {
    match f {
        Field::TunId => (NXM_NX, NX_TUN_ID),
        Field::EthSrc => (NXM_OF, NXOF_ETH_SRC),
        Field::EthDst => (NXM_OF, NXOF_ETH_DST),
        Field::IpSrc => (NXM_OF, NXOF_IP_SRC),
        Field::IpDst => (NXM_OF, NXOF_IP_DST),
        Field::ArpOp => (NXM_OF, NXOF_ARP_OP),
        Field::ArpSpa => (NXM_OF, NXOF_ARP_SPA),
        Field::ArpTpa => (NXM_OF, NXOF_ARP_TPA),
        Field::ArpSha => (NXM_NX, NX_ARP_SHA),
        Field::ArpTha => (NXM_NX, NX_ARP_THA),
        other => field_id(other),
    }
}

/// The 4-byte NXM header of a field (for NXAST_REG_MOVE / OUTPUT_REG).
pub fn nxm_header(f: Field) -> u32 {
    let (c, n) = nxm_id(f);
    header(c, n, false, field_bytes(f))
}

/// A bit range given against a header: for a 64-bit packet register the
/// range must lie within one of its two 32-bit registers.
pub fn range_from_header(h: u32, ofs: u16, nbits: u16) -> Result<(Field, u16), CodecError> {
    let class = (h >> 16) as u16;
    let num = ((h >> 9) & 0x7f) as u8;
    if class == OXM_PKT_REGS && num < 4 {
        let end = u32::from(ofs) + u32::from(nbits);
        return if ofs >= 32 && end <= 64 {
            Ok((Field::Reg(Reg::new(num * 2).unwrap_or(Reg::R0)), ofs - 32))
        } else if end <= 32 {
            Ok((Field::Reg(Reg::new(num * 2 + 1).unwrap_or(Reg::R0)), ofs))
        } else {
            Err(CodecError::Unsupported(format!("bit range {ofs}+{nbits} spans two registers of xreg{num}")))
        };
    }
    Ok((field_from_header(h)?, ofs))
}

/// Which [`Field`] a header names (either encoding; mask bit ignored).
pub fn field_from_header(h: u32) -> Result<Field, CodecError> {
    let class = (h >> 16) as u16;
    let num = ((h >> 9) & 0x7f) as u8;
    let f = match (class, num) {
        (NXM_NX, n @ 0..=7) => Reg::new(n).map(Field::Reg),
        (NXM_NX, NX_TUN_ID) | (OXM_OF, OF_TUNNEL_ID) => Some(Field::TunId),
        (NXM_NX, NX_TUN_IPV4_SRC) => Some(Field::TunSrc),
        (NXM_NX, NX_TUN_IPV4_DST) => Some(Field::TunDst),
        (NXM_OF, NXOF_ETH_SRC) | (OXM_OF, OF_ETH_SRC) => Some(Field::EthSrc),
        (NXM_OF, NXOF_ETH_DST) | (OXM_OF, OF_ETH_DST) => Some(Field::EthDst),
        (NXM_OF, NXOF_IP_SRC) | (OXM_OF, OF_IPV4_SRC) => Some(Field::IpSrc),
        (NXM_OF, NXOF_IP_DST) | (OXM_OF, OF_IPV4_DST) => Some(Field::IpDst),
        (NXM_OF, NXOF_ARP_OP) | (OXM_OF, OF_ARP_OP) => Some(Field::ArpOp),
        (NXM_OF, NXOF_ARP_SPA) | (OXM_OF, OF_ARP_SPA) => Some(Field::ArpSpa),
        (NXM_OF, NXOF_ARP_TPA) | (OXM_OF, OF_ARP_TPA) => Some(Field::ArpTpa),
        (NXM_NX, NX_ARP_SHA) | (OXM_OF, OF_ARP_SHA) => Some(Field::ArpSha),
        (NXM_NX, NX_ARP_THA) | (OXM_OF, OF_ARP_THA) => Some(Field::ArpTha),
        (NXM_NX, NX_CT_MARK) => Some(Field::CtMark),
        (NXM_NX, NX_CT_NW_SRC) => Some(Field::CtNwSrc),
        (NXM_NX, NX_CT_NW_DST) => Some(Field::CtNwDst),
        _ => None,
    };
    f.ok_or_else(|| CodecError::Unsupported(format!("field header {h:#010x}")))
}

/// Reads a field header (4 bytes, or 8 for the experimenter class).
pub fn read_header(r: &mut Reader<'_>) -> Result<u32, CodecError> {
    let h = r.u32()?;
    if (h >> 16) as u16 == OXM_EXPERIMENTER {
        let exp = r.u32()?;
        return Err(CodecError::Unsupported(format!(
            "experimenter OXM field {h:#010x} (experimenter {exp:#x})"
        )));
    }
    Ok(h)
}

/// Writes one OXM TLV: header, value, and mask if it is not all ones.
pub fn put_tlv(buf: &mut Vec<u8>, class: u16, num: u8, nbytes: u8, value: u64, mask: u64) {
    let full = if nbytes >= 8 { u64::MAX } else { (1u64 << (u32::from(nbytes) * 8)) - 1 };
    let masked = mask & full != full;
    let len = if masked { nbytes * 2 } else { nbytes };
    put_u32(buf, header(class, num, masked, len));
    put_uint(buf, value & mask, usize::from(nbytes));
    if masked {
        put_uint(buf, mask, usize::from(nbytes));
    }
}

/// Writes a set_field style TLV for a field.
pub fn put_field(buf: &mut Vec<u8>, f: Field, value: u64, mask: u64) {
    let (c, n) = field_id(f);
    put_tlv(buf, c, n, field_bytes(f), value, mask);
}

/// One decoded TLV: header, value and mask (all ones when unmasked).
pub struct Tlv {
    pub class: u16,
    pub num: u8,
    pub value: u64,
    pub mask: u64,
    pub nbytes: usize,
}

pub fn read_tlv(r: &mut Reader<'_>) -> Result<Tlv, CodecError> {
    let h = read_header(r)?;
    let hasmask = h & 0x100 != 0;
    let len = (h & 0xff) as usize;
    let nbytes = if hasmask { len / 2 } else { len };
    if nbytes == 0 || nbytes > 8 || (hasmask && !len.is_multiple_of(2)) {
        return Err(CodecError::Unsupported(format!("OXM field {h:#010x} of length {len}")));
    }
    let value = be_uint(r.bytes(nbytes)?);
    let full = if nbytes == 8 { u64::MAX } else { (1u64 << (nbytes * 8)) - 1 };
    let mask = if hasmask { be_uint(r.bytes(nbytes)?) } else { full };
    Ok(Tlv { class: (h >> 16) as u16, num: ((h >> 9) & 0x7f) as u8, value, mask, nbytes })
}

fn ip_prefix(t: &Tlv) -> Result<Ipv4Prefix, CodecError> {
    Ipv4Prefix::from_mask(t.value as u32, t.mask as u32)
        .ok_or_else(|| CodecError::Unsupported(format!("IPv4 mask {:#x} is not a prefix", t.mask)))
}

fn exact(t: &Tlv, what: &str) -> Result<u64, CodecError> {
    let full = if t.nbytes == 8 { u64::MAX } else { (1u64 << (t.nbytes * 8)) - 1 };
    if t.mask != full {
        return Err(CodecError::Unsupported(format!("masked {what} match")));
    }
    Ok(t.value)
}

/// Appends an `ofp_match` (OXM type, padded to 8 bytes).
pub fn encode_match(buf: &mut Vec<u8>, m: &Match) -> Result<(), CodecError> {
    let start = buf.len();
    put_u16(buf, OFPMT_OXM);
    put_u16(buf, 0); // length, patched below
    let all = u64::MAX;
    if let Some(p) = m.in_port {
        put_tlv(buf, OXM_OF, OF_IN_PORT, 4, p.into(), all);
    }
    if let Some(mac) = m.dl_dst {
        put_tlv(buf, OXM_OF, OF_ETH_DST, 6, mac.to_u64(), all);
    }
    if let Some(mac) = m.dl_src {
        put_tlv(buf, OXM_OF, OF_ETH_SRC, 6, mac.to_u64(), all);
    }
    if m.untagged {
        // OFPVID_NONE, exact: no 802.1Q header.
        put_tlv(buf, OXM_OF, OF_VLAN_VID, 2, 0, all);
    }
    if let Some(t) = m.eth_type {
        put_tlv(buf, OXM_OF, OF_ETH_TYPE, 2, t.into(), all);
    }
    let is_ip = m.eth_type == Some(ETH_TYPE_IP);
    let is_arp = m.eth_type == Some(ETH_TYPE_ARP);
    if let Some(p) = m.ip_proto {
        if !is_ip {
            return Err(CodecError::Invalid("ip_proto without eth_type ip".into()));
        }
        put_tlv(buf, OXM_OF, OF_IP_PROTO, 1, p.into(), all);
    }
    for (num, p) in [(OF_IPV4_SRC, m.nw_src), (OF_IPV4_DST, m.nw_dst)] {
        if let Some(p) = p {
            if !is_ip {
                return Err(CodecError::Invalid("nw_src/nw_dst without eth_type ip".into()));
            }
            put_tlv(buf, OXM_OF, num, 4, u32::from(p.addr()).into(), p.mask().into());
        }
    }
    if m.fragment {
        if !is_ip {
            return Err(CodecError::Invalid("nw_frag without eth_type ip".into()));
        }
        put_tlv(buf, NXM_NX, NX_IP_FRAG, 1, FRAG_ANY, FRAG_ANY);
    }
    if let Some(port) = m.tp_dst {
        let num = match m.ip_proto {
            Some(IP_PROTO_TCP) => OF_TCP_DST,
            Some(IP_PROTO_UDP) => OF_UDP_DST,
            Some(IP_PROTO_SCTP) => OF_SCTP_DST,
            _ => return Err(CodecError::Invalid("tp_dst needs tcp, udp or sctp".into())),
        };
        put_tlv(buf, OXM_OF, num, 2, port.value.into(), port.mask.into());
    }
    if m.arp_op.is_some() || m.arp_spa.is_some() || m.arp_tpa.is_some() || m.arp_sha.is_some() {
        if !is_arp {
            return Err(CodecError::Invalid("arp fields without eth_type arp".into()));
        }
        if let Some(op) = m.arp_op {
            put_tlv(buf, OXM_OF, OF_ARP_OP, 2, op.into(), all);
        }
        for (num, p) in [(OF_ARP_SPA, m.arp_spa), (OF_ARP_TPA, m.arp_tpa)] {
            if let Some(p) = p {
                put_tlv(buf, OXM_OF, num, 4, u32::from(p.addr()).into(), p.mask().into());
            }
        }
        if let Some(mac) = m.arp_sha {
            put_tlv(buf, OXM_OF, OF_ARP_SHA, 6, mac.to_u64(), all);
        }
    }
    if let Some(t) = m.tun_id {
        put_tlv(buf, OXM_OF, OF_TUNNEL_ID, 8, t.value, t.mask);
    }
    if let Some(a) = m.tun_src {
        put_tlv(buf, NXM_NX, NX_TUN_IPV4_SRC, 4, u32::from(a).into(), all);
    }
    if let Some(a) = m.tun_dst {
        put_tlv(buf, NXM_NX, NX_TUN_IPV4_DST, 4, u32::from(a).into(), all);
    }
    for (i, r) in m.regs.iter().enumerate() {
        if let Some(r) = r {
            put_tlv(buf, NXM_NX, i as u8, 4, r.value.into(), r.mask.into());
        }
    }
    if let Some(c) = m.ct_state {
        put_tlv(buf, NXM_NX, NX_CT_STATE, 4, c.value.into(), c.mask.into());
    }
    if let Some(c) = m.ct_mark {
        put_tlv(buf, NXM_NX, NX_CT_MARK, 4, c.value.into(), c.mask.into());
    }
    if let Some(id) = m.conj_id {
        put_tlv(buf, NXM_NX, NX_CONJ_ID, 4, id.into(), all);
    }
    let len = buf.len() - start;
    let len16 = u16::try_from(len).map_err(|_| CodecError::Invalid("match too long".into()))?;
    patch_u16(buf, start + 2, len16);
    pad_to_8(buf, start);
    Ok(())
}

/// Reads an `ofp_match` (and its padding) into the model.
pub fn decode_match(r: &mut Reader<'_>) -> Result<Match, CodecError> {
    let typ = r.u16()?;
    let len = usize::from(r.u16()?);
    if typ != OFPMT_OXM {
        return Err(CodecError::Unsupported(format!("match type {typ}")));
    }
    if len < 4 {
        return Err(CodecError::Malformed(format!("match length {len}")));
    }
    let mut body = r.sub(len - 4, "match fields")?;
    r.skip((8 - len % 8) % 8)?;
    let mut m = Match::new();
    let mut tp_dst = None;
    while !body.is_empty() {
        let t = read_tlv(&mut body)?;
        match (t.class, t.num) {
            (OXM_OF, OF_IN_PORT) | (NXM_OF, NXOF_IN_PORT) => m.in_port = Some(exact(&t, "in_port")? as u32),
            (OXM_OF, OF_ETH_DST) | (NXM_OF, NXOF_ETH_DST) => {
                m.dl_dst = Some(Mac::from_u64(exact(&t, "dl_dst")?))
            }
            (OXM_OF, OF_ETH_SRC) | (NXM_OF, NXOF_ETH_SRC) => {
                m.dl_src = Some(Mac::from_u64(exact(&t, "dl_src")?))
            }
            (OXM_OF, OF_ETH_TYPE) | (NXM_OF, NXOF_ETH_TYPE) => {
                m.eth_type = Some(exact(&t, "eth_type")? as u16)
            }
            // "no tag": OFPVID_NONE exact, or NXM's vlan_tci=0/0x1fff.
            (OXM_OF, OF_VLAN_VID) if t.value == 0 && (t.mask == 0xffff || t.mask == 0x1fff) => {
                m.untagged = true
            }
            (NXM_OF, NXOF_VLAN_TCI) if t.value == 0 && t.mask & 0x1fff == 0x1fff => m.untagged = true,
            (OXM_OF, OF_IP_PROTO) | (NXM_OF, NXOF_IP_PROTO) => {
                m.ip_proto = Some(exact(&t, "ip_proto")? as u8)
            }
            (OXM_OF, OF_IPV4_SRC) | (NXM_OF, NXOF_IP_SRC) => m.nw_src = Some(ip_prefix(&t)?),
            (OXM_OF, OF_IPV4_DST) | (NXM_OF, NXOF_IP_DST) => m.nw_dst = Some(ip_prefix(&t)?),
            (OXM_OF, OF_TCP_DST)
            | (NXM_OF, NXOF_TCP_DST)
            | (OXM_OF, OF_UDP_DST)
            | (NXM_OF, NXOF_UDP_DST)
            | (OXM_OF, OF_SCTP_DST)
                if t.nbytes == 2 =>
            {
                tp_dst = Some(Masked::<u16>::new(t.value as u16, t.mask as u16))
            }
            (NXM_NX, NX_CONJ_ID) => m.conj_id = Some(exact(&t, "conj_id")? as u32),
            (OXM_OF, OF_ARP_OP) | (NXM_OF, NXOF_ARP_OP) => m.arp_op = Some(exact(&t, "arp_op")? as u16),
            (OXM_OF, OF_ARP_SPA) | (NXM_OF, NXOF_ARP_SPA) => m.arp_spa = Some(ip_prefix(&t)?),
            (OXM_OF, OF_ARP_TPA) | (NXM_OF, NXOF_ARP_TPA) => m.arp_tpa = Some(ip_prefix(&t)?),
            (OXM_OF, OF_ARP_SHA) | (NXM_NX, NX_ARP_SHA) => {
                m.arp_sha = Some(Mac::from_u64(exact(&t, "arp_sha")?))
            }
            (OXM_OF, OF_TUNNEL_ID) | (NXM_NX, NX_TUN_ID) => {
                m.tun_id = Some(Masked::<u64>::new(t.value, t.mask))
            }
            (NXM_NX, NX_TUN_IPV4_SRC) => m.tun_src = Some(Ipv4Addr::from(exact(&t, "tun_src")? as u32)),
            (NXM_NX, NX_TUN_IPV4_DST) => m.tun_dst = Some(Ipv4Addr::from(exact(&t, "tun_dst")? as u32)),
            (NXM_NX, NX_IP_FRAG) if t.value == FRAG_ANY && t.mask == FRAG_ANY => m.fragment = true,
            (NXM_NX, NX_CT_STATE) if t.nbytes == 4 => {
                m.ct_state = Some(Masked::<u32>::new(t.value as u32, t.mask as u32))
            }
            (NXM_NX, NX_CT_MARK) if t.nbytes == 4 => {
                m.ct_mark = Some(Masked::<u32>::new(t.value as u32, t.mask as u32))
            }
            (NXM_NX, n @ 0..=7) if t.nbytes == 4 => {
                m.regs[usize::from(n)] = Some(Masked::<u32>::new(t.value as u32, t.mask as u32))
            }
            (OXM_PKT_REGS, n @ 0..=3) if t.nbytes == 8 => {
                let (hi, lo) = (usize::from(n) * 2, usize::from(n) * 2 + 1);
                if t.mask >> 32 != 0 {
                    m.regs[hi] = Some(Masked::<u32>::new((t.value >> 32) as u32, (t.mask >> 32) as u32));
                }
                if t.mask as u32 != 0 {
                    m.regs[lo] = Some(Masked::<u32>::new(t.value as u32, t.mask as u32));
                }
            }
            (c, n) => {
                return Err(CodecError::Unsupported(format!(
                    "match field class {c:#x} field {n} (value {:#x}, mask {:#x})",
                    t.value, t.mask
                )))
            }
        }
    }
    m.tp_dst = tp_dst;
    Ok(m)
}
