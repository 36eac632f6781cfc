//! k8s-ovs flows: the flow model, an OpenFlow 1.5 codec and async client,
//! and the reconciler that makes a switch hold exactly a desired flow set.
//!
//! - [`flow`] – [`Flow`] (table, priority, [`Cookie`], [`Match`], [`Action`]s)
//!   whose `Display` is `ovs-ofctl -O OpenFlow15 dump-flows --no-stats`'s own
//!   line, and [`FlowSet`], flows keyed by identity (table, priority, match).
//! - [`cookie`] – `round | category | tag | object` cookies and the
//!   cookie/mask filters that select a round, an owner or all k8s-ovs flows.
//! - [`ofp`] – the OpenFlow 1.5 wire format (the bridge needs
//!   `protocols=OpenFlow13,OpenFlow15`; OVS does not offer 1.4).
//! - [`backoff`] – the jittered exponential reconnect backoff every loop uses.
//! - [`client`] – async client over `unix:<rundir>/<bridge>.mgmt` or TCP:
//!   atomic bundles, flow dumps, delete by cookie, keepalive, reconnect.
//! - [`reconcile`] – desired vs installed -> the fewest ops, as one bundle.
//! - [`trace`] – `ofproto/trace` probes for "can pod A reach pod B" and
//!   their answers read back into steps and an outcome.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use ovs_flows::client::{Client, ClientOptions};
//! use ovs_flows::{reconcile, Action, Category, Cookie, Flow, FlowSet, Match};
//!
//! let client = Client::connect("unix:/run/openvswitch/br0.mgmt".parse()?, ClientOptions::default()).await?;
//! let mut desired = FlowSet::new();
//! desired.insert(Flow::new(0, 100, Cookie::new(1, Category::Pod, 3), Match::new().in_port(3), vec![
//!     Action::GotoTable(20),
//! ]));
//! let changed = reconcile::reconcile(&client, &desired).await?; // one atomic bundle
//! println!("{changed:?}");
//! # Ok(())
//! # }
//! ```

#[macro_use]
mod value_enum;

pub mod backoff;
pub mod client;
pub mod cookie;
pub mod flow;
pub mod ofp;
pub mod pipeline;
pub mod policy;
pub mod reconcile;
pub mod samples;
pub mod trace;

pub use cookie::{Category, Cookie, CookieFilter};
pub use flow::{Action, Field, FieldRange, Flow, FlowKey, FlowSet, Ipv4Prefix, Mac, Masked, Match, Reg};
