//! Single-flight: one upstream call per cache key at a time.
//!
//! The first request for a missing page becomes the leader; requests for the
//! same key that arrive while it is in flight become followers and wait for
//! its result. The leader's work runs in its own task, so a leader whose
//! client hangs up still finishes the (paid) call and feeds the followers.
//! If the leader disappears without a result, followers see `None` and try
//! again themselves. A flight may carry what its leader left for its
//! followers to look at while they wait (`M`: the cache keeps the leader's
//! request context there, so a follower whose deadline passes can tell
//! whether the upstream call it waits for is on the wire).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

type Waiters<K, V, M> = Arc<Mutex<HashMap<K, (watch::Receiver<Option<V>>, M)>>>;

/// The in-flight table.
pub struct SingleFlight<K, V, M = ()> {
    inflight: Waiters<K, V, M>,
}

impl<K, V, M> Clone for SingleFlight<K, V, M> {
    fn clone(&self) -> Self {
        Self {
            inflight: Arc::clone(&self.inflight),
        }
    }
}

impl<K, V, M> Default for SingleFlight<K, V, M> {
    fn default() -> Self {
        Self {
            inflight: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// What [`SingleFlight::join`] made of the caller.
pub enum Role<K: Hash + Eq, V, M = ()> {
    /// Nobody was fetching: the caller must, then call [`Leader::complete`].
    Leader(Leader<K, V, M>),
    /// Someone is fetching: wait on [`Follower::wait`].
    Follower(Follower<V, M>),
}

/// The right (and duty) to fetch one key.
pub struct Leader<K: Hash + Eq, V, M = ()> {
    key: Option<K>,
    sender: watch::Sender<Option<V>>,
    inflight: Waiters<K, V, M>,
}

/// A waiter on someone else's fetch.
pub struct Follower<V, M = ()> {
    receiver: watch::Receiver<Option<V>>,
    /// What the leader left for its followers.
    leader: M,
}

impl<K: Hash + Eq + Clone, V: Clone> SingleFlight<K, V> {
    /// Becomes the leader for `key`, or a follower of the current one.
    pub fn join(&self, key: &K) -> Role<K, V> {
        self.join_as(key, ())
    }
}

impl<K: Hash + Eq + Clone, V: Clone, M: Clone> SingleFlight<K, V, M> {
    /// [`SingleFlight::join`], leaving `leader` for the followers should the
    /// caller lead.
    pub fn join_as(&self, key: &K, leader: M) -> Role<K, V, M> {
        let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((receiver, current)) = inflight.get(key) {
            return Role::Follower(Follower {
                receiver: receiver.clone(),
                leader: current.clone(),
            });
        }
        let (sender, receiver) = watch::channel(None);
        inflight.insert(key.clone(), (receiver, leader));
        Role::Leader(Leader {
            key: Some(key.clone()),
            sender,
            inflight: Arc::clone(&self.inflight),
        })
    }

    /// A leader of a fetch nobody can join (not in the table): for a
    /// request that must fetch for itself.
    pub fn alone(&self) -> Leader<K, V, M> {
        let (sender, _) = watch::channel(None);
        Leader {
            key: None,
            sender,
            inflight: Arc::clone(&self.inflight),
        }
    }

    /// Keys being fetched right now.
    pub fn in_flight(&self) -> usize {
        self.inflight.lock().map(|m| m.len()).unwrap_or(0)
    }
}

impl<K: Hash + Eq, V, M> Leader<K, V, M> {
    /// Publishes the result to every follower and frees the key.
    pub fn complete(mut self, value: V) {
        self.remove();
        // No receivers left is fine: nobody was waiting.
        let _ = self.sender.send(Some(value));
    }

    fn remove(&mut self) {
        if let Some(key) = self.key.take() {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            inflight.remove(&key);
        }
    }
}

impl<K: Hash + Eq, V, M> Drop for Leader<K, V, M> {
    fn drop(&mut self) {
        // A leader dropped without completing frees the key; followers then
        // see the channel close and retry.
        self.remove();
    }
}

impl<V: Clone, M> Follower<V, M> {
    /// What the leader of the flight left for its followers.
    pub fn leader(&self) -> &M {
        &self.leader
    }

    /// The leader's result, or `None` if the leader vanished without one.
    pub async fn wait(mut self) -> Option<V> {
        match self.receiver.wait_for(|v| v.is_some()).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn followers_get_the_leaders_result() {
        let sf: SingleFlight<u32, &'static str> = SingleFlight::default();
        let Role::Leader(leader) = sf.join(&1) else {
            panic!("first is leader")
        };
        let Role::Follower(f1) = sf.join(&1) else {
            panic!("second follows")
        };
        let Role::Follower(f2) = sf.join(&1) else {
            panic!("third follows")
        };
        assert!(
            matches!(sf.join(&2), Role::Leader(_)),
            "other keys are independent"
        );
        let waiting = tokio::spawn(async move { (f1.wait().await, f2.wait().await) });
        leader.complete("page");
        assert_eq!(waiting.await.unwrap(), (Some("page"), Some("page")));
        assert!(matches!(sf.join(&1), Role::Leader(_)), "key is free again");
    }

    #[tokio::test]
    async fn a_vanished_leader_releases_its_followers() {
        let sf: SingleFlight<u32, u8> = SingleFlight::default();
        let Role::Leader(leader) = sf.join(&7) else {
            panic!()
        };
        let Role::Follower(f) = sf.join(&7) else {
            panic!()
        };
        drop(leader);
        assert_eq!(f.wait().await, None);
        assert_eq!(sf.in_flight(), 0);
    }
}
