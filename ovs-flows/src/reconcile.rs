//! Desired flows vs installed flows -> the smallest set of [`FlowOp`]s, and
//! applying them as one atomic bundle.
//!
//! Rules: a desired identity (table, priority, match) that is missing is
//! added; one installed with another cookie (a new round after an agent
//! restart, or a flow someone else wrote) is re-added, which replaces it
//! atomically without a gap; one with the same cookie but other actions is
//! modified in place; an installed k8s-ovs flow (cookie tag ours) whose
//! identity is no longer desired is deleted. Flows of other owners are never
//! deleted.

use std::collections::HashMap;

use crate::client::{BundleError, Client};
use crate::cookie::CookieFilter;
use crate::flow::{Flow, FlowKey, FlowSet};
use crate::ofp::FlowOp;

/// What one reconcile changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcileStats {
    pub added: usize,
    pub modified: usize,
    pub deleted: usize,
}

impl ReconcileStats {
    pub fn of(ops: &[FlowOp]) -> ReconcileStats {
        let mut s = ReconcileStats::default();
        for op in ops {
            match op {
                FlowOp::Add(_) => s.added += 1,
                FlowOp::ModifyStrict(_) => s.modified += 1,
                FlowOp::DeleteStrict(_) | FlowOp::DeleteByCookie { .. } => s.deleted += 1,
            }
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        *self == ReconcileStats::default()
    }
}

/// What makes the installed flow `have` (same identity, if any) equal `want`.
fn op_for(want: &Flow, have: Option<&Flow>) -> Option<FlowOp> {
    match have {
        None => Some(FlowOp::Add(want.clone())),
        // ADD over an existing identity replaces it (cookie included) atomically.
        Some(have) if have.cookie != want.cookie => Some(FlowOp::Add(want.clone())),
        Some(have) if have.actions != want.actions => Some(FlowOp::ModifyStrict(want.clone())),
        Some(_) => None,
    }
}

/// The ops that turn `installed` (read back from the switch) into `desired`.
/// Installed flows whose cookie is not ours are kept unless a desired flow
/// takes their identity.
pub fn diff(desired: &FlowSet, installed: &[Flow]) -> Vec<FlowOp> {
    let by_key: HashMap<FlowKey, &Flow> = installed.iter().map(|f| (f.key(), f)).collect();
    let mut ops = Vec::new();
    ops.extend(desired.iter().filter_map(|want| op_for(want, by_key.get(&want.key()).copied())));
    let mut stale: Vec<&Flow> =
        installed.iter().filter(|f| f.cookie.is_ours() && !desired.contains(&f.key())).collect();
    stale.sort_by_key(|f| f.key());
    ops.extend(stale.into_iter().map(|f| FlowOp::DeleteStrict(f.clone())));
    ops
}

/// [`diff`] for a bridge the caller owns outright: every flow in `tables`
/// that is not desired goes, whoever wrote it (a hand-added
/// `priority=1000,actions=NORMAL` would bypass every table after it). Flows
/// in other tables stay: no flow of ours leads there, so no packet meets
/// them. Returns the ops and how many of them delete a foreign flow.
pub fn diff_owning(desired: &FlowSet, installed: &[Flow], tables: &[u8]) -> (Vec<FlowOp>, usize) {
    let mut ops = diff(desired, installed);
    let mut foreign: Vec<&Flow> = installed
        .iter()
        .filter(|f| !f.cookie.is_ours() && tables.contains(&f.table) && !desired.contains(&f.key()))
        .collect();
    foreign.sort_by_key(|f| f.key());
    let n = foreign.len();
    ops.extend(foreign.into_iter().map(|f| FlowOp::DeleteStrict(f.clone())));
    (ops, n)
}

/// The incremental form: `old` and `new` are the desired flows of the owners
/// that changed (a pod added or removed, a namespace's VNI changed, a remote
/// node added or removed), and `old` is what is installed for them.
pub fn delta(old: &FlowSet, new: &FlowSet) -> Vec<FlowOp> {
    delta_sorted(old.iter(), new.iter())
}

/// [`delta`] of two sequences of flows each sorted by identity, each
/// identity once (a [`FlowSet`]'s order, an owner's group in the
/// pipeline): one walk of both, with no lookup and no copy of a key. The
/// adds and modifies come first, then the deletes, each in identity order.
pub fn delta_sorted<'a>(
    old: impl IntoIterator<Item = &'a Flow>,
    new: impl IntoIterator<Item = &'a Flow>,
) -> Vec<FlowOp> {
    use std::cmp::Ordering::*;
    let (mut old, mut new) = (old.into_iter().peekable(), new.into_iter().peekable());
    let (mut ops, mut gone) = (Vec::new(), Vec::new());
    loop {
        let order = match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some(_), None) => Less,
            (None, Some(_)) => Greater,
            (Some(o), Some(n)) => o.identity().cmp(&n.identity()),
        };
        match order {
            Less => gone.extend(old.next().map(|f| FlowOp::DeleteStrict(f.clone()))),
            Greater => ops.extend(new.next().and_then(|want| op_for(want, None))),
            Equal => {
                let have = old.next();
                ops.extend(new.next().and_then(|want| op_for(want, have)));
            }
        }
    }
    if ops.is_empty() {
        return gone;
    }
    ops.append(&mut gone);
    ops
}

/// `flows` after the switch applied `ops` (what the agent keeps as the
/// switch's flows once a bundle of them committed).
pub fn apply(flows: &mut FlowSet, ops: &[FlowOp]) {
    for op in ops {
        match op {
            FlowOp::Add(f) => {
                flows.insert(f.clone());
            }
            // Modify keeps the installed cookie.
            FlowOp::ModifyStrict(f) => {
                let cookie = flows.get(&f.key()).map_or(f.cookie, |have| have.cookie);
                flows.insert(Flow { cookie, ..f.clone() });
            }
            FlowOp::DeleteStrict(f) => {
                flows.remove(&f.key());
            }
            FlowOp::DeleteByCookie { filter, table } => {
                flows.retain(|f| !(filter.matches(f.cookie) && table.is_none_or(|t| t == f.table)));
            }
        }
    }
}

/// Reads back every k8s-ovs flow, diffs against `desired` and applies the
/// difference as one bundle. On error nothing changed.
pub async fn reconcile(client: &Client, desired: &FlowSet) -> Result<ReconcileStats, BundleError> {
    let installed = client.dump_flows(None, CookieFilter::ours()).await?;
    let ops = diff(desired, &installed);
    client.bundle(&ops).await?;
    Ok(ReconcileStats::of(&ops))
}

/// Applies the delta between two desired sets of some owners as one bundle.
pub async fn apply_delta(
    client: &Client,
    old: &FlowSet,
    new: &FlowSet,
) -> Result<ReconcileStats, BundleError> {
    let ops = delta(old, new);
    client.bundle(&ops).await?;
    Ok(ReconcileStats::of(&ops))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cookie::{Category, Cookie};
    use crate::flow::{Action, Match, Reg};

    fn flow(table: u8, port: u32, round: u16, out: u32) -> Flow {
        Flow::new(
            table,
            100,
            Cookie::new(round, Category::Pod, port),
            Match::new().in_port(port),
            vec![Action::load_reg(Reg::R0, 5), Action::Output(out)],
        )
    }

    #[test]
    fn equal_sets_need_nothing() {
        let want: FlowSet = (1..5).map(|p| flow(0, p, 1, 9)).collect();
        let have: Vec<Flow> = want.iter().cloned().collect();
        assert!(diff(&want, &have).is_empty());
    }

    #[test]
    fn adds_modifies_and_deletes_the_minimum() {
        let want: FlowSet = [flow(0, 1, 1, 9), flow(0, 2, 1, 9), flow(0, 3, 1, 9)].into_iter().collect();
        let have = vec![flow(0, 2, 1, 8), flow(0, 3, 1, 9), flow(0, 4, 1, 9)];
        let ops = diff(&want, &have);
        assert_eq!(
            ops,
            vec![
                FlowOp::Add(flow(0, 1, 1, 9)),
                FlowOp::ModifyStrict(flow(0, 2, 1, 9)),
                FlowOp::DeleteStrict(flow(0, 4, 1, 9)),
            ]
        );
        assert_eq!(ReconcileStats::of(&ops), ReconcileStats { added: 1, modified: 1, deleted: 1 });
    }

    #[test]
    fn a_new_round_re_adds_instead_of_modifying() {
        let want: FlowSet = [flow(0, 1, 2, 9)].into_iter().collect();
        let ops = diff(&want, &[flow(0, 1, 1, 9)]);
        assert_eq!(ops, vec![FlowOp::Add(flow(0, 1, 2, 9))]);
    }

    #[test]
    fn flows_of_other_owners_are_left_alone() {
        let foreign = Flow::new(0, 5, Cookie(0), Match::new().in_port(7), vec![Action::Output(1)]);
        let also_foreign = Flow::new(3, 5, Cookie(0x1), Match::new(), vec![]);
        let want: FlowSet = [flow(0, 1, 1, 9)].into_iter().collect();
        let ops = diff(&want, &[foreign, also_foreign, flow(0, 1, 1, 9)]);
        assert!(ops.is_empty(), "{ops:?}");
    }

    #[test]
    fn an_owned_bridge_loses_foreign_flows_in_its_tables_only() {
        let normal =
            Flow::new(0, 1000, Cookie(0), Match::new(), vec![Action::Output(crate::flow::port::NORMAL)]);
        let elsewhere = Flow::new(200, 5, Cookie(0x77), Match::new(), vec![]);
        let want: FlowSet = [flow(0, 1, 1, 9)].into_iter().collect();
        let (ops, foreign) = diff_owning(&want, &[normal.clone(), elsewhere, flow(0, 1, 1, 9)], &[0, 10]);
        assert_eq!(ops, vec![FlowOp::DeleteStrict(normal)]);
        assert_eq!(foreign, 1);
        // One with a desired identity is replaced, not deleted.
        let mut taken = flow(0, 1, 1, 9);
        taken.cookie = Cookie(0);
        let (ops, foreign) = diff_owning(&want, &[taken], &[0]);
        assert_eq!((ops, foreign), (vec![FlowOp::Add(flow(0, 1, 1, 9))], 0));
    }

    #[test]
    fn a_foreign_flow_with_our_identity_is_replaced() {
        let mut foreign = flow(0, 1, 1, 9);
        foreign.cookie = Cookie(0);
        let want: FlowSet = [flow(0, 1, 1, 9)].into_iter().collect();
        assert_eq!(diff(&want, &[foreign]), vec![FlowOp::Add(flow(0, 1, 1, 9))]);
    }

    #[test]
    fn delta_of_a_vni_change_modifies_in_place() {
        let vni = |v: u32| -> FlowSet {
            (1..=3)
                .map(|p| {
                    Flow::new(
                        0,
                        100,
                        Cookie::new(1, Category::Pod, p),
                        Match::new().in_port(p),
                        vec![Action::load_reg(Reg::R0, v), Action::GotoTable(10)],
                    )
                })
                .collect()
        };
        let ops = delta(&vni(5), &vni(6));
        assert_eq!(ops.len(), 3);
        assert!(ops.iter().all(|o| matches!(o, FlowOp::ModifyStrict(_))));
        let removed = delta(&vni(5), &FlowSet::new());
        assert!(removed.iter().all(|o| matches!(o, FlowOp::DeleteStrict(_))));
        assert_eq!(removed.len(), 3);
        assert!(delta(&vni(5), &vni(5)).is_empty());
    }

    /// The one-walk delta equals the one by lookups (adds and modifies of
    /// the new flows in order, then the deletes) on random pairs of sets:
    /// new rounds, other actions, identities on one side only.
    #[test]
    fn the_walk_equals_looking_each_flow_up() {
        let by_lookups = |old: &FlowSet, new: &FlowSet| -> Vec<FlowOp> {
            let mut ops: Vec<FlowOp> = new.iter().filter_map(|f| op_for(f, old.get(&f.key()))).collect();
            ops.extend(
                old.iter().filter(|f| !new.contains(&f.key())).map(|f| FlowOp::DeleteStrict(f.clone())),
            );
            ops
        };
        let mut next = crate::samples::random_below(0x05ee_d0fd_e17a);
        for _ in 0..300 {
            let mut random_set = || -> FlowSet {
                (0..next(8))
                    .map(|_| flow(next(2) as u8, next(6) as u32, 1 + next(2) as u16, next(2) as u32))
                    .collect()
            };
            let (old, new) = (random_set(), random_set());
            assert_eq!(delta(&old, &new), by_lookups(&old, &new), "{old:?} -> {new:?}");
        }
    }
}
