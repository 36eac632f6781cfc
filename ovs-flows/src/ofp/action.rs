//! Instructions and actions: APPLY_ACTIONS + GOTO_TABLE, standard OpenFlow 1.5
//! actions (output, set_field, copy_field, dec_nw_ttl) and the Nicira ones
//! (reg_move, reg_load, resubmit, output_reg).

use super::oxm::{self, field_from_header, nxm_header, put_field, range_from_header, read_header, read_tlv};
use super::wire::{pad_to_8, patch_u16, put_u16, put_u32, Reader};
use super::CodecError;
use crate::flow::{port, Action, Conntrack, Field, FieldRange};

const OFPIT_GOTO_TABLE: u16 = 1;
const OFPIT_APPLY_ACTIONS: u16 = 4;

const OFPAT_OUTPUT: u16 = 0;
const OFPAT_DEC_NW_TTL: u16 = 24;
const OFPAT_SET_FIELD: u16 = 25;
const OFPAT_COPY_FIELD: u16 = 28;
const OFPAT_METER: u16 = 29;
const OFPAT_EXPERIMENTER: u16 = 0xffff;

pub const NX_VENDOR_ID: u32 = 0x0000_2320;
const NXAST_RESUBMIT: u16 = 1;
const NXAST_REG_MOVE: u16 = 6;
const NXAST_REG_LOAD: u16 = 7;
const NXAST_RESUBMIT_TABLE: u16 = 14;
const NXAST_OUTPUT_REG: u16 = 15;
const NXAST_DEC_TTL: u16 = 18;
const NXAST_OUTPUT_REG2: u16 = 32;
const NXAST_REG_LOAD2: u16 = 33;
const NXAST_CONJUNCTION: u16 = 34;
const NXAST_CT: u16 = 35;
/// `nx_action_conntrack.flags`: commit the connection.
const NX_CT_F_COMMIT: u16 = 1;
/// `nx_action_conntrack.recirc_table` when the packet is not recirculated.
const NX_CT_RECIRC_NONE: u8 = 0xff;
/// OpenFlow 1.0 `OFPP_IN_PORT`, which resubmit uses for "the current in_port".
const OFPP10_IN_PORT: u16 = 0xfff8;

/// `ofs_nbits` of Nicira actions: offset << 6 | (nbits - 1).
fn ofs_nbits(r: FieldRange) -> u16 {
    (r.ofs << 6) | (r.nbits - 1)
}

fn range(field: Field, ofs: u16, nbits: u16) -> Result<FieldRange, CodecError> {
    if nbits == 0 || u32::from(ofs) + u32::from(nbits) > u32::from(field.width()) {
        return Err(CodecError::Malformed(format!("bit range {ofs}+{nbits} outside {}", field.nxm_name())));
    }
    Ok(FieldRange { field, ofs, nbits })
}

fn range_from_ofs_nbits(field: Field, v: u16) -> Result<FieldRange, CodecError> {
    range(field, v >> 6, (v & 0x3f) + 1)
}

/// Appends the instructions for `actions` (apply-actions, then goto).
pub fn encode_instructions(buf: &mut Vec<u8>, actions: &[Action]) -> Result<(), CodecError> {
    let goto = actions.iter().find_map(|a| if let Action::GotoTable(t) = a { Some(*t) } else { None });
    let apply: Vec<&Action> =
        actions.iter().filter(|a| !matches!(a, Action::GotoTable(_) | Action::Drop)).collect();
    if !apply.is_empty() {
        let start = buf.len();
        put_u16(buf, OFPIT_APPLY_ACTIONS);
        put_u16(buf, 0);
        put_u32(buf, 0);
        for a in apply {
            encode_action(buf, a)?;
        }
        let len =
            u16::try_from(buf.len() - start).map_err(|_| CodecError::Invalid("too many actions".into()))?;
        patch_u16(buf, start + 2, len);
    }
    if let Some(t) = goto {
        put_u16(buf, OFPIT_GOTO_TABLE);
        put_u16(buf, 8);
        buf.extend_from_slice(&[t, 0, 0, 0]);
    }
    Ok(())
}

fn nx_start(buf: &mut Vec<u8>, subtype: u16) -> usize {
    let start = buf.len();
    put_u16(buf, OFPAT_EXPERIMENTER);
    put_u16(buf, 0);
    put_u32(buf, NX_VENDOR_ID);
    put_u16(buf, subtype);
    start
}

fn finish(buf: &mut Vec<u8>, start: usize) {
    pad_to_8(buf, start);
    let len = (buf.len() - start) as u16;
    patch_u16(buf, start + 2, len);
}

fn encode_action(buf: &mut Vec<u8>, a: &Action) -> Result<(), CodecError> {
    let start = buf.len();
    match a {
        Action::Output(p) => {
            put_u16(buf, OFPAT_OUTPUT);
            put_u16(buf, 16);
            put_u32(buf, *p);
            // max_len matters only for the controller port: send whole packets.
            put_u16(buf, if *p == port::CONTROLLER { 0xffff } else { 0 });
            buf.extend_from_slice(&[0; 6]);
        }
        Action::InPort => return encode_action(buf, &Action::Output(port::IN_PORT)),
        Action::OutputReg(r) => {
            nx_start(buf, NXAST_OUTPUT_REG);
            put_u16(buf, ofs_nbits(*r));
            put_u32(buf, nxm_header(r.field));
            put_u16(buf, 0);
            finish(buf, start);
        }
        Action::Drop | Action::GotoTable(_) => {}
        Action::SetField { dst, value } => {
            if u32::from(dst.ofs) + u32::from(dst.nbits) > u32::from(dst.field.width()) || dst.nbits == 0 {
                return Err(CodecError::Invalid(format!("set_field range outside {}", dst.field.nxm_name())));
            }
            put_u16(buf, OFPAT_SET_FIELD);
            put_u16(buf, 0);
            put_field(buf, dst.field, value << dst.ofs, dst.mask());
            finish(buf, start);
        }
        Action::Move { src, dst } => {
            if src.nbits != dst.nbits {
                return Err(CodecError::Invalid(format!("move {src}->{dst}: bit counts differ")));
            }
            // OpenFlow 1.5's copy_field: OVS refuses NXAST_REG_MOVE in 1.5.
            put_u16(buf, OFPAT_COPY_FIELD);
            put_u16(buf, 0);
            put_u16(buf, src.nbits);
            put_u16(buf, src.ofs);
            put_u16(buf, dst.ofs);
            put_u16(buf, 0);
            put_u32(buf, nxm_header(src.field));
            put_u32(buf, nxm_header(dst.field));
            finish(buf, start);
        }
        Action::Resubmit(t) => {
            nx_start(buf, NXAST_RESUBMIT_TABLE);
            put_u16(buf, OFPP10_IN_PORT);
            buf.extend_from_slice(&[*t, 0, 0, 0]);
            finish(buf, start);
        }
        Action::DecTtl => {
            put_u16(buf, OFPAT_DEC_NW_TTL);
            put_u16(buf, 8);
            put_u32(buf, 0);
        }
        Action::Meter(id) => {
            put_u16(buf, OFPAT_METER);
            put_u16(buf, 8);
            put_u32(buf, *id);
        }
        // nx_action_conjunction: clause (0-based on the wire), n_clauses, id.
        Action::Conjunction { id, clause, n_clauses } => {
            if *clause == 0 || clause > n_clauses || *n_clauses < 2 || *n_clauses > 64 {
                return Err(CodecError::Invalid(format!("conjunction({id},{clause}/{n_clauses})")));
            }
            nx_start(buf, NXAST_CONJUNCTION);
            buf.extend_from_slice(&[clause - 1, *n_clauses]);
            put_u32(buf, *id);
            finish(buf, start);
        }
        // nx_action_conntrack: flags, zone_src (0: immediate zone), zone,
        // recirc_table, pad[3], alg, then the nested actions.
        Action::Ct(ct) => {
            nx_start(buf, NXAST_CT);
            put_u16(buf, if ct.commit { NX_CT_F_COMMIT } else { 0 });
            put_u32(buf, 0);
            put_u16(buf, ct.zone);
            buf.extend_from_slice(&[ct.table.unwrap_or(NX_CT_RECIRC_NONE), 0, 0, 0]);
            put_u16(buf, 0);
            for a in &ct.exec {
                if !matches!(a, Action::SetField { .. }) {
                    return Err(CodecError::Invalid(format!("ct exec takes only set_field, not {a}")));
                }
                encode_action(buf, a)?;
            }
            let len = u16::try_from(buf.len() - start)
                .map_err(|_| CodecError::Invalid("ct action too long".into()))?;
            patch_u16(buf, start + 2, len);
        }
    }
    Ok(())
}

/// Decodes the instructions of a flow into actions (goto last).
pub fn decode_instructions(r: &mut Reader<'_>) -> Result<Vec<Action>, CodecError> {
    let mut out = Vec::new();
    let mut goto = None;
    while !r.is_empty() {
        let typ = r.u16()?;
        let len = usize::from(r.u16()?);
        if len < 8 || len % 8 != 0 {
            return Err(CodecError::Malformed(format!("instruction length {len}")));
        }
        let mut body = r.sub(len - 4, "instruction")?;
        match typ {
            OFPIT_GOTO_TABLE => goto = Some(body.u8()?),
            OFPIT_APPLY_ACTIONS => {
                body.skip(4)?;
                while !body.is_empty() {
                    decode_action(&mut body, &mut out)?;
                }
            }
            t => return Err(CodecError::Unsupported(format!("instruction type {t}"))),
        }
    }
    if let Some(t) = goto {
        out.push(Action::GotoTable(t));
    }
    Ok(out)
}

fn decode_action(r: &mut Reader<'_>, out: &mut Vec<Action>) -> Result<(), CodecError> {
    let typ = r.u16()?;
    let len = usize::from(r.u16()?);
    if len < 8 || len % 8 != 0 {
        return Err(CodecError::Malformed(format!("action length {len}")));
    }
    let mut b = r.sub(len - 4, "action")?;
    let a = match typ {
        OFPAT_OUTPUT => match b.u32()? {
            port::IN_PORT => Action::InPort,
            p => Action::Output(p),
        },
        OFPAT_DEC_NW_TTL => Action::DecTtl,
        OFPAT_METER => Action::Meter(b.u32()?),
        OFPAT_SET_FIELD => set_field_from_tlv(&mut b)?,
        OFPAT_COPY_FIELD => {
            let nbits = b.u16()?;
            let src_ofs = b.u16()?;
            let dst_ofs = b.u16()?;
            b.skip(2)?;
            let (src, src_ofs) = range_from_header(read_header(&mut b)?, src_ofs, nbits)?;
            let (dst, dst_ofs) = range_from_header(read_header(&mut b)?, dst_ofs, nbits)?;
            Action::Move { src: range(src, src_ofs, nbits)?, dst: range(dst, dst_ofs, nbits)? }
        }
        OFPAT_EXPERIMENTER => decode_nx_action(&mut b)?,
        t => return Err(CodecError::Unsupported(format!("action type {t}"))),
    };
    out.push(a);
    Ok(())
}

/// A set_field (or reg_load2) TLV: whole field, or a contiguous bit range.
fn set_field_from_tlv(b: &mut Reader<'_>) -> Result<Action, CodecError> {
    let mut t = read_tlv(b)?;
    let h = oxm::header(t.class, t.num, false, t.nbytes as u8);
    let field = if t.class == oxm::OXM_PKT_REGS && t.nbytes == 8 {
        // A packet register set: it must touch only one of its two registers.
        let high = t.mask as u32 == 0;
        if high {
            t.value >>= 32;
            t.mask >>= 32;
        } else if t.mask >> 32 != 0 {
            return Err(CodecError::Unsupported(format!("set_field of two registers (xreg{})", t.num)));
        }
        t.nbytes = 4;
        range_from_header(h, if high { 32 } else { 0 }, 1)?.0
    } else {
        field_from_header(h)?
    };
    if t.nbytes * 8 != usize::from(field.width()) {
        return Err(CodecError::Malformed(format!("set_field {} of {} bytes", field.nxm_name(), t.nbytes)));
    }
    if t.mask == 0 {
        return Err(CodecError::Malformed("set_field with an all-zero mask".into()));
    }
    let ofs = t.mask.trailing_zeros() as u16;
    let nbits = (t.mask >> ofs).trailing_ones() as u16;
    let dst = range(field, ofs, nbits)?;
    if dst.mask() != t.mask {
        return Err(CodecError::Unsupported(format!("set_field mask {:#x} is not contiguous", t.mask)));
    }
    Ok(Action::SetField { dst, value: (t.value & t.mask) >> ofs })
}

fn decode_nx_action(b: &mut Reader<'_>) -> Result<Action, CodecError> {
    let vendor = b.u32()?;
    if vendor != NX_VENDOR_ID {
        return Err(CodecError::Unsupported(format!("experimenter action of vendor {vendor:#x}")));
    }
    let subtype = b.u16()?;
    Ok(match subtype {
        NXAST_RESUBMIT_TABLE | NXAST_RESUBMIT => {
            let in_port = b.u16()?;
            let table = if subtype == NXAST_RESUBMIT { 0xff } else { b.u8()? };
            if in_port != OFPP10_IN_PORT || table == 0xff {
                return Err(CodecError::Unsupported(format!("resubmit({in_port},{table})")));
            }
            Action::Resubmit(table)
        }
        NXAST_REG_MOVE => {
            let nbits = b.u16()?;
            let src_ofs = b.u16()?;
            let dst_ofs = b.u16()?;
            let src = field_from_header(read_header(b)?)?;
            let dst = field_from_header(read_header(b)?)?;
            Action::Move { src: range(src, src_ofs, nbits)?, dst: range(dst, dst_ofs, nbits)? }
        }
        NXAST_REG_LOAD => {
            let on = b.u16()?;
            let field = field_from_header(read_header(b)?)?;
            let dst = range_from_ofs_nbits(field, on)?;
            let value = b.u64()?;
            if dst.nbits < 64 && value >> dst.nbits != 0 {
                return Err(CodecError::Malformed(format!("reg_load value {value:#x} wider than {dst}")));
            }
            Action::SetField { dst, value }
        }
        NXAST_REG_LOAD2 => set_field_from_tlv(b)?,
        NXAST_OUTPUT_REG => {
            let on = b.u16()?;
            let field = field_from_header(read_header(b)?)?;
            Action::OutputReg(range_from_ofs_nbits(field, on)?)
        }
        NXAST_OUTPUT_REG2 => {
            let on = b.u16()?;
            let _max_len = b.u16()?;
            let (field, ofs) = range_from_header(read_header(b)?, on >> 6, (on & 0x3f) + 1)?;
            Action::OutputReg(range(field, ofs, (on & 0x3f) + 1)?)
        }
        NXAST_DEC_TTL => Action::DecTtl,
        NXAST_CONJUNCTION => {
            let (clause, n_clauses) = (b.u8()?, b.u8()?);
            Action::Conjunction { id: b.u32()?, clause: clause.saturating_add(1), n_clauses }
        }
        NXAST_CT => {
            let flags = b.u16()?;
            let zone_src = b.u32()?;
            let zone = b.u16()?;
            let table = b.u8()?;
            b.skip(3)?;
            let alg = b.u16()?;
            if flags & !NX_CT_F_COMMIT != 0 || zone_src != 0 || alg != 0 {
                return Err(CodecError::Unsupported(format!(
                    "ct flags {flags:#x}, zone field {zone_src:#x}, alg {alg}"
                )));
            }
            let mut exec = Vec::new();
            while !b.is_empty() {
                decode_action(b, &mut exec)?;
            }
            let table = (table != NX_CT_RECIRC_NONE).then_some(table);
            Action::Ct(Box::new(Conntrack { commit: flags & NX_CT_F_COMMIT != 0, table, zone, exec }))
        }
        s => return Err(CodecError::Unsupported(format!("Nicira action subtype {s}"))),
    })
}

// A u64 writer is only needed by tests of reg_load decoding.
#[cfg(test)]
pub(crate) fn encode_reg_load(buf: &mut Vec<u8>, dst: FieldRange, value: u64) {
    use super::wire::put_u64;
    let start = nx_start(buf, NXAST_REG_LOAD);
    put_u16(buf, ofs_nbits(dst));
    put_u32(buf, nxm_header(dst.field));
    put_u64(buf, value);
    finish(buf, start);
}
