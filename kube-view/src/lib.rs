//! Complete views of Kubernetes objects, for the agent (Services, its
//! node's Pods) and the controller (Namespaces, Nodes).
//!
//! [`reflect`] runs kube-runtime's `watcher` (list + watch, a relist after
//! 410 Gone, its default backoff on errors) through a `reflector`, whose
//! store buffers a relist and swaps it in whole at `InitDone`. After every
//! change that leaves the store complete, the caller gets the store's whole
//! state and derives its view from it. So no caller ever sees a partial list
//! (which would, for the agent, drop the flows of the services not yet
//! relisted), and none re-implements the relist buffering.
//! [`reflect_changes`] is the same for a caller that keeps its own view up
//! to date change by change (the agent's 10,000 services): each complete
//! list whole, then each object applied or deleted.
//! [`reflect_changes_trimmed`] is that for a caller that needs only a few
//! fields of many large objects (the agent's NetworkPolicy view of every Pod
//! in the cluster): the store, which holds every object, keeps only those.
//! [`events`] posts the Events agent and controller tell objects' owners
//! about (fire and forget).

pub mod events;

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::runtime::reflector::{self, reflector};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Resource, ResourceExt};
use tracing::{info, warn};

/// One step of a complete view.
#[derive(Debug, Clone)]
pub enum Change<K> {
    /// Every object: the first complete list, and every relist after.
    Listed(Vec<Arc<K>>),
    /// An object added or changed after the list.
    Applied(Arc<K>),
    /// An object deleted after the list.
    Deleted(Arc<K>),
}

/// Runs forever: watches `api` (with `config`'s selectors) and calls
/// `publish` with every object after each change, once the first list is
/// complete. The first call is the first complete list (possibly empty).
pub async fn reflect<K>(api: Api<K>, config: watcher::Config, mut publish: impl FnMut(Vec<Arc<K>>))
where
    K: Resource + Clone + Debug + Send + Sync + serde::de::DeserializeOwned + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    complete_changes(events_of(api, config, |_| {}), |_, store| publish(store.state())).await
}

/// [`reflect`] change by change: `on_change` gets each complete list whole
/// (the first one even empty), then each object applied or deleted.
pub async fn reflect_changes<K>(api: Api<K>, config: watcher::Config, on_change: impl FnMut(Change<K>))
where
    K: Resource + Clone + Debug + Send + Sync + serde::de::DeserializeOwned + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    reflect_changes_trimmed(api, config, |_| {}, on_change).await
}

/// [`reflect_changes`] with `trim` applied to every object as it arrives,
/// before the store keeps it: what it removes is neither kept nor seen.
pub async fn reflect_changes_trimmed<K>(
    api: Api<K>,
    config: watcher::Config,
    trim: impl FnMut(&mut K),
    mut on_change: impl FnMut(Change<K>),
) where
    K: Resource + Clone + Debug + Send + Sync + serde::de::DeserializeOwned + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    complete_changes(events_of(api, config, trim), |change, _| on_change(change)).await
}

fn events_of<K>(
    api: Api<K>,
    config: watcher::Config,
    mut trim: impl FnMut(&mut K),
) -> impl Stream<Item = watcher::Result<Event<K>>>
where
    K: Resource + Clone + Debug + Send + Sync + serde::de::DeserializeOwned + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    watcher(api, config).default_backoff().modify(move |o| {
        // Managed fields are most of an object's size and nothing here reads them.
        o.managed_fields_mut().clear();
        trim(o)
    })
}

/// The complete views of any stream of watcher events (the tests feed
/// their own): each change once the store is complete, with the store.
async fn complete_changes<K, S>(events: S, mut on_change: impl FnMut(Change<K>, &reflector::Store<K>))
where
    K: Resource + Clone + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
    S: Stream<Item = watcher::Result<Event<K>>>,
{
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    // "services listed", "nodes listed": what operators (and the lab tests) look for.
    let plural = format!("{}s", kind.to_lowercase());
    let (store, writer) = reflector::store();
    let mut events = std::pin::pin!(reflector(writer, events));
    let mut listed = false;
    while let Some(event) = events.next().await {
        let change = match event {
            Ok(Event::InitDone) => {
                listed = true;
                info!(objects = store.len(), "{plural} listed");
                Change::Listed(store.state())
            }
            // The watcher lists before it watches; `listed` makes sure
            // anyway that a change never publishes a store not yet complete.
            Ok(Event::Apply(o)) if listed => Change::Applied(Arc::new(o)),
            Ok(Event::Delete(o)) if listed => Change::Deleted(Arc::new(o)),
            // A list in progress: the store keeps the last complete one
            // until InitDone swaps the new one in.
            Ok(_) => continue,
            Err(e) => {
                warn!(%kind, error = %e, "watch error; retrying with backoff");
                continue;
            }
        };
        on_change(change, &store);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::ObjectMeta;

    fn ns(name: &str) -> Namespace {
        Namespace {
            metadata: ObjectMeta { name: Some(name.into()), ..ObjectMeta::default() },
            ..Namespace::default()
        }
    }

    /// What `reflect` publishes for `events` (the store after each change),
    /// each call's names sorted.
    fn published(events: Vec<watcher::Result<Event<Namespace>>>) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        futures::executor::block_on(complete_changes(futures::stream::iter(events), |_, store| {
            let mut names: Vec<String> = store.state().iter().map(|o| o.name_any()).collect();
            names.sort();
            out.push(names);
        }));
        out
    }

    /// What `reflect_changes` gives for `events`, as text.
    fn changes(events: Vec<watcher::Result<Event<Namespace>>>) -> Vec<String> {
        let mut out = Vec::new();
        futures::executor::block_on(complete_changes(futures::stream::iter(events), |change, _| {
            out.push(match change {
                Change::Listed(all) => {
                    let mut names: Vec<String> = all.iter().map(|o| o.name_any()).collect();
                    names.sort();
                    format!("listed {}", names.join(","))
                }
                Change::Applied(o) => format!("applied {}", o.name_any()),
                Change::Deleted(o) => format!("deleted {}", o.name_any()),
            })
        }));
        out
    }

    #[test]
    fn changes_are_each_whole_list_then_each_object_after_it() {
        let mut events = list(&["a", "b"]);
        events.extend([Ok(Event::Apply(ns("c"))), Ok(Event::Delete(ns("a")))]);
        events.extend(list(&["b", "d"]));
        assert_eq!(changes(events), ["listed a,b", "applied c", "deleted a", "listed b,d"]);
        assert_eq!(
            changes(vec![Ok(Event::Apply(ns("early")))]),
            Vec::<String>::new(),
            "nothing before a list"
        );
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// The events of one whole list of `objects`.
    fn list(objects: &[&str]) -> Vec<watcher::Result<Event<Namespace>>> {
        let applies = objects.iter().map(|o| Ok(Event::InitApply(ns(o))));
        std::iter::once(Ok(Event::Init)).chain(applies).chain([Ok(Event::InitDone)]).collect()
    }

    #[test]
    fn publishes_complete_lists_and_every_change_after() {
        let mut events = list(&["a", "b"]);
        events.extend([Ok(Event::Apply(ns("c"))), Ok(Event::Delete(ns("a")))]);
        let got = published(events);
        assert_eq!(got, vec![names(&["a", "b"]), names(&["a", "b", "c"]), names(&["b", "c"])]);
    }

    #[test]
    fn an_empty_first_list_is_published() {
        // The agent's first service map marks "services known", even empty.
        assert_eq!(published(list(&[])), vec![Vec::<String>::new()]);
    }

    #[test]
    fn a_relist_is_published_whole_never_in_part() {
        // 410 Gone: the watcher lists again; "a" went meanwhile.
        let got = published(list(&["a", "b"]).into_iter().chain(list(&["b", "d"])).collect());
        assert_eq!(got, vec![names(&["a", "b"]), names(&["b", "d"])]);
    }

    #[test]
    fn nothing_is_published_before_the_first_list_nor_on_errors() {
        let got = published(vec![
            Err(watcher::Error::NoResourceVersion),
            Ok(Event::Apply(ns("early"))),
            Ok(Event::Init),
            Ok(Event::InitApply(ns("a"))),
            Err(watcher::Error::NoResourceVersion),
        ]);
        assert!(got.is_empty(), "{got:?}");
    }
}
