//! Run slots shared per client, so that one client's requests and jobs cannot take every slot
//! from the others.
//!
//! A client is the address it connects from (the server has one API key, which every client
//! shares, so the key cannot tell them apart). Each client may hold at most its share of the
//! run slots (`--max-client-slots`): beyond it a synchronous request gets 429, and a job stays
//! queued until one of its client's runs ends, while other clients' work takes the free slots.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Who sent a request, for sharing run slots.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Client(String);

impl Client {
    /// The client connecting from `ip`.
    pub fn at(ip: IpAddr) -> Self {
        Client(ip.to_string())
    }

    /// The client of the request being handled, as the auth layer recorded it.
    pub fn current() -> Option<Client> {
        CURRENT.try_with(Client::clone).ok()
    }

    /// Runs `f` as a request of this client.
    pub async fn scope<F: std::future::Future>(self, f: F) -> F::Output {
        CURRENT.scope(self, f).await
    }
}

tokio::task_local! {
    static CURRENT: Client;
}

/// A run slot, and the share of its client it counts against.
pub(crate) struct Slot {
    _run: OwnedSemaphorePermit,
    _share: Option<OwnedSemaphorePermit>,
}

impl Slot {
    pub(crate) fn new(run: OwnedSemaphorePermit, share: Option<OwnedSemaphorePermit>) -> Self {
        Slot {
            _run: run,
            _share: share,
        }
    }
}

/// Clients forgotten once this many are known (those holding no slot go).
const PRUNE_AT: usize = 1024;

/// Each client's share of the run slots.
pub struct Shares {
    per_client: usize,
    clients: Mutex<HashMap<Client, Arc<Semaphore>>>,
}

impl Shares {
    /// Shares of `per_client` slots each (at least 1).
    pub fn new(per_client: usize) -> Self {
        Shares {
            per_client: per_client.max(1),
            clients: Mutex::default(),
        }
    }

    pub fn per_client(&self) -> usize {
        self.per_client
    }

    fn share(&self, client: &Client) -> Arc<Semaphore> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.len() >= PRUNE_AT {
            clients.retain(|_, s| Arc::strong_count(s) > 1);
        }
        clients
            .entry(client.clone())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_client)))
            .clone()
    }

    /// One of `client`'s share now, or `None` when it holds all of it.
    pub(crate) fn try_take(&self, client: &Client) -> Option<OwnedSemaphorePermit> {
        self.share(client).try_acquire_owned().ok()
    }

    /// One of `client`'s share, once one of its runs ends.
    pub async fn take(&self, client: &Client) -> Option<OwnedSemaphorePermit> {
        self.share(client).acquire_owned().await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_client_holds_at_most_its_share() {
        let shares = Shares::new(2);
        let (a, b) = (Client::at([10, 0, 0, 1].into()), Client::at([10, 0, 0, 2].into()));
        let held: Vec<_> = (0..2).map(|_| shares.try_take(&a).unwrap()).collect();
        assert!(shares.try_take(&a).is_none());
        assert!(shares.try_take(&b).is_some());
        drop(held);
        assert!(shares.take(&a).await.is_some());
    }
}
