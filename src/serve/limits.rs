//! What keeps the port bounded under hostile clients: a cap on open
//! connections (the oldest connection not inside a request makes room for a
//! new one, so idle and dripping connections cannot lock agents and probes
//! out), a small read buffer per connection, deadlines for the head and the
//! whole body, and a budget for the body bytes held over all connections.
//!
//! Worst case held by the port: `max_connections` × (read buffer + a task)
//! plus `max_body_bytes_in_flight` (docs/BENCHMARKS.md has the measured
//! figures).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// hyper's read buffer per connection; a request head must fit in it.
pub const READ_BUFFER_BYTES: usize = 16 * 1024;

/// The port's limits; the defaults suit the operator (256 MiB) and
/// standalone mode alike.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// A client must send its request head within this time, also between
    /// requests on a kept-alive connection.
    pub header_read_timeout: Duration,
    /// A client must deliver the whole body within this time once its head is read.
    pub body_read_timeout: Duration,
    /// Body bytes held at once over all connections; a request that does not
    /// fit is answered 503 (retry) before its body is read.
    pub max_body_bytes_in_flight: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_body_bytes_in_flight: 16 * 1024 * 1024,
        }
    }
}

/// The peer of a request, put in its extensions by the connection.
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub SocketAddr);

/// Marks a connection as inside a request (its report read, the receiver
/// deciding): such a connection is never closed to make room. Also marks
/// it while it reads a body, so a body that cannot get its bytes from the
/// budget can close the oldest such reader.
#[derive(Clone, Debug, Default)]
pub struct InRequest {
    inside: Arc<AtomicBool>,
    reading: Arc<AtomicBool>,
    id: u64,
    slots: Option<ConnectionSlots>,
}

impl InRequest {
    pub fn enter(&self) {
        self.inside.store(true, Ordering::Release);
    }
    pub fn leave(&self) {
        self.inside.store(false, Ordering::Release);
        self.reading.store(false, Ordering::Release);
    }
    fn inside(&self) -> bool {
        self.inside.load(Ordering::Acquire)
    }
    /// While set, this connection holds body bytes of the budget.
    pub fn reading_body(&self, reading: bool) {
        self.reading.store(reading, Ordering::Release);
    }
    /// Closes the oldest other connection reading a body, which gives its
    /// bytes back to the budget. False when there is none.
    pub fn evict_oldest_reader(&self) -> bool {
        self.slots
            .as_ref()
            .is_some_and(|slots| slots.evict_oldest_reader(self.id))
    }
}

impl std::fmt::Debug for ConnectionSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionSlots")
            .field("cap", &self.cap)
            .finish()
    }
}

#[derive(Clone, Default)]
struct Shared {
    in_request: InRequest,
    evict: Arc<Notify>,
}

#[derive(Default)]
struct Open {
    next: u64,
    /// By age: the smallest id is the oldest connection.
    slots: BTreeMap<u64, Shared>,
}

/// The open connections, up to a cap.
#[derive(Clone)]
pub struct ConnectionSlots {
    open: Arc<Mutex<Open>>,
    cap: usize,
}

impl ConnectionSlots {
    pub fn new(cap: usize) -> Self {
        ConnectionSlots {
            open: Arc::default(),
            cap: cap.max(1),
        }
    }

    /// A slot for a new connection. When all are taken, the oldest
    /// connection not inside a request is told to close and gives its slot;
    /// `None` when every connection is inside a request.
    pub fn open(&self) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.slots.len() >= self.cap {
            let oldest_idle = open
                .slots
                .iter()
                .find(|(_, s)| !s.in_request.inside())
                .map(|(id, _)| *id)?;
            if let Some(evicted) = open.slots.remove(&oldest_idle) {
                evicted.evict.notify_one();
            }
        }
        let id = open.next;
        open.next += 1;
        let shared = Shared {
            in_request: InRequest {
                id,
                slots: Some(self.clone()),
                ..InRequest::default()
            },
            evict: Arc::default(),
        };
        open.slots.insert(id, shared.clone());
        Some(Slot {
            id,
            shared,
            open: Arc::clone(&self.open),
        })
    }

    fn evict_oldest_reader(&self, except: u64) -> bool {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = open
            .slots
            .iter()
            .find(|(id, s)| {
                **id != except
                    && !s.in_request.inside()
                    && s.in_request.reading.load(Ordering::Acquire)
            })
            .map(|(id, _)| *id);
        match oldest.and_then(|id| open.slots.remove(&id)) {
            Some(evicted) => {
                evicted.evict.notify_one();
                true
            }
            None => false,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.open.lock().unwrap().slots.len()
    }
}

/// One connection's place; given back when dropped.
pub struct Slot {
    id: u64,
    shared: Shared,
    open: Arc<Mutex<Open>>,
}

impl Slot {
    pub fn in_request(&self) -> InRequest {
        self.shared.in_request.clone()
    }

    /// Completes when the connection must close to make room.
    pub async fn evicted(&self) {
        self.shared.evict.notified().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.slots.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_oldest_idle_connection_makes_room_and_busy_ones_stay() {
        let slots = ConnectionSlots::new(2);
        let first = slots.open().unwrap();
        let second = slots.open().unwrap();
        first.in_request().enter();
        let third = slots.open().expect("the idle second connection makes room");
        tokio::time::timeout(Duration::from_secs(1), second.evicted())
            .await
            .expect("the second connection is told to close");
        assert_eq!(slots.len(), 2);
        third.in_request().enter();
        assert!(
            slots.open().is_none(),
            "every connection is inside a request"
        );
        first.in_request().leave();
        let fourth = slots.open().expect("the first is idle again");
        drop(second);
        assert_eq!(slots.len(), 2);
        drop((first, third, fourth));
        assert_eq!(slots.len(), 0);
    }
}
