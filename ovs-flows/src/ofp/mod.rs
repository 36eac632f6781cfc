//! OpenFlow 1.5 codec: the messages k8s-ovs sends and the replies it reads.
//!
//! Encoders append to a caller-owned buffer, so a whole bundle is encoded
//! into one `Vec<u8>` and written with few syscalls. Decoders take one framed
//! message ([`frame_len`] splits a stream) and never panic on bad input.

mod action;
mod errors;
mod oxm;
mod wire;

use std::fmt;

pub use errors::{error_code_name, error_type_name};
use wire::{patch_u16, put_u16, put_u32, put_u64, Reader};

use crate::cookie::CookieFilter;
use crate::flow::{port, Action, Flow, Match};

pub const OFP_VERSION_1_3: u8 = 0x04;
pub const OFP_VERSION_1_5: u8 = 0x06;
pub const HEADER_LEN: usize = 8;

/// Message types (OpenFlow 1.3/1.5 numbering).
pub mod msg_type {
    pub const HELLO: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const ECHO_REQUEST: u8 = 2;
    pub const ECHO_REPLY: u8 = 3;
    pub const FEATURES_REQUEST: u8 = 5;
    pub const FEATURES_REPLY: u8 = 6;
    pub const FLOW_MOD: u8 = 14;
    pub const MULTIPART_REQUEST: u8 = 18;
    pub const MULTIPART_REPLY: u8 = 19;
    pub const BARRIER_REQUEST: u8 = 20;
    pub const BARRIER_REPLY: u8 = 21;
    pub const METER_MOD: u8 = 29;
    pub const BUNDLE_CONTROL: u8 = 33;
    pub const BUNDLE_ADD: u8 = 34;
}

const OFPMP_FLOW_DESC: u16 = 1;
const OFPMP_METER_CONFIG: u16 = 10;
/// `meter_id` of "every meter" in a meter config request.
const OFPM_ALL: u32 = 0xffff_ffff;
/// Meter flags: rates in kbit/s, a burst given, statistics kept.
const OFPMF_KBPS: u16 = 0x1;
const OFPMF_BURST: u16 = 0x4;
const OFPMF_STATS: u16 = 0x8;
const OFPMBT_DROP: u16 = 1;
const OFPMPF_MORE: u16 = 1;
const OFPHET_VERSIONBITMAP: u16 = 1;
const OFP_NO_BUFFER: u32 = 0xffff_ffff;
const OFPG_ANY: u32 = 0xffff_ffff;
pub const OFPTT_ALL: u8 = 0xff;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated { what: &'static str, need: usize, have: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("cannot encode: {0}")]
    Invalid(String),
}

/// Bundle control types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum BundleCtrlType {
    OpenRequest = 0,
    OpenReply = 1,
    CloseRequest = 2,
    CloseReply = 3,
    CommitRequest = 4,
    CommitReply = 5,
    DiscardRequest = 6,
    DiscardReply = 7,
}

impl BundleCtrlType {
    fn from_u16(v: u16) -> Option<BundleCtrlType> {
        use BundleCtrlType::*;
        [
            OpenRequest,
            OpenReply,
            CloseRequest,
            CloseReply,
            CommitRequest,
            CommitReply,
            DiscardRequest,
            DiscardReply,
        ]
        .into_iter()
        .find(|t| *t as u16 == v)
    }
}

pub const BUNDLE_ATOMIC: u16 = 1;
pub const BUNDLE_ORDERED: u16 = 2;

value_enum! {
/// FLOW_MOD commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowModCommand: u8 {
    Add = 0,
    Modify = 1,
    ModifyStrict = 2,
    Delete = 3,
    DeleteStrict = 4,
}
}

/// One change to a switch's flow table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowOp {
    /// Adds the flow, replacing one with the same identity (cookie too).
    Add(Flow),
    /// Replaces the actions of the flow with the same identity (the cookie
    /// stays as installed: OpenFlow 1.2+ modify does not change it).
    ModifyStrict(Flow),
    /// Deletes the flow with the same identity (its actions are ignored).
    DeleteStrict(Flow),
    /// Deletes every flow whose cookie matches, in one table or all.
    DeleteByCookie { filter: CookieFilter, table: Option<u8> },
}

impl fmt::Display for FlowOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlowOp::Add(fl) => write!(f, "add {fl}"),
            FlowOp::ModifyStrict(fl) => write!(f, "modify-strict {fl}"),
            FlowOp::DeleteStrict(fl) => write!(f, "delete-strict {fl}"),
            FlowOp::DeleteByCookie { filter, table } => {
                write!(f, "delete cookie={:#x}/{:#x}", filter.cookie, filter.mask)?;
                if let Some(t) = table {
                    write!(f, " table={t}")?;
                }
                Ok(())
            }
        }
    }
}

/// A FLOW_MOD as decoded (used by tests and tools; the client encodes [`FlowOp`]s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowMod {
    pub command: FlowModCommand,
    pub cookie: u64,
    pub cookie_mask: u64,
    pub table: u8,
    pub priority: u16,
    pub out_port: u32,
    pub out_group: u32,
    pub flags: u16,
    pub m: Match,
    pub actions: Vec<Action>,
}

/// What the switch told us in an ERROR message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfpError {
    pub err_type: u16,
    pub code: u16,
    /// Experimenter id for experimenter (0xffff) errors.
    pub experimenter: Option<u32>,
    /// The start of the request that failed.
    pub data: Vec<u8>,
}

impl fmt::Display for OfpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.experimenter {
            Some(exp) => write!(f, "EXPERIMENTER error (experimenter {exp:#x}, code {})", self.code),
            None => write!(
                f,
                "{}/{} (type {}, code {})",
                error_type_name(self.err_type),
                error_code_name(self.err_type, self.code),
                self.err_type,
                self.code
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    pub datapath_id: u64,
    pub n_buffers: u32,
    pub n_tables: u8,
    pub capabilities: u32,
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello {
        version_bitmap: Option<u32>,
    },
    Error(OfpError),
    EchoRequest(Vec<u8>),
    EchoReply(Vec<u8>),
    FeaturesRequest,
    FeaturesReply(Features),
    BarrierRequest,
    BarrierReply,
    BundleControl {
        bundle_id: u32,
        kind: BundleCtrlType,
        flags: u16,
    },
    BundleAdd {
        bundle_id: u32,
        flags: u16,
        inner: Box<Frame>,
    },
    FlowMod(FlowMod),
    FlowStatsRequest {
        table: u8,
        cookie: CookieFilter,
        m: Match,
    },
    /// A meter config reply (one part: k8s-ovs has a meter per shaped pod).
    MeterConfigReply {
        more: bool,
        meters: Vec<Meter>,
    },
    /// One part of a flow stats reply; `more` until the last. Each flow
    /// with the counters the switch keeps for it.
    FlowStatsReply {
        more: bool,
        flows: Vec<CountedFlow>,
    },
    /// Any other message, kept undecoded.
    Other {
        msg_type: u8,
    },
}

/// A flow's counters from a flow stats reply (OpenFlow 1.5 `ofp_stats`,
/// the OXS fields of the basic class). A field the switch left out or could
/// not count (all ones, as OVS reports an unknown count) is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FlowStats {
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
    /// How long the flow has been in the table: a flow replaced by an ADD of
    /// the same identity starts again from 0, counters and all.
    pub duration: Option<std::time::Duration>,
}

/// A flow as read back, with its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountedFlow {
    pub flow: Flow,
    pub stats: FlowStats,
}

/// The OXS class of the basic statistics (OpenFlow 1.5 `OFPXSC_OPENFLOW_BASIC`).
const OFPXSC_OPENFLOW_BASIC: u16 = 0x8002;
/// Its fields (`oxs_ofb_stat_fields`): those k8s-ovs reads.
const OFPXST_OFB_DURATION: u8 = 0;
const OFPXST_OFB_PACKET_COUNT: u8 = 4;
const OFPXST_OFB_BYTE_COUNT: u8 = 5;

/// One message with its header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub version: u8,
    pub xid: u32,
    pub msg: Message,
}

/// The length of the first message in `buf` if it is complete, `Ok(None)` if
/// more bytes are needed; an error for a header that cannot be right.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, CodecError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    if len < HEADER_LEN {
        return Err(CodecError::Malformed(format!("message length {len} < 8")));
    }
    Ok((buf.len() >= len).then_some(len))
}

fn start_msg(buf: &mut Vec<u8>, msg_type: u8, xid: u32) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[OFP_VERSION_1_5, msg_type, 0, 0]);
    put_u32(buf, xid);
    start
}

fn end_msg(buf: &mut [u8], start: usize) -> Result<(), CodecError> {
    let len = u16::try_from(buf.len() - start)
        .map_err(|_| CodecError::Invalid(format!("message of {} bytes exceeds 65535", buf.len() - start)))?;
    patch_u16(buf, start + 2, len);
    Ok(())
}

/// HELLO offering OpenFlow 1.3 and 1.5 (a version bitmap element).
pub fn encode_hello(buf: &mut Vec<u8>, xid: u32) {
    let s = start_msg(buf, msg_type::HELLO, xid);
    put_u16(buf, OFPHET_VERSIONBITMAP);
    put_u16(buf, 8);
    put_u32(buf, (1 << OFP_VERSION_1_3) | (1 << OFP_VERSION_1_5));
    patch_u16(buf, s + 2, 16);
}

/// The version both sides speak: the highest common one in the bitmaps, or
/// the lower of the header versions when the peer sent no bitmap.
pub fn negotiate(peer_version: u8, peer_bitmap: Option<u32>) -> Option<u8> {
    let ours: u32 = (1 << OFP_VERSION_1_3) | (1 << OFP_VERSION_1_5);
    match peer_bitmap {
        Some(bm) => {
            let common = bm & ours;
            (common != 0).then(|| (31 - common.leading_zeros()) as u8)
        }
        None => {
            let v = peer_version.min(OFP_VERSION_1_5);
            (ours & (1 << v) != 0).then_some(v)
        }
    }
}

pub fn encode_echo(buf: &mut Vec<u8>, xid: u32, reply: bool, data: &[u8]) -> Result<(), CodecError> {
    let s = start_msg(buf, if reply { msg_type::ECHO_REPLY } else { msg_type::ECHO_REQUEST }, xid);
    buf.extend_from_slice(data);
    end_msg(buf, s)
}

pub fn encode_features_request(buf: &mut Vec<u8>, xid: u32) {
    let s = start_msg(buf, msg_type::FEATURES_REQUEST, xid);
    patch_u16(buf, s + 2, 8);
}

pub fn encode_barrier(buf: &mut Vec<u8>, xid: u32) {
    let s = start_msg(buf, msg_type::BARRIER_REQUEST, xid);
    patch_u16(buf, s + 2, 8);
}

pub fn encode_bundle_control(buf: &mut Vec<u8>, xid: u32, bundle_id: u32, kind: BundleCtrlType, flags: u16) {
    let s = start_msg(buf, msg_type::BUNDLE_CONTROL, xid);
    put_u32(buf, bundle_id);
    put_u16(buf, kind as u16);
    put_u16(buf, flags);
    patch_u16(buf, s + 2, 16);
}

/// BUNDLE_ADD wrapping the FLOW_MOD for `op`; inner and outer share the xid.
pub fn encode_bundle_add(
    buf: &mut Vec<u8>,
    xid: u32,
    bundle_id: u32,
    flags: u16,
    op: &FlowOp,
) -> Result<(), CodecError> {
    let s = start_msg(buf, msg_type::BUNDLE_ADD, xid);
    put_u32(buf, bundle_id);
    put_u16(buf, 0);
    put_u16(buf, flags);
    encode_flow_op(buf, xid, op)?;
    end_msg(buf, s)
}

/// The FLOW_MOD for one [`FlowOp`].
pub fn encode_flow_op(buf: &mut Vec<u8>, xid: u32, op: &FlowOp) -> Result<(), CodecError> {
    let empty = Match::new();
    let (cmd, flow, cookie, cookie_mask, table) = match op {
        FlowOp::Add(f) => (FlowModCommand::Add, Some(f), f.cookie.0, 0, f.table),
        FlowOp::ModifyStrict(f) => (FlowModCommand::ModifyStrict, Some(f), f.cookie.0, 0, f.table),
        FlowOp::DeleteStrict(f) => (FlowModCommand::DeleteStrict, Some(f), 0, 0, f.table),
        FlowOp::DeleteByCookie { filter, table } => {
            (FlowModCommand::Delete, None, filter.cookie, filter.mask, table.unwrap_or(OFPTT_ALL))
        }
    };
    let s = start_msg(buf, msg_type::FLOW_MOD, xid);
    put_u64(buf, cookie);
    put_u64(buf, cookie_mask);
    buf.push(table);
    buf.push(cmd as u8);
    put_u16(buf, 0); // idle timeout
    put_u16(buf, 0); // hard timeout
    put_u16(buf, flow.map_or(crate::flow::DEFAULT_PRIORITY, |f| f.priority));
    put_u32(buf, OFP_NO_BUFFER);
    put_u32(buf, port::ANY);
    put_u32(buf, OFPG_ANY);
    put_u16(buf, 0); // flags
    put_u16(buf, 0); // importance
    oxm::encode_match(buf, flow.map_or(&empty, |f| &f.m))?;
    if let (Some(f), FlowModCommand::Add | FlowModCommand::ModifyStrict) = (flow, cmd) {
        action::encode_instructions(buf, &f.actions)?;
    }
    end_msg(buf, s)
}

/// A meter of one drop band: traffic above `kbps` (with a bucket of
/// `burst_kbits`) is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meter {
    pub id: u32,
    pub kbps: u32,
    pub burst_kbits: u32,
}

/// What a METER_MOD does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum MeterCommand {
    Add = 0,
    Modify = 1,
    Delete = 2,
}

/// OFPT_METER_MOD for `meter` (a delete needs only its id).
pub fn encode_meter_mod(
    buf: &mut Vec<u8>,
    xid: u32,
    command: MeterCommand,
    meter: &Meter,
) -> Result<(), CodecError> {
    let s = start_msg(buf, msg_type::METER_MOD, xid);
    put_u16(buf, command as u16);
    put_u16(buf, OFPMF_KBPS | OFPMF_BURST | OFPMF_STATS);
    put_u32(buf, meter.id);
    if command != MeterCommand::Delete {
        put_u16(buf, OFPMBT_DROP);
        put_u16(buf, 16);
        put_u32(buf, meter.kbps);
        put_u32(buf, meter.burst_kbits);
        put_u32(buf, 0);
    }
    end_msg(buf, s)
}

/// OFPMP_METER_CONFIG request for every meter.
pub fn encode_meter_config_request(buf: &mut Vec<u8>, xid: u32) -> Result<(), CodecError> {
    let s = start_msg(buf, msg_type::MULTIPART_REQUEST, xid);
    put_u16(buf, OFPMP_METER_CONFIG);
    put_u16(buf, 0);
    put_u32(buf, 0);
    put_u32(buf, OFPM_ALL);
    put_u32(buf, 0);
    end_msg(buf, s)
}

/// The meters of a meter config reply (drop bands only; others skipped).
fn decode_meter_configs(b: &mut Reader<'_>) -> Result<Vec<Meter>, CodecError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let len = usize::from(b.u16()?);
        if len < 8 {
            return Err(CodecError::Malformed(format!("meter config length {len}")));
        }
        let mut e = b.sub(len - 2, "meter config")?;
        let _flags = e.u16()?;
        let id = e.u32()?;
        while e.remaining() >= 16 {
            let (typ, blen) = (e.u16()?, usize::from(e.u16()?));
            if blen < 16 {
                return Err(CodecError::Malformed(format!("meter band length {blen}")));
            }
            let mut band = e.sub(blen - 4, "meter band")?;
            let (rate, burst) = (band.u32()?, band.u32()?);
            if typ == OFPMBT_DROP {
                out.push(Meter { id, kbps: rate, burst_kbits: burst });
            }
        }
    }
    Ok(out)
}

/// OFPMP_FLOW_DESC request: flows of `table` (or all) whose cookie matches.
pub fn encode_flow_stats_request(buf: &mut Vec<u8>, xid: u32, table: Option<u8>, cookie: CookieFilter) {
    let s = start_msg(buf, msg_type::MULTIPART_REQUEST, xid);
    put_u16(buf, OFPMP_FLOW_DESC);
    put_u16(buf, 0);
    put_u32(buf, 0);
    buf.push(table.unwrap_or(OFPTT_ALL));
    buf.extend_from_slice(&[0; 3]);
    put_u32(buf, port::ANY);
    put_u32(buf, OFPG_ANY);
    put_u32(buf, 0);
    put_u64(buf, cookie.cookie);
    put_u64(buf, cookie.mask);
    // An empty match cannot fail to encode.
    let _ = oxm::encode_match(buf, &Match::new());
    let len = (buf.len() - s) as u16;
    patch_u16(buf, s + 2, len);
}

/// Decodes one whole message (exactly `frame_len` bytes).
pub fn decode(buf: &[u8]) -> Result<Frame, CodecError> {
    let mut r = Reader::new(buf, "header");
    let version = r.u8()?;
    let typ = r.u8()?;
    let len = usize::from(r.u16()?);
    let xid = r.u32()?;
    if len != buf.len() {
        return Err(CodecError::Malformed(format!("header length {len} but {} bytes", buf.len())));
    }
    let mut b = Reader::new(&buf[HEADER_LEN..], "message body");
    if typ != msg_type::HELLO && typ != msg_type::ERROR && version != OFP_VERSION_1_5 {
        return Ok(Frame { version, xid, msg: Message::Other { msg_type: typ } });
    }
    let msg = match typ {
        msg_type::HELLO => Message::Hello { version_bitmap: decode_hello(&mut b)? },
        msg_type::ERROR => {
            let err_type = b.u16()?;
            let code = b.u16()?;
            let experimenter = if err_type == 0xffff { Some(b.u32()?) } else { None };
            Message::Error(OfpError { err_type, code, experimenter, data: b.rest().to_vec() })
        }
        msg_type::ECHO_REQUEST => Message::EchoRequest(b.rest().to_vec()),
        msg_type::ECHO_REPLY => Message::EchoReply(b.rest().to_vec()),
        msg_type::FEATURES_REQUEST => Message::FeaturesRequest,
        msg_type::FEATURES_REPLY => {
            let datapath_id = b.u64()?;
            let n_buffers = b.u32()?;
            let n_tables = b.u8()?;
            b.skip(3)?;
            let capabilities = b.u32()?;
            Message::FeaturesReply(Features { datapath_id, n_buffers, n_tables, capabilities })
        }
        msg_type::BARRIER_REQUEST => Message::BarrierRequest,
        msg_type::BARRIER_REPLY => Message::BarrierReply,
        msg_type::BUNDLE_CONTROL => {
            let bundle_id = b.u32()?;
            let k = b.u16()?;
            let flags = b.u16()?;
            let kind = BundleCtrlType::from_u16(k)
                .ok_or_else(|| CodecError::Malformed(format!("bundle control type {k}")))?;
            Message::BundleControl { bundle_id, kind, flags }
        }
        msg_type::BUNDLE_ADD => {
            let bundle_id = b.u32()?;
            b.skip(2)?;
            let flags = b.u16()?;
            let rest = b.rest();
            let inner_len = frame_len(rest)?
                .ok_or_else(|| CodecError::Malformed("bundle_add inner message truncated".into()))?;
            let inner = decode(&rest[..inner_len])?;
            Message::BundleAdd { bundle_id, flags, inner: Box::new(inner) }
        }
        msg_type::FLOW_MOD => Message::FlowMod(decode_flow_mod(&mut b)?),
        msg_type::MULTIPART_REQUEST => {
            let mp = b.u16()?;
            b.skip(6)?;
            if mp != OFPMP_FLOW_DESC {
                return Ok(Frame { version, xid, msg: Message::Other { msg_type: typ } });
            }
            let table = b.u8()?;
            b.skip(3 + 4 + 4 + 4)?;
            let cookie = b.u64()?;
            let mask = b.u64()?;
            let m = oxm::decode_match(&mut b)?;
            Message::FlowStatsRequest { table, cookie: CookieFilter { cookie, mask }, m }
        }
        msg_type::MULTIPART_REPLY => {
            let mp = b.u16()?;
            let flags = b.u16()?;
            b.skip(4)?;
            if mp == OFPMP_METER_CONFIG {
                let meters = decode_meter_configs(&mut b)?;
                return Ok(Frame {
                    version,
                    xid,
                    msg: Message::MeterConfigReply { more: flags & OFPMPF_MORE != 0, meters },
                });
            }
            if mp != OFPMP_FLOW_DESC {
                return Ok(Frame { version, xid, msg: Message::Other { msg_type: typ } });
            }
            let mut flows = Vec::new();
            while !b.is_empty() {
                flows.push(decode_flow_desc(&mut b)?);
            }
            Message::FlowStatsReply { more: flags & OFPMPF_MORE != 0, flows }
        }
        t => Message::Other { msg_type: t },
    };
    Ok(Frame { version, xid, msg })
}

fn decode_hello(b: &mut Reader<'_>) -> Result<Option<u32>, CodecError> {
    let mut bitmap = None;
    while b.remaining() >= 4 {
        let typ = b.u16()?;
        let len = usize::from(b.u16()?);
        if len < 4 {
            return Err(CodecError::Malformed(format!("hello element length {len}")));
        }
        let mut e = b.sub(len - 4, "hello element")?;
        if typ == OFPHET_VERSIONBITMAP && e.remaining() >= 4 {
            bitmap = Some(e.u32()?);
        }
        // elements are padded to 8 bytes; the last one may not be
        let pad = (8 - len % 8) % 8;
        b.skip(pad.min(b.remaining()))?;
    }
    Ok(bitmap)
}

fn decode_flow_mod(b: &mut Reader<'_>) -> Result<FlowMod, CodecError> {
    let cookie = b.u64()?;
    let cookie_mask = b.u64()?;
    let table = b.u8()?;
    let c = b.u8()?;
    let command =
        FlowModCommand::from_repr(c).ok_or_else(|| CodecError::Malformed(format!("flow_mod command {c}")))?;
    b.skip(4)?; // timeouts
    let priority = b.u16()?;
    b.skip(4)?; // buffer id
    let out_port = b.u32()?;
    let out_group = b.u32()?;
    let flags = b.u16()?;
    b.skip(2)?; // importance
    let m = oxm::decode_match(b)?;
    let actions = action::decode_instructions(b)?;
    Ok(FlowMod { command, cookie, cookie_mask, table, priority, out_port, out_group, flags, m, actions })
}

fn decode_flow_desc(b: &mut Reader<'_>) -> Result<CountedFlow, CodecError> {
    let len = usize::from(b.u16()?);
    if len < 24 {
        return Err(CodecError::Malformed(format!("flow desc length {len}")));
    }
    let mut e = b.sub(len - 2, "flow desc")?;
    e.skip(2)?;
    let table = e.u8()?;
    e.skip(1)?;
    let priority = e.u16()?;
    e.skip(6)?; // idle, hard timeouts, flags
    e.skip(2)?; // importance
    let cookie = e.u64()?;
    let m = oxm::decode_match(&mut e)?;
    // ofp_stats (OXS): reserved, length (of the header and fields, not
    // the padding), the fields, padded to 8.
    e.skip(2)?;
    let stat_len = usize::from(e.u16()?);
    if stat_len < 4 {
        return Err(CodecError::Malformed(format!("flow stats length {stat_len}")));
    }
    let mut fields = e.sub(stat_len - 4, "flow stats")?;
    let stats = decode_oxs_stats(&mut fields)?;
    e.skip((8 - stat_len % 8) % 8)?;
    let actions = action::decode_instructions(&mut e)?;
    Ok(CountedFlow { flow: Flow::new(table, priority, crate::cookie::Cookie(cookie), m, actions), stats })
}

/// The OXS fields of an `ofp_stats`: each a 32-bit header (class 16 bits,
/// field 7, reserved 1, length 8) and its value. Fields of other classes,
/// or that k8s-ovs does not read (idle time, flow count), are skipped.
fn decode_oxs_stats(b: &mut Reader<'_>) -> Result<FlowStats, CodecError> {
    let mut stats = FlowStats::default();
    let known = |v: u64| (v != u64::MAX).then_some(v);
    while !b.is_empty() {
        let header = b.u32()?;
        let class = (header >> 16) as u16;
        let field = ((header >> 9) & 0x7f) as u8;
        let len = (header & 0xff) as usize;
        let mut v = b.sub(len, "OXS field")?;
        if class != OFPXSC_OPENFLOW_BASIC {
            continue;
        }
        match (field, len) {
            (OFPXST_OFB_DURATION, 8) => {
                let (sec, nsec) = (v.u32()?, v.u32()?);
                stats.duration = (sec != u32::MAX)
                    .then(|| std::time::Duration::new(u64::from(sec), nsec.min(999_999_999)));
            }
            (OFPXST_OFB_PACKET_COUNT, 8) => stats.packets = known(v.u64()?),
            (OFPXST_OFB_BYTE_COUNT, 8) => stats.bytes = known(v.u64()?),
            (OFPXST_OFB_DURATION | OFPXST_OFB_PACKET_COUNT | OFPXST_OFB_BYTE_COUNT, n) => {
                return Err(CodecError::Malformed(format!("OXS field {field} of length {n}")));
            }
            _ => {}
        }
    }
    Ok(stats)
}

impl FlowMod {
    /// The [`FlowOp`] this FLOW_MOD performs, when it is one we send.
    pub fn to_op(&self) -> Option<FlowOp> {
        let flow = || {
            Flow::new(
                self.table,
                self.priority,
                crate::cookie::Cookie(self.cookie),
                self.m.clone(),
                self.actions.clone(),
            )
        };
        match self.command {
            FlowModCommand::Add => Some(FlowOp::Add(flow())),
            FlowModCommand::ModifyStrict => Some(FlowOp::ModifyStrict(flow())),
            FlowModCommand::DeleteStrict => {
                let mut f = flow();
                f.cookie = crate::cookie::Cookie(0);
                Some(FlowOp::DeleteStrict(f))
            }
            FlowModCommand::Delete if self.m.is_empty() => Some(FlowOp::DeleteByCookie {
                filter: CookieFilter { cookie: self.cookie, mask: self.cookie_mask },
                table: (self.table != OFPTT_ALL).then_some(self.table),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
