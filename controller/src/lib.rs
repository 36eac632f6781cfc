//! The k8s-ovs controller: allocates VNIs to namespaces and subnets to nodes,
//! applies operators' join / isolate / global edits, one leader at a time.
//!
//! Pure core: [`alloc`], [`model`], [`plan`]. Shell: [`store`] (etcd),
//! [`leader`] (election on an etcd lease), [`kube_watch`], [`run`], and the
//! operator commands in [`ctl`], [`trace`] (can two pods talk, and why) and
//! [`dry_run`] (what an action would change).

pub mod alloc;
pub mod args;
pub mod ctl;
pub mod dry_run;
pub mod kube_watch;
pub mod leader;
pub mod model;
pub mod plan;
pub mod run;
pub mod store;
pub mod trace;
