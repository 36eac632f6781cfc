//! The k8s-ovs controller: allocates VNIs to namespaces and subnets to nodes,
//! applies operators' join / isolate / global edits, one leader at a time.
//!
//! Pure core: [`alloc`], [`model`], [`plan`], [`netns_object`] (the
//! NetNamespace object: what it asks, its status), [`object_plan`],
//! [`dry_run`] (what an action would change). Shell: [`store`] (etcd),
//! [`leader`] (election on an etcd lease), [`kube_watch`], [`kube_objects`]
//! (the objects' writes), [`run`], and the operator commands in [`ctl`] and
//! [`trace`] (can two pods talk, and why).

pub mod alloc;
pub mod args;
pub mod ctl;
pub mod ctl_kube;
pub mod dry_run;
pub mod kube_objects;
pub mod kube_watch;
pub mod leader;
pub mod model;
pub mod netns_object;
pub mod object_plan;
pub mod plan;
pub mod run;
pub mod store;
pub mod top;
pub mod trace;
