//! The handle the runtime holds ([`Journal`]) and the one writer thread behind it.
//!
//! SQLite is blocking, so the store lives on a thread of its own. Callers put entries in a
//! queue bounded in bytes (see `queue`) and return; the writer takes everything queued, writes
//! it as one transaction, then answers those waiting on it. Between batches, and only when
//! nothing is queued, it prunes old runs a few at a time.
//!
//! Group commit: a batch is written as soon as someone waits on it ([`Journal::durable`],
//! [`Journal::flush`]); entries nobody waits on (events, tool calls, starts) are held up to
//! [`COMMIT_DELAY`] or [`COMMIT_BYTES`] first, so that the entries of a short call and its
//! durable end share one transaction and one sync of the log instead of one each. What is
//! held is what a crash of this process could lose anyway (it was never promised durable);
//! the delay bounds how much.
//!
//! A batch that fails (a full disk) is rolled back whole: its waiters get the error, the
//! entries nobody waited on are gone (logged), and the writer goes on with the next batch.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::queue::{dropped_event, Item, Queue};
use super::{now_ms, Entry, JournalError, Reader, ReaderSource, Recovered, Store};

/// What the queue may hold of droppable entries (events, tool calls), in bytes.
pub const QUEUE_LIMIT_BYTES: usize = 64 << 20;

/// How long entries nobody waits on may be held before they are written.
pub const COMMIT_DELAY: Duration = Duration::from_millis(10);

/// Held entries past this many bytes are written at once.
pub const COMMIT_BYTES: usize = 1 << 20;

/// Runs deleted per pruning step (one short transaction).
const PRUNE_STEP: usize = 64;

/// How often retention looks for old runs once it found none.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// The journal: cheap to clone, safe to use from any task or thread. The writer finishes what
/// is queued and stops when the last clone is dropped (the drop waits for it).
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("recovered", &self.inner.shared.recovered)
            .finish_non_exhaustive()
    }
}

/// Owned by the handles; dropping it stops the writer.
struct Inner {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// Shared by the handles and the writer.
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    recovered: Recovered,
    readers: ReaderSource,
    /// Retention: runs that ended longer ago than this are pruned.
    keep: Mutex<Option<Duration>>,
    /// Told how long each batch's commit took (`Journal::observe_commits`).
    commits: Mutex<Option<CommitObserver>>,
}

/// What [`Journal::observe_commits`] is given: the time of one batch's commit.
pub type CommitObserver = Arc<dyn Fn(Duration) + Send + Sync>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Journal {
    /// Opens (creates, migrates) the SQLite journal at `path` (`<state_dir>/corral.db`),
    /// refuses a newer schema, marks what a dead supervisor left unfinished, and starts the
    /// writer.
    pub fn open(path: &std::path::Path) -> Result<Journal, JournalError> {
        Journal::open_synced(path, true)
    }

    /// [`Journal::open`], syncing at every commit (`full`) or not (`[supervisor]
    /// journal_sync`; see the SQLite store's docs).
    pub fn open_synced(path: &std::path::Path, full: bool) -> Result<Journal, JournalError> {
        let store = super::sqlite::SqliteStore::open_synced(path, full)?;
        Journal::open_with(Box::new(store))
    }

    /// Starts a journal over any store: marks what a dead supervisor left unfinished, then
    /// starts the writer thread.
    pub fn open_with(mut store: Box<dyn Store>) -> Result<Journal, JournalError> {
        Journal::open_with_limit(
            store.as_mut().mark_unfinished(now_ms())?,
            store,
            QUEUE_LIMIT_BYTES,
        )
    }

    /// [`Journal::open_with`] with a queue limit of `limit` bytes (tests use small ones).
    pub(crate) fn open_with_limit(
        recovered: Recovered,
        store: Box<dyn Store>,
        limit: usize,
    ) -> Result<Journal, JournalError> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::new(limit)),
            wake: Condvar::new(),
            recovered,
            readers: store.readers(),
            keep: Mutex::new(None),
            commits: Mutex::new(None),
        });
        let for_thread = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("corral-journal".into())
            .spawn(move || write_loop(&for_thread, store))
            .map_err(|source| JournalError::Io {
                op: "start the journal's writer thread",
                path: std::path::PathBuf::new(),
                source,
            })?;
        Ok(Journal {
            inner: Arc::new(Inner {
                shared,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// Call `f` with the time each batch of writes took to commit, from now on (the daemon's
    /// `journal_write_seconds`).
    pub fn observe_commits(&self, f: CommitObserver) {
        *lock(&self.inner.shared.commits) = Some(f);
    }

    /// Queues an entry and returns at once. Past the queue's byte limit, events and tool calls
    /// are counted instead of queued (and recorded as a `dropped` event of their run).
    pub fn append(&self, e: Entry) {
        self.push(Item::Entry(e));
    }

    /// Queues an entry and resolves once the transaction holding it committed: the entry is
    /// then on disk and survives a crash of this process.
    pub async fn durable(&self, e: Entry) -> Result<(), JournalError> {
        let (tx, rx) = oneshot::channel();
        if !self.push(Item::Durable(e, tx)) {
            return Err(JournalError::Closed);
        }
        rx.await.unwrap_or(Err(JournalError::Closed))
    }

    /// Queues `entries` at once, in order, and resolves once the transactions holding them
    /// committed (usually one: what is queued together is written together), with the first
    /// error if any.
    pub fn durable_many(
        &self,
        entries: Vec<Entry>,
    ) -> impl std::future::Future<Output = Result<(), JournalError>> + Send + 'static {
        let waits: Vec<_> = entries
            .into_iter()
            .map(|e| {
                let (tx, rx) = oneshot::channel();
                (self.push(Item::Durable(e, tx)), rx)
            })
            .collect();
        async move {
            for (queued, rx) in waits {
                if !queued {
                    return Err(JournalError::Closed);
                }
                rx.await.unwrap_or(Err(JournalError::Closed))?;
            }
            Ok(())
        }
    }

    /// Resolves once everything queued before it is committed.
    pub async fn flush(&self) -> Result<(), JournalError> {
        let (tx, rx) = oneshot::channel();
        if !self.push(Item::Flush(tx)) {
            return Err(JournalError::Closed);
        }
        rx.await.unwrap_or(Err(JournalError::Closed))
    }

    /// A reader with a connection of its own.
    pub fn reader(&self) -> Result<Box<dyn Reader + Send>, JournalError> {
        (self.inner.shared.readers)()
    }

    /// What opening found left unfinished by a supervisor that is gone.
    pub fn recovered(&self) -> Recovered {
        self.inner.shared.recovered
    }

    /// Deletes, from now on, finished runs that ended more than `keep` ago (`[supervisor]
    /// journal_keep`): in the writer, a few runs at a time between batches, never holding up
    /// an append.
    pub fn start_pruning(&self, keep: Duration) {
        *lock(&self.inner.shared.keep) = Some(keep);
        self.inner.shared.wake.notify_one();
    }

    /// Queues an item; `false` if the writer is gone or the item was dropped.
    fn push(&self, item: Item) -> bool {
        let shared = &self.inner.shared;
        let mut q = lock(&shared.queue);
        if q.closed {
            return false;
        }
        // The writer is woken for what it must act on now: the first item (it starts the
        // delay), an item someone waits on, or a batch grown past its size.
        let first = q.is_empty();
        let queued = q.push(item);
        let wake = first || q.awaited() || q.bytes() >= COMMIT_BYTES;
        drop(q);
        if wake {
            shared.wake.notify_one();
        }
        queued
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        lock(&self.shared.queue).closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = lock(&self.thread).take() {
            if thread.join().is_err() {
                tracing::error!("the journal's writer thread panicked");
            }
        }
    }
}

/// The writer: batches until closed and drained.
fn write_loop(shared: &Shared, mut store: Box<dyn Store>) {
    let mut next_prune = Instant::now();
    let mut pruning = false;
    loop {
        let (items, dropped, untracked) = {
            let mut q = lock(&shared.queue);
            loop {
                if q.closed {
                    break;
                }
                if !q.is_empty() {
                    // Written now when awaited or large, else once the oldest is old enough.
                    let due = match q.since() {
                        Some(since) if !q.awaited() && q.bytes() < COMMIT_BYTES => {
                            (since + COMMIT_DELAY).checked_duration_since(Instant::now())
                        }
                        _ => None,
                    };
                    match due {
                        None => break,
                        Some(wait) => {
                            q = shared
                                .wake
                                .wait_timeout(q, wait)
                                .unwrap_or_else(PoisonError::into_inner)
                                .0;
                            continue;
                        }
                    }
                }
                let keep = *lock(&shared.keep);
                if keep.is_some() && (pruning || Instant::now() >= next_prune) {
                    break;
                }
                q = match keep {
                    Some(_) => {
                        let wait = next_prune.saturating_duration_since(Instant::now());
                        shared
                            .wake
                            .wait_timeout(q, wait)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0
                    }
                    None => shared.wake.wait(q).unwrap_or_else(PoisonError::into_inner),
                };
            }
            if q.is_empty() && q.closed {
                break;
            }
            let untracked = std::mem::take(&mut q.dropped_untracked);
            let (items, dropped) = q.take();
            (items, dropped, untracked)
        };
        if untracked > 0 {
            tracing::warn!(untracked, "journal queue full: entries dropped");
        }
        if items.is_empty() && dropped.is_empty() {
            // Nothing queued: one pruning step.
            let keep = *lock(&shared.keep);
            if let Some(keep) = keep {
                let cutoff =
                    now_ms().saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX));
                match store.prune(cutoff, PRUNE_STEP) {
                    Ok(n) => pruning = n >= PRUNE_STEP as u64,
                    Err(e) => {
                        tracing::warn!(error = %e, "journal: pruning failed");
                        pruning = false;
                    }
                }
                if !pruning {
                    next_prune = Instant::now() + PRUNE_EVERY;
                }
            }
            continue;
        }
        let observer = lock(&shared.commits).clone();
        write_batch(store.as_mut(), items, dropped, observer.as_deref());
    }
    if let Err(e) = store.checkpoint() {
        tracing::debug!(error = %e, "journal: checkpoint at close failed");
    }
}

/// Writes one batch and answers its waiters.
fn write_batch(
    store: &mut dyn Store,
    items: Vec<Item>,
    dropped: std::collections::BTreeMap<String, super::queue::Dropped>,
    observer: Option<&(dyn Fn(Duration) + Send + Sync)>,
) {
    let mut batch = Vec::with_capacity(items.len() + dropped.len());
    let mut acks = Vec::new();
    for item in items {
        match item {
            Item::Entry(e) => batch.push(e),
            Item::Durable(e, ack) => {
                batch.push(e);
                acks.push(ack);
            }
            Item::Flush(ack) => acks.push(ack),
        }
    }
    let at = now_ms();
    batch.extend(
        dropped
            .into_iter()
            .map(|(run_id, d)| dropped_event(run_id, d, at)),
    );
    let result = if batch.is_empty() {
        Ok(())
    } else {
        let t = Instant::now();
        let r = store.append(&batch);
        if let (Ok(()), Some(f)) = (&r, observer) {
            f(t.elapsed());
        }
        r
    };
    match result {
        Ok(()) => {
            for ack in acks {
                let _ = ack.send(Ok(()));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, entries = batch.len(), "journal: a batch was not written");
            for ack in acks {
                let _ = ack.send(Err(e.for_waiter()));
            }
        }
    }
}

#[cfg(test)]
impl Journal {
    /// Bytes queued now (tests of the bound).
    pub(crate) fn queued_bytes(&self) -> usize {
        lock(&self.inner.shared.queue).bytes()
    }
}
