//! The bus: publishes events with their in-RAM attachments, runs a request's request-path
//! stages into one atomic group, and correlates requests with the events that answer them.

use std::{collections::HashMap, sync::Arc, time::Duration};

use isnad_journal::{Entry, Journal, Receipt, Watermark};
use isnad_schemas::NewEvent;
use parking_lot::Mutex;
use tokio::{sync::oneshot, task::JoinHandle};

use crate::{Attachment, Error, Result};

struct Waiter {
    kinds: Vec<String>,
    reply: oneshot::Sender<Arc<Entry>>,
}

#[derive(Default)]
struct BusState {
    attachments: HashMap<String, Attachment>,
    waiters: HashMap<String, Vec<Waiter>>,
}

/// Publishes events, holds attachments and answers "tell me when request R has an event of kind K".
#[derive(Clone)]
pub struct Bus {
    journal: Journal,
    state: Arc<Mutex<BusState>>,
    correlator: Arc<std::sync::OnceLock<JoinHandle<()>>>,
}

impl Bus {
    /// A bus over `journal`.
    pub fn new(journal: Journal) -> Self {
        Self {
            journal,
            state: Arc::default(),
            correlator: Arc::default(),
        }
    }

    /// The correlator follows the log for [`Bus::wait_for`]. It starts with the first wait, so
    /// a bus nobody waits on (the gateway's: its requests get their answers over their own
    /// channel) does not wake up for every batch the journal sequences. Waits are registered
    /// before the awaited event is published, so starting from the log's end then misses none.
    fn start_correlator(&self) {
        self.correlator.get_or_init(|| {
            let mut sub = self
                .journal
                .subscribe(self.journal.len(), Watermark::Sequenced);
            let st = self.state.clone();
            tokio::spawn(async move {
                while let Ok(entry) = sub.next().await {
                    let Some(rid) = entry.event.request_id.as_deref() else {
                        continue;
                    };
                    let mut guard = st.lock();
                    let Some(waiters) = guard.waiters.get_mut(rid) else {
                        continue;
                    };
                    let mut i = 0;
                    while i < waiters.len() {
                        if waiters[i].kinds.iter().any(|k| *k == entry.event.kind) {
                            let w = waiters.swap_remove(i);
                            let _ = w.reply.send(entry.clone());
                        } else {
                            i += 1;
                        }
                    }
                    if waiters.is_empty() {
                        guard.waiters.remove(rid);
                    }
                }
                // Journal closed: dropping the waiters wakes everyone with `Closed`.
                st.lock().waiters.clear();
            })
        });
    }

    /// The journal beneath.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Keeps `attachment` in memory for request `request_id` until [`Bus::detach`].
    pub fn attach(&self, request_id: &str, attachment: Attachment) {
        self.state
            .lock()
            .attachments
            .insert(request_id.to_owned(), attachment);
    }

    /// Keeps `attachment` for request `request_id`, unless another request in flight holds that
    /// id ([`Error::RequestInFlight`]): one check, made atomically, for every caller.
    pub fn attach_new(&self, request_id: &str, attachment: Attachment) -> Result<()> {
        let mut st = self.state.lock();
        if st.attachments.contains_key(request_id) {
            return Err(Error::RequestInFlight(request_id.to_owned()));
        }
        st.attachments.insert(request_id.to_owned(), attachment);
        Ok(())
    }

    /// The attachment of a request still in flight in this process.
    pub fn attachment(&self, request_id: &str) -> Option<Attachment> {
        self.state.lock().attachments.get(request_id).cloned()
    }

    /// Drops a request's attachment (its data is gone from the process).
    pub fn detach(&self, request_id: &str) {
        self.state.lock().attachments.remove(request_id);
    }

    /// Number of attachments held (for metrics and leak tests).
    pub fn attachments_in_flight(&self) -> usize {
        self.state.lock().attachments.len()
    }

    /// Registers interest in the first event of one of `kinds` for `request_id`. Register before
    /// publishing the request so that the answer cannot be missed.
    pub fn wait_for(&self, request_id: &str, kinds: &[&str]) -> Pending {
        self.start_correlator();
        let (reply, rx) = oneshot::channel();
        self.state
            .lock()
            .waiters
            .entry(request_id.to_owned())
            .or_default()
            .push(Waiter {
                kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
                reply,
            });
        Pending {
            rx,
            request_id: request_id.to_owned(),
            kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
        }
    }

    /// Publishes an event (sequenced, visible to stages at once) with an optional attachment
    /// keyed by the event's request id. Durability is awaited separately, once per request.
    pub async fn publish(
        &self,
        event: NewEvent,
        attachment: Option<Attachment>,
    ) -> Result<Receipt> {
        if let (Some(a), Some(rid)) = (attachment, event.request_id.as_deref()) {
            self.attach(rid, a);
        }
        let mut receipts = self.journal.append_sequenced(vec![event]).await?;
        receipts.pop().ok_or(Error::Closed)
    }

    /// Submits a request's group (its `request.received` first, then what the policy stages
    /// emitted; see [`crate::policy::evaluate`]) as one atomic append: consecutive, all or none.
    /// Returns at once, so the caller can act on the decisions (call the chosen model) while the
    /// journal seals the group. `attachment` is kept under the request's id until
    /// [`Bus::detach`]; a request id that another request in flight holds is refused
    /// ([`Error::RequestInFlight`]) and nothing is appended.
    ///
    /// `durable`: a group that ends in a refusal is answered as soon as it is durable, so its
    /// flush starts at once; a group that goes on to a model shares the flush of its outcome.
    /// Anything the caller appends afterwards is sequenced after the group; nothing should be
    /// acknowledged outside before [`Submitted::sequenced`] and the durability of what follows.
    pub fn submit_group(
        &self,
        group: Vec<NewEvent>,
        attachment: Option<Attachment>,
        durable: bool,
    ) -> Result<Submitted> {
        let request_id = group.first().and_then(|e| e.request_id.clone());
        let attached = match (attachment, request_id.as_deref()) {
            (Some(a), Some(rid)) => {
                self.attach_new(rid, a)?;
                true
            }
            _ => false,
        };
        let events = group.clone();
        let submitted = if durable {
            self.journal.submit_durable(group)
        } else {
            self.journal.submit_sequenced(group)
        };
        match submitted {
            Ok(receipts) => Ok(Submitted {
                events,
                receipts,
                bus: self.clone(),
                request_id: request_id.filter(|_| attached),
            }),
            Err(e) => {
                if let (true, Some(rid)) = (attached, request_id.as_deref()) {
                    self.detach(rid);
                }
                Err(e.into())
            }
        }
    }
}

/// A request's group, queued to the journal by [`Bus::submit_group`].
pub struct Submitted {
    events: Vec<NewEvent>,
    receipts: oneshot::Receiver<isnad_journal::Result<Vec<Receipt>>>,
    bus: Bus,
    request_id: Option<String>,
}

impl Submitted {
    /// The group's events, the request's first, as they will be appended.
    pub fn events(&self) -> &[NewEvent] {
        &self.events
    }

    /// Resolves once the group is sequenced (durable, for a group that ends in a refusal), with
    /// one receipt per event. When the journal refuses the group, the request's attachment is
    /// dropped.
    pub async fn sequenced(self) -> Result<Vec<Receipt>> {
        let result = match self.receipts.await {
            Ok(r) => r.map_err(Error::from),
            Err(_) => Err(Error::Closed),
        };
        if result.is_err() {
            if let Some(rid) = self.request_id.as_deref() {
                self.bus.detach(rid);
            }
        }
        result
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        if Arc::strong_count(&self.correlator) == 1 {
            if let Some(task) = self.correlator.get() {
                task.abort();
            }
        }
    }
}

/// A correlated event still to come.
pub struct Pending {
    rx: oneshot::Receiver<Arc<Entry>>,
    request_id: String,
    kinds: Vec<String>,
}

impl Pending {
    /// Waits up to `timeout` for the event.
    pub async fn wait(self, timeout: Duration) -> Result<Arc<Entry>> {
        match tokio::time::timeout(timeout, self.rx).await {
            Ok(Ok(e)) => Ok(e),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout {
                request_id: self.request_id,
                kinds: self.kinds,
                timeout,
            }),
        }
    }
}
