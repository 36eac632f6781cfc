//! k8s-ovs flows: the flow model, an OpenFlow 1.5 codec and async client,
//! and the reconciler that makes a switch hold exactly a desired flow set.

pub mod client;
pub mod cookie;
pub mod flow;
pub mod ofp;
pub mod pipeline;
pub mod reconcile;
pub mod samples;

pub use cookie::{Category, Cookie, CookieFilter};
pub use flow::{Action, Field, FieldRange, Flow, FlowKey, FlowSet, Ipv4Prefix, Mac, Masked, Match, Reg};
