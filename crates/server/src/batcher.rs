//! Dynamic batching: one dedicated thread owns inference.
//!
//! Model inference is CPU-bound (candle's matmuls and the baseline's rayon
//! chunks already use every core), so it never runs on tokio workers.
//! Handlers admit a request through a semaphore counted in *cases* (full:
//! 429 at once, so the queue is bounded), push it on a channel and await a
//! oneshot. The thread takes the first waiting request, gathers more until
//! the batch budget (cases, characters or encoder tokens) is reached or `max_wait` has passed
//! since the first was queued or the model became free (waiting only while
//! more requests are expected, see `model_loop`), runs the model once, and
//! answers each request.
//! Work whose caller has gone (missed its deadline, disconnected) leaves the
//! queue at once, with its admission ticket, so it is never computed and
//! never holds capacity that a live request needs (a job already gathered
//! into a batch is still skipped before the model runs). After
//! text-embeddings-inference `core/src/queue.rs`.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use casetag_core::Transcript;
use casetag_engine::{Tagged, Tagger};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::error::{ApiError, ErrorKind};
use crate::metrics::{FallbackReason, Metrics};
use crate::models::{panic_message, ModelSlot};
use crate::Limits;

/// A batch's answer for one request: the tagged cases and the tagger that
/// produced them (for the response's `model` field).
pub(crate) struct Answer {
    pub tagged: Vec<Tagged>,
    pub tagger: Arc<Tagger>,
}

pub(crate) type Reply = Result<Answer, ApiError>;

/// One request waiting for the model.
struct Job {
    id: u64,
    cases: Arc<Vec<Transcript>>,
    /// What the job weighs against the batch budget.
    load: Load,
    top_k: usize,
    queued_at: Instant,
    reply: oneshot::Sender<Reply>,
    /// Held until the job is answered or dropped: the admission ticket.
    _permit: OwnedSemaphorePermit,
}

impl Job {
    fn gone(&self) -> bool {
        self.reply.is_closed()
    }

    /// Answer the caller. The admission ticket is returned first: a caller
    /// that gets its answer and at once sends the next request must find
    /// the capacity free again.
    fn finish(self, r: Reply) {
        let Job { reply, _permit, .. } = self;
        drop(_permit);
        // The caller may have gone meanwhile; nothing to do then.
        let _ = reply.send(r);
    }
}

/// The queue between handlers and the model thread. A job leaves it either
/// to the model thread or, when its caller gives up, by [`Pending`]'s drop.
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    /// Signalled when a job is pushed or the queue is closed.
    pushed: Condvar,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    /// Cases in `jobs` (the queue depth).
    cases: usize,
    next_id: u64,
    /// Every handle is gone: the model thread stops.
    closed: bool,
}

impl QueueState {
    fn pop(&mut self) -> Option<Job> {
        let j = self.jobs.pop_front()?;
        self.cases -= j.cases.len();
        Some(j)
    }
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next job without waiting.
    fn try_pop(&self) -> Option<Job> {
        self.lock().pop()
    }

    /// The next job, waiting for one; `None` once closed.
    fn pop_wait(&self) -> Option<Job> {
        let mut st = self.lock();
        loop {
            if let Some(j) = st.pop() {
                return Some(j);
            }
            if st.closed {
                return None;
            }
            st = self.pushed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The next job, waiting until `until` at most.
    fn pop_until(&self, until: Instant) -> Option<Job> {
        let mut st = self.lock();
        loop {
            if let Some(j) = st.pop() {
                return Some(j);
            }
            let now = Instant::now();
            if st.closed || now >= until {
                return None;
            }
            st = self
                .pushed
                .wait_timeout(st, until - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Take job `id` out of the queue if the model thread has not taken it.
    fn remove(&self, id: u64) -> Option<Job> {
        let mut st = self.lock();
        let at = st.jobs.iter().position(|j| j.id == id)?;
        let j = st.jobs.remove(at)?;
        st.cases -= j.cases.len();
        Some(j)
    }

    fn close(&self) {
        self.lock().closed = true;
        self.pushed.notify_all();
    }
}

/// A queued request's claim on its answer. Dropping it before the answer
/// came (deadline, client gone) takes the job out of the queue, returning
/// its capacity at once.
pub(crate) struct Pending {
    id: u64,
    rx: oneshot::Receiver<Reply>,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
}

impl std::future::Future for Pending {
    type Output = Result<Reply, oneshot::error::RecvError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.rx).poll(cx)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Answered or being computed: nothing in the queue to remove.
        if let Some(job) = self.queue.remove(self.id) {
            self.metrics.dropped_job();
            // Dropped outside the lock: returns the admission ticket.
            drop(job);
        }
    }
}

/// The handlers' side of the batcher.
pub(crate) struct Batcher {
    queue: Arc<Queue>,
    /// To count a request's tokens with the model that will run it.
    models: Arc<ModelSlot>,
    permits: Arc<Semaphore>,
    capacity: usize,
    metrics: Arc<Metrics>,
}

impl Drop for Batcher {
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// What a batch holds, in the units its budget counts.
#[derive(Clone, Copy, Default)]
struct Load {
    cases: usize,
    chars: usize,
    /// Encoder tokens (0 for a model that does not tokenize).
    tokens: usize,
}

impl Load {
    fn plus(self, o: Load) -> Load {
        Load {
            cases: self.cases + o.cases,
            chars: self.chars + o.chars,
            tokens: self.tokens + o.tokens,
        }
    }

    /// Within `max` in every unit.
    fn within(self, max: Load) -> bool {
        self.cases <= max.cases && self.chars <= max.chars && self.tokens <= max.tokens
    }

    /// Below `max` in every unit: room for more.
    fn below(self, max: Load) -> bool {
        self.cases < max.cases && self.chars < max.chars && self.tokens < max.tokens
    }
}

/// Budget of one batch.
#[derive(Clone, Copy)]
struct Budget {
    max: Load,
    wait: Duration,
    batching: bool,
}

impl Batcher {
    /// Start the model thread. It ends when the last `Batcher` handle is
    /// dropped (the channel closes).
    pub fn spawn(
        models: Arc<ModelSlot>,
        limits: &Limits,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let queue = Arc::new(Queue::default());
        let budget = Budget {
            max: Load {
                cases: limits.max_batch_cases,
                chars: limits.max_batch_chars,
                tokens: limits.max_batch_tokens,
            },
            wait: Duration::from_millis(limits.max_wait_ms),
            batching: !limits.no_batching,
        };
        let (q, m, slot) = (queue.clone(), metrics.clone(), models.clone());
        std::thread::Builder::new()
            .name("casetag-model".into())
            .spawn(move || model_loop(&q, slot, m, budget))?;
        Ok(Self {
            queue,
            models,
            permits: Arc::new(Semaphore::new(limits.queue_capacity)),
            capacity: limits.queue_capacity,
            metrics,
        })
    }

    /// Queue a request or refuse it at once (429) when the queue is full.
    pub fn submit(&self, cases: Arc<Vec<Transcript>>, top_k: usize) -> Result<Pending, ApiError> {
        let n = u32::try_from(cases.len()).unwrap_or(u32::MAX);
        let permit = self
            .permits
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| {
                ApiError::new(
                    ErrorKind::Overloaded,
                    format!(
                        "the queue is full ({} cases in flight, capacity {}); retry shortly",
                        self.in_flight(),
                        self.capacity
                    ),
                )
            })?;
        let (reply, rx) = oneshot::channel();
        let load = Load {
            cases: cases.len(),
            chars: cases.iter().map(|c| c.text.chars().count()).sum(),
            // Counted here, on the handler's thread, so the model thread
            // only runs the model.
            tokens: self
                .models
                .get()
                .and_then(|t| t.tokens(&cases))
                .unwrap_or(0),
        };
        let mut st = self.queue.lock();
        if st.closed {
            return Err(ApiError::internal("the model thread has stopped"));
        }
        let id = st.next_id;
        st.next_id += 1;
        st.cases += cases.len();
        st.jobs.push_back(Job {
            id,
            cases,
            load,
            top_k,
            queued_at: Instant::now(),
            reply,
            _permit: permit,
        });
        drop(st);
        self.queue.pushed.notify_one();
        Ok(Pending {
            id,
            rx,
            queue: self.queue.clone(),
            metrics: self.metrics.clone(),
        })
    }

    /// Cases waiting for the model.
    pub fn queue_depth(&self) -> usize {
        self.queue.lock().cases
    }

    /// Cases admitted and not yet answered (queued or in the model).
    pub fn in_flight(&self) -> usize {
        self.capacity
            .saturating_sub(self.permits.available_permits())
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

fn model_loop(queue: &Queue, models: Arc<ModelSlot>, metrics: Arc<Metrics>, budget: Budget) {
    // A request that did not fit the previous batch starts the next one.
    let mut carry: Option<Job> = None;
    // Requests the next batch can expect: those answered by the previous
    // batch (their clients are likely to come straight back) plus those
    // that were already waiting when it ended.
    let mut expected = 1usize;
    // When the previous batch was answered.
    let mut last_end = Instant::now();
    loop {
        let first = match carry.take() {
            Some(j) => j,
            None => match recv_soon(queue, last_end, expected <= 1) {
                Some(j) => j,
                None => break, // every handle dropped: shut down
            },
        };
        if first.gone() {
            metrics.dropped_job();
            continue;
        }
        let mut load = first.load;
        // Waiting for company costs latency, so it is only worth it while
        // company is expected: the batch waits (at most `wait` after its
        // first request was queued or the model became free, whichever is
        // later) until it has the expected number of requests, then only
        // takes what is already queued. A lone client never waits; N
        // clients in lock-step are gathered as soon as all N are back; and
        // when clients have drifted into two groups that take turns on the
        // model (each waiting out the other's batch), the group that was
        // waiting also waits for the one just answered, so that the next
        // batch holds both and they are in step again.
        let until = first.queued_at.max(last_end) + budget.wait;
        let mut batch = vec![first];
        while budget.batching && load.below(budget.max) {
            let now = Instant::now();
            let next = if batch.len() >= expected || now >= until {
                queue.try_pop()
            } else {
                queue.pop_until(until)
            };
            let Some(next) = next else { break };
            if next.gone() {
                metrics.dropped_job();
                continue;
            }
            let with = load.plus(next.load);
            if !with.within(budget.max) {
                carry = Some(next);
                break;
            }
            load = with;
            batch.push(next);
        }
        let gathered = batch.len();
        // Callers may have left while we were gathering.
        batch.retain(|j| {
            let keep = !j.gone();
            if !keep {
                metrics.dropped_job();
            }
            keep
        });
        if batch.is_empty() {
            continue;
        }
        match models.get() {
            Some(tagger) => run_batch(&tagger, batch, &metrics),
            None => {
                for j in batch {
                    j.finish(Err(ApiError::new(
                        ErrorKind::NotReady,
                        "no model is loaded yet",
                    )));
                }
            }
        }
        last_end = Instant::now();
        expected = gathered + usize::from(carry.is_some()) + queue.lock().jobs.len();
    }
}

/// How long the model thread keeps polling for the next request after
/// answering a lone request, before it blocks. A closed-loop client is back
/// within a few hundred microseconds; polling (yielding the core to anyone
/// who needs it) spares the thread a sleep and a wake-up per request, which
/// cost more than the baseline model itself (one client: ≈3,400 → ≈7,500
/// requests/s). With several clients the next request is usually queued
/// already, and polling would only take CPU from the HTTP workers (measured:
/// 8 clients lost ≈20%), so then the thread blocks at once.
const POLL_AFTER_BATCH: Duration = Duration::from_micros(300);

/// The next request: polled for a moment after a lone request's batch
/// (`poll`), then waited for.
fn recv_soon(queue: &Queue, last_end: Instant, poll: bool) -> Option<Job> {
    while poll && last_end.elapsed() < POLL_AFTER_BATCH {
        match queue.try_pop() {
            Some(j) => return Some(j),
            None => std::thread::yield_now(),
        }
    }
    queue.pop_wait()
}

/// Run the model on `cases`, catching panics so the thread survives.
fn guarded_tag(
    tagger: &Tagger,
    cases: &[Transcript],
    top_k: usize,
    metrics: &Metrics,
) -> Result<Vec<Tagged>, ApiError> {
    match catch_unwind(AssertUnwindSafe(|| tagger.tag(cases, top_k))) {
        Ok(Ok(t)) if t.len() == cases.len() => Ok(t),
        Ok(Ok(t)) => Err(ApiError::internal(format!(
            "the model returned {} results for {} cases",
            t.len(),
            cases.len()
        ))),
        Ok(Err(e)) => Err(ApiError::internal(format!("model failure: {e}"))),
        Err(p) => {
            metrics.model_panic();
            let msg = panic_message(&*p);
            tracing::error!("model panicked on a batch of {} cases: {msg}", cases.len());
            // The engine's chain only switches on errors; a panicking primary
            // still has a fallback to answer.
            match catch_unwind(AssertUnwindSafe(|| tagger.tag_fallback(cases, top_k))) {
                // Counted as a fallback in `answer` (the model id differs).
                Ok(Some(Ok(t))) if t.len() == cases.len() => Ok(t),
                _ => Err(ApiError::internal(format!("the model panicked: {msg}"))),
            }
        }
    }
}

fn run_batch(tagger: &Arc<Tagger>, batch: Vec<Job>, metrics: &Metrics) {
    let started = Instant::now();
    let top_k = batch.iter().map(|j| j.top_k).max().unwrap_or(0);
    let n_cases: usize = batch.iter().map(|j| j.cases.len()).sum();
    let n_tokens: usize = batch.iter().map(|j| j.load.tokens).sum();
    let result = if batch.len() == 1 {
        guarded_tag(tagger, &batch[0].cases, top_k, metrics)
    } else {
        let all: Vec<Transcript> = batch.iter().flat_map(|j| j.cases.iter().cloned()).collect();
        guarded_tag(tagger, &all, top_k, metrics)
    };
    metrics.observe_batch(
        n_cases,
        (n_tokens > 0).then_some(n_tokens),
        started.elapsed(),
    );
    match result {
        Ok(tagged) => {
            let mut it = tagged.into_iter();
            for j in batch {
                let mine: Vec<Tagged> = it.by_ref().take(j.cases.len()).collect();
                answer(tagger, j, Ok(mine), metrics);
            }
        }
        // One bad request must not fail the others it was batched with:
        // rerun each alone so the error lands only where it belongs.
        Err(e) if batch.len() > 1 => {
            tracing::warn!(
                "a batch of {} requests failed ({e}); retrying them one by one",
                batch.len()
            );
            for j in batch {
                if j.gone() {
                    metrics.dropped_job();
                    continue;
                }
                let r = guarded_tag(tagger, &j.cases, j.top_k, metrics);
                answer(tagger, j, r, metrics);
            }
        }
        Err(e) => {
            for j in batch {
                answer(tagger, j, Err(e.clone()), metrics);
            }
        }
    }
}

fn answer(tagger: &Arc<Tagger>, job: Job, r: Result<Vec<Tagged>, ApiError>, metrics: &Metrics) {
    let top_k = job.top_k;
    let r = r.map(|mut tagged| {
        for t in &mut tagged {
            t.decision.alternatives.truncate(top_k);
            for level in &mut t.decision.level_alternatives {
                level.truncate(top_k);
            }
        }
        if let Some(first) = tagged.first() {
            match &tagger.primary {
                // The engine switched to the fallback because the primary failed.
                Some(p) if first.model_id != p.id() => {
                    metrics.fallback(FallbackReason::PrimaryError)
                }
                Some(_) => {}
                // The primary never loaded: the fallback serves alone.
                None => metrics.fallback(FallbackReason::PrimaryUnavailable),
            }
        }
        Answer {
            tagged,
            tagger: tagger.clone(),
        }
    });
    job.finish(r);
}
