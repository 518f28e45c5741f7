//! LISTEN/NOTIFY between the clients of the one backend session.
//!
//! The backend listens on every channel any client listens on, so a committed `NOTIFY` (or
//! `pg_notify`) comes out of the committing exchange as `NotificationResponse`s, at commit
//! and in commit order, as PostgreSQL sends them: deduplicated, dropped with a rolled-back
//! transaction or subtransaction. The bridge takes them out of that client's output and hands
//! each to every client listening on its channel, the sender included, carrying the sender's
//! process id as its `BackendKeyData` gave it. A client gets them when it is idle (outside a
//! transaction), without sending anything, as from PostgreSQL.
//!
//! Which channels a client listens on is learnt from the backend: the `LISTEN`s and
//! `UNLISTEN`s its turn ran (by any route: a `DO` block, a function), checked against
//! `pg_listening_channels()` once its turn is over, so that a rolled-back `LISTEN` does not
//! count. An `UNLISTEN` another client still needs is undone on the backend at once.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::ListenOp;

/// Who listens on what, and where each client's notifications go.
#[derive(Default)]
pub(crate) struct Hub {
    clients: Mutex<HashMap<i32, Listener>>,
}

struct Listener {
    channels: BTreeSet<String>,
    deliver: mpsc::UnboundedSender<Bytes>,
}

/// A `NotificationResponse` frame.
pub(crate) fn notification_frame(pid: i32, channel: &str, payload: &str) -> Bytes {
    let len = 4 + 4 + channel.len() + 1 + payload.len() + 1;
    let mut frame = Vec::with_capacity(1 + len);
    frame.push(b'A');
    frame.extend_from_slice(&(len as u32).to_be_bytes());
    frame.extend_from_slice(&pid.to_be_bytes());
    frame.extend_from_slice(channel.as_bytes());
    frame.push(0);
    frame.extend_from_slice(payload.as_bytes());
    frame.push(0);
    Bytes::from(frame)
}

/// What a client's turn did to the channels it listens on, once the backend has said which it
/// listens on now.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Relisten {
    /// Channels other clients listen on that the backend no longer does: to `LISTEN` again.
    pub(crate) channels: Vec<String>,
}

impl Hub {
    /// Registers a client; its notifications arrive on the receiver.
    pub(crate) fn join(&self, pid: i32) -> mpsc::UnboundedReceiver<Bytes> {
        let (deliver, receive) = mpsc::unbounded_channel();
        self.lock().insert(pid, Listener { channels: BTreeSet::new(), deliver });
        receive
    }

    /// Forgets a client. (The backend may keep listening on its channels: what comes for them
    /// is handed to nobody.)
    pub(crate) fn leave(&self, pid: i32) {
        self.lock().remove(&pid);
    }

    /// The channels `pid` listens on that no other client does: the backend may stop listening
    /// on them when `pid` leaves.
    pub(crate) fn exclusive_channels(&self, pid: i32) -> Vec<String> {
        let clients = self.lock();
        let Some(own) = clients.get(&pid) else {
            return Vec::new();
        };
        own.channels
            .iter()
            .filter(|channel| !clients.iter().any(|(other, l)| *other != pid && l.channels.contains(*channel)))
            .cloned()
            .collect()
    }

    /// Hands a notification a client's commit sent to every other client listening on its
    /// channel; returns it for the sender if it listens too (it gets it with its commit, before
    /// its `ReadyForQuery`, as PostgreSQL sends it).
    pub(crate) fn publish(&self, sender: i32, channel: &str, payload: &str) -> Option<Bytes> {
        let frame = notification_frame(sender, channel, payload);
        let mut own = None;
        for (pid, listener) in self.lock().iter().filter(|(_, l)| l.channels.contains(channel)) {
            if *pid == sender {
                own = Some(frame.clone());
            } else {
                // A client that is gone misses it, as it would with PostgreSQL.
                let _ = listener.deliver.send(frame.clone());
            }
        }
        own
    }

    /// Updates `pid`'s channels after its turn: `ops` are the `LISTEN`s and `UNLISTEN`s it ran
    /// (empty if the backend could not tell them apart), `backend` what the backend listens on
    /// now. Returns the channels others need that the backend has stopped listening on.
    pub(crate) fn settle(&self, pid: i32, ops: &[ListenOp], backend: &BTreeSet<String>) -> Relisten {
        let mut clients = self.lock();
        let others: BTreeSet<String> =
            clients.iter().filter(|(p, _)| **p != pid).flat_map(|(_, l)| l.channels.iter().cloned()).collect();
        let Some(me) = clients.get_mut(&pid) else {
            return Relisten::default();
        };
        if ops.is_empty() {
            // Could not tell what ran: whatever the backend listens on that nobody did is this
            // client's, and what it stopped listening on is no longer.
            let before: BTreeSet<String> = others.union(&me.channels).cloned().collect();
            me.channels.extend(backend.difference(&before).cloned());
            me.channels.retain(|c| backend.contains(c));
        } else {
            for op in ops {
                match op {
                    ListenOp::Listen(channel) => {
                        me.channels.insert(channel.clone());
                    }
                    ListenOp::Unlisten(channel) => {
                        me.channels.remove(channel);
                    }
                    ListenOp::UnlistenAll => me.channels.clear(),
                }
            }
            // A LISTEN whose transaction rolled back left the backend as it was.
            me.channels.retain(|c| backend.contains(c) || others.contains(c));
        }
        let mut channels: Vec<String> = others.difference(backend).cloned().collect();
        // Its own channels the backend lost (rolled back with an UNLISTEN of someone else's).
        channels.extend(me.channels.iter().filter(|c| !backend.contains(*c) && !others.contains(*c)).cloned());
        Relisten { channels }
    }

    /// The channels `pid` listens on.
    #[cfg(test)]
    pub(crate) fn channels(&self, pid: i32) -> BTreeSet<String> {
        self.lock().get(&pid).map(|l| l.channels.clone()).unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Listener>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn listens_and_unlistens_are_per_client_and_the_backend_listens_on_the_union() {
        let hub = Hub::default();
        let mut a = hub.join(1);
        let mut b = hub.join(2);
        assert_eq!(hub.settle(1, &[ListenOp::Listen("x".into())], &set(&["x"])), Relisten::default());
        assert_eq!(hub.settle(2, &[ListenOp::Listen("x".into())], &set(&["x"])), Relisten::default());
        // B's UNLISTEN * made the backend stop listening on x, which A still needs.
        let relisten = hub.settle(2, &[ListenOp::UnlistenAll], &set(&[]));
        assert_eq!(relisten.channels, ["x"]);
        assert_eq!(hub.channels(2), set(&[]));
        assert_eq!(hub.publish(2, "x", "hi"), None);
        assert_eq!(a.try_recv().unwrap(), notification_frame(2, "x", "hi"));
        assert!(b.try_recv().is_err());
        // The sender gets its own with its answer, not through the channel.
        assert_eq!(hub.publish(1, "x", "me"), Some(notification_frame(1, "x", "me")));
        assert!(a.try_recv().is_err());
        // What only A listens on is for the backend to stop listening on when A leaves.
        hub.settle(2, &[ListenOp::Listen("z".into())], &set(&["x", "z"]));
        assert_eq!(hub.exclusive_channels(1), ["x"]);
        hub.settle(2, &[ListenOp::Listen("x".into())], &set(&["x", "z"]));
        assert!(hub.exclusive_channels(1).is_empty());
    }

    #[test]
    fn a_rolled_back_listen_does_not_count() {
        let hub = Hub::default();
        let _a = hub.join(1);
        hub.settle(1, &[ListenOp::Listen("y".into())], &set(&[]));
        assert_eq!(hub.channels(1), set(&[]));
    }
}
