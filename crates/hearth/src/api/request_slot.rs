//! A request's place under `max_concurrent_requests`. The server's concurrency layer
//! (`server.rs`) takes one for each request and puts it in the request's extensions; a
//! handler that is about to wait for something other than work (a `/sync` long-poll) gives
//! it back and takes one again before it works. It lives here, below the server, so that
//! the handlers that use it do not import the server that calls them.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A request's place under `max_concurrent_requests`, in its extensions. A handler that
/// is about to wait for something other than work (a `/sync` long-poll) releases it and
/// takes a place again before working.
#[derive(Clone)]
pub struct RequestSlot {
    slots: Arc<Semaphore>,
    permit: Arc<parking_lot::Mutex<Option<OwnedSemaphorePermit>>>,
}

impl RequestSlot {
    /// The place held by `permit`, taken from `slots`.
    pub fn new(slots: Arc<Semaphore>, permit: OwnedSemaphorePermit) -> Self {
        RequestSlot { slots, permit: Arc::new(parking_lot::Mutex::new(Some(permit))) }
    }

    pub fn release(&self) {
        self.permit.lock().take();
    }

    pub async fn reacquire(&self) {
        if self.permit.lock().is_some() {
            return;
        }
        if let Ok(p) = self.slots.clone().acquire_owned().await {
            *self.permit.lock() = Some(p);
        }
    }
}
