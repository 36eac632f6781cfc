//! Names of OpenFlow error types and codes (OpenFlow 1.5 section 7.5.4), so
//! an ERROR reads as `BAD_ACTION/BAD_OUT_PORT`, not `type 2 code 4`.

const TYPES: &[&str] = &[
    "HELLO_FAILED",
    "BAD_REQUEST",
    "BAD_ACTION",
    "BAD_INSTRUCTION",
    "BAD_MATCH",
    "FLOW_MOD_FAILED",
    "GROUP_MOD_FAILED",
    "PORT_MOD_FAILED",
    "TABLE_MOD_FAILED",
    "QUEUE_OP_FAILED",
    "SWITCH_CONFIG_FAILED",
    "ROLE_REQUEST_FAILED",
    "METER_MOD_FAILED",
    "TABLE_FEATURES_FAILED",
    "BAD_PROPERTY",
    "ASYNC_CONFIG_FAILED",
    "FLOW_MONITOR_FAILED",
    "BUNDLE_FAILED",
];

const HELLO_FAILED: &[&str] = &["INCOMPATIBLE", "EPERM"];
const BAD_REQUEST: &[&str] = &[
    "BAD_VERSION",
    "BAD_TYPE",
    "BAD_MULTIPART",
    "BAD_EXPERIMENTER",
    "BAD_EXP_TYPE",
    "EPERM",
    "BAD_LEN",
    "BUFFER_EMPTY",
    "BUFFER_UNKNOWN",
    "BAD_TABLE_ID",
    "IS_SLAVE",
    "BAD_PORT",
    "BAD_PACKET",
    "MULTIPART_BUFFER_OVERFLOW",
    "MULTIPART_REQUEST_TIMEOUT",
    "MULTIPART_REPLY_TIMEOUT",
];
const BAD_ACTION: &[&str] = &[
    "BAD_TYPE",
    "BAD_LEN",
    "BAD_EXPERIMENTER",
    "BAD_EXP_TYPE",
    "BAD_OUT_PORT",
    "BAD_ARGUMENT",
    "EPERM",
    "TOO_MANY",
    "BAD_QUEUE",
    "BAD_OUT_GROUP",
    "MATCH_INCONSISTENT",
    "UNSUPPORTED_ORDER",
    "BAD_TAG",
    "BAD_SET_TYPE",
    "BAD_SET_LEN",
    "BAD_SET_ARGUMENT",
    "BAD_SET_MASK",
];
const BAD_INSTRUCTION: &[&str] = &[
    "UNKNOWN_INST",
    "UNSUP_INST",
    "BAD_TABLE_ID",
    "UNSUP_METADATA",
    "UNSUP_METADATA_MASK",
    "BAD_EXPERIMENTER",
    "BAD_EXP_TYPE",
    "BAD_LEN",
    "EPERM",
    "DUP_INST",
];
const BAD_MATCH: &[&str] = &[
    "BAD_TYPE",
    "BAD_LEN",
    "BAD_TAG",
    "BAD_DL_ADDR_MASK",
    "BAD_NW_ADDR_MASK",
    "BAD_WILDCARDS",
    "BAD_FIELD",
    "BAD_VALUE",
    "BAD_MASK",
    "BAD_PREREQ",
    "DUP_FIELD",
    "EPERM",
];
const FLOW_MOD_FAILED: &[&str] = &[
    "UNKNOWN",
    "TABLE_FULL",
    "BAD_TABLE_ID",
    "OVERLAP",
    "EPERM",
    "BAD_TIMEOUT",
    "BAD_COMMAND",
    "BAD_FLAGS",
    "CANT_SYNC",
    "BAD_PRIORITY",
    "IS_SYNC",
];
const BUNDLE_FAILED: &[&str] = &[
    "UNKNOWN",
    "EPERM",
    "BAD_ID",
    "BUNDLE_EXIST",
    "BUNDLE_CLOSED",
    "OUT_OF_BUNDLES",
    "BAD_TYPE",
    "BAD_FLAGS",
    "MSG_BAD_LEN",
    "MSG_BAD_XID",
    "MSG_UNSUP",
    "MSG_CONFLICT",
    "MSG_TOO_MANY",
    "MSG_FAILED",
    "TIMEOUT",
    "BUNDLE_IN_PROGRESS",
    "SCHED_NOT_SUPPORTED",
    "SCHED_FUTURE",
    "SCHED_PAST",
];

pub fn error_type_name(t: u16) -> &'static str {
    if t == 0xffff {
        return "EXPERIMENTER";
    }
    TYPES.get(usize::from(t)).copied().unwrap_or("UNKNOWN_TYPE")
}

pub fn error_code_name(t: u16, code: u16) -> &'static str {
    let table: &[&str] = match t {
        0 => HELLO_FAILED,
        1 => BAD_REQUEST,
        2 => BAD_ACTION,
        3 => BAD_INSTRUCTION,
        4 => BAD_MATCH,
        5 => FLOW_MOD_FAILED,
        17 => BUNDLE_FAILED,
        _ => &[],
    };
    table.get(usize::from(code)).copied().unwrap_or("UNKNOWN_CODE")
}
