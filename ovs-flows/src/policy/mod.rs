//! Kubernetes NetworkPolicy on the pipeline: the model ([`model`]), the
//! flows of a node ([`compile`]), and the set and range arithmetic they need
//! ([`ranges`]). Tenancy stays the outer wall: these flows sit after
//! ISOLATION (ingress) and only ever drop what the VNIs let through.

pub mod compile;
pub mod model;
pub mod ranges;

pub use compile::{compile, Compiled, Direction, PolicyFlow, RuleRef};
pub use model::{
    LabelSelector, Labels, Operator, Peer, Policy, PolicyPod, PolicyPort, PolicyProtocol, PolicyRule,
    PolicyView, PortMatch, Requirement,
};
