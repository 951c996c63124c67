//! Readiness of many sockets for one task, without a task per socket.
//!
//! Each binding's upstream socket is polled with its own [`Waker`]
//! ([`BindingWaker`]): waking it queues the binding's id in a [`ReadyQueue`]
//! and wakes the relay task, which then reads only the sockets that are
//! ready, never scanning all its bindings. A binding so costs one small
//! allocation instead of a task with its own future, channel and buffers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Wake;

use tokio::sync::Notify;

/// Ids of bindings whose sockets became ready, for the task that owns them.
#[derive(Debug, Default)]
pub(crate) struct ReadyQueue {
    ids: Mutex<Vec<u32>>,
    notify: Notify,
}

impl ReadyQueue {
    /// Resolves once an id has been queued since the last call (a wake-up
    /// that came while nobody waited is kept, not lost).
    pub(crate) async fn wait(&self) {
        self.notify.notified().await;
    }

    /// Moves the queued ids into `out`, which is cleared first (its capacity
    /// is handed back to the queue, so neither side reallocates in steady
    /// state).
    pub(crate) fn take(&self, out: &mut Vec<u32>) {
        out.clear();
        let mut ids = self.ids.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::swap(out, &mut *ids);
    }

    fn push(&self, id: u32) {
        self.ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(id);
        self.notify.notify_one();
    }
}

/// The waker of one binding: queues its id at most once until the owner
/// calls [`BindingWaker::handling`], so the queue holds each id at most once
/// (it never grows beyond the number of bindings).
#[derive(Debug)]
pub(crate) struct BindingWaker {
    id: u32,
    queued: AtomicBool,
    queue: Arc<ReadyQueue>,
}

impl BindingWaker {
    pub(crate) fn new(id: u32, queue: Arc<ReadyQueue>) -> Arc<Self> {
        Arc::new(Self {
            id,
            queued: AtomicBool::new(false),
            queue,
        })
    }

    /// The owner took the id off the queue and is about to read the socket:
    /// any wake from now on queues it again.
    pub(crate) fn handling(&self) {
        self.queued.store(false, Ordering::Release);
    }
}

impl Wake for BindingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.queue.push(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;

    #[test]
    fn an_id_is_queued_once_until_handled() {
        let queue = Arc::new(ReadyQueue::default());
        let a = BindingWaker::new(7, Arc::clone(&queue));
        let b = BindingWaker::new(9, Arc::clone(&queue));
        let wa = Waker::from(Arc::clone(&a));
        wa.wake_by_ref();
        wa.wake_by_ref();
        Waker::from(Arc::clone(&b)).wake();
        let mut ids = Vec::new();
        queue.take(&mut ids);
        assert_eq!(ids, [7, 9]);
        wa.wake_by_ref();
        queue.take(&mut ids);
        assert!(ids.is_empty(), "7 is still being handled");
        a.handling();
        wa.wake_by_ref();
        queue.take(&mut ids);
        assert_eq!(ids, [7]);
    }

    #[tokio::test]
    async fn a_wake_before_the_wait_is_kept() {
        let queue = Arc::new(ReadyQueue::default());
        Waker::from(BindingWaker::new(1, Arc::clone(&queue))).wake();
        queue.wait().await;
        let mut ids = Vec::new();
        queue.take(&mut ids);
        assert_eq!(ids, [1]);
    }
}
