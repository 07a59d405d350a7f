//! [`StateBus`]: the state's verbs (create, update, delete, edges, checkpoint, replay), every change a log record.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Mutex, RwLock};
use std::time::Instant;

use vbus_tlog::{Durability, Histogram, LatencySummary, Log, LogOptions, LogStats};

use crate::checkpoint::{self, CheckpointInfo};
use crate::delta::Delta;
use crate::graph::{Rule, RuleFn};
use crate::op::Op;
use crate::page::{Location, PageId};
use crate::state::{Context, PageInfo, PageView, State};
use crate::{Error, Result};

/// Builds a [`StateBus`]; every setter says its default.
pub struct StateBusBuilder {
    log_dir: PathBuf,
    checkpoint_dir: PathBuf,
    durability: Durability,
    segment_bytes: u64,
    checkpoints_retained: usize,
    page_bytes_max: u64,
    checkpoint_bytes_max: u64,
    device: Option<vbus_gpu::Device>,
    functions: HashMap<String, Arc<RuleFn>>,
    reserved: Vec<(u64, usize)>,
}

impl std::fmt::Debug for StateBusBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateBusBuilder")
            .field("log_dir", &self.log_dir)
            .field("checkpoint_dir", &self.checkpoint_dir)
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

impl StateBusBuilder {
    /// The most bytes all pages may take together, host and GPU; a create past it is refused
    /// with [`Error::OverLimit`] and changes nothing. Default: no limit.
    pub fn page_bytes_max(mut self, page_bytes_max: u64) -> Self {
        self.page_bytes_max = page_bytes_max;
        self
    }

    /// The most bytes the kept checkpoints may take on disk together, counting the one being
    /// written (so `checkpoints_retained + 1` images of the pages); a create that would need more
    /// is refused with [`Error::OverLimit`]. Default: no limit.
    pub fn checkpoint_bytes_max(mut self, checkpoint_bytes_max: u64) -> Self {
        self.checkpoint_bytes_max = checkpoint_bytes_max;
        self
    }

    /// Where the transaction log lives. Default `DIR/TLOG`.
    pub fn log_dir(mut self, log_dir: impl Into<PathBuf>) -> Self {
        self.log_dir = log_dir.into();
        self
    }

    /// Where checkpoints live. Default `DIR/CHECKPOINTS`.
    pub fn checkpoint_dir(mut self, checkpoint_dir: impl Into<PathBuf>) -> Self {
        self.checkpoint_dir = checkpoint_dir.into();
        self
    }

    /// What a change has survived when its call returns. Default [`Durability::Fdatasync`].
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Bytes per log segment. Default 64 MiB.
    pub fn segment_bytes(mut self, segment_bytes: u64) -> Self {
        self.segment_bytes = segment_bytes;
        self
    }

    /// Checkpoints kept (at least 2); the log is kept from the oldest, so any sequence number
    /// from there on can be replayed. Default 2.
    pub fn checkpoints_retained(mut self, checkpoints_retained: usize) -> Self {
        self.checkpoints_retained = checkpoints_retained.max(2);
        self
    }

    /// The device GPU pages live on. Default none: GPU pages keep their bytes on the host.
    pub fn device(mut self, device: vbus_gpu::Device) -> Self {
        self.device = Some(device);
        self
    }

    /// Pre-faults host memory for `n_pages` pages of `size` bytes at open, so creating them
    /// later takes no allocation and no page fault (pooled, pre-faulted arenas).
    /// Default none.
    pub fn reserve_pages(mut self, size: u64, n_pages: usize) -> Self {
        self.reserved.push((size, n_pages));
        self
    }

    /// Registers a rule function under `name` (needed before open: replay may call it).
    pub fn function(
        mut self,
        name: &str,
        function: impl Fn(&[&[u8]], &mut [u8]) + Send + Sync + 'static,
    ) -> Self {
        self.functions.insert(name.to_owned(), Arc::new(function));
        self
    }

    /// Opens the bus: loads the newest readable checkpoint and replays the log after it.
    pub fn open(self) -> Result<StateBus> {
        for dir in [&self.log_dir, &self.checkpoint_dir] {
            std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
        }
        let (log, _) = Log::open(
            &self.log_dir,
            LogOptions {
                segment_bytes: self.segment_bytes,
            },
        )?;
        let ctx = Context {
            device: self.device.as_ref(),
            functions: &self.functions,
        };
        let checkpoints = checkpoint::list(&self.checkpoint_dir)?;
        let log_first = log.stats().first_seq;
        let mut state = None;
        for info in checkpoints.iter().rev() {
            match checkpoint::read(info, &ctx) {
                Ok(loaded) => {
                    state = Some(loaded);
                    break;
                }
                Err(err @ Error::UnsupportedFormat { .. }) => return Err(err),
                Err(err) => {
                    tracing::warn!(error = %err, "skipping a damaged checkpoint; trying an older one")
                }
            }
        }
        let mut state = state.unwrap_or_else(State::new);
        if state.last_seq + 1 < log_first {
            return Err(Error::NotRetained {
                seq: state.last_seq + 1,
                first: log_first,
                last: log.stats().last_seq,
            });
        }
        replay_into(&log, &mut state, u64::MAX, &ctx)?;
        for &(size, n_pages) in &self.reserved {
            state.reserve_pages(size, n_pages);
        }
        Ok(StateBus {
            state: RwLock::new(state),
            log,
            checkpoint_dir: self.checkpoint_dir,
            durability: self.durability,
            checkpoints_retained: self.checkpoints_retained,
            page_bytes_max: self.page_bytes_max,
            checkpoint_bytes_max: self.checkpoint_bytes_max,
            device: self.device,
            functions: self.functions,
            checkpoint_lock: Mutex::new(()),
            failed: Mutex::new(None),
            has_failed: AtomicBool::new(false),
            metrics: Metrics::default(),
        })
    }
}

/// Applies the log's records after `state.last_seq`, up to `until`.
fn replay_into(log: &Log, state: &mut State, until: u64, ctx: &Context<'_>) -> Result<u64> {
    let from = state.last_seq + 1;
    if from > log.stats().last_seq {
        return Ok(0);
    }
    let mut failure = None;
    let n = log.read_from(from, |record| {
        if record.seq > until {
            return Ok(false);
        }
        let outcome = Op::decode(record.seq, record.kind, record.payload)
            .and_then(|op| state.apply(record.seq, &op, ctx));
        match outcome {
            Ok(()) => Ok(true),
            Err(err) => {
                failure = Some(err);
                Ok(false)
            }
        }
    })?;
    match failure {
        Some(err) => Err(err),
        None => Ok(n),
    }
}

#[derive(Debug, Default)]
struct Metrics {
    delta_apply: Histogram,
    propagation: Histogram,
    log_append: Histogram,
}

/// Counters and latencies of a bus.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StateMetrics {
    /// Pages held.
    pub n_pages: usize,
    /// Their bytes together, host and GPU.
    pub page_bytes: u64,
    /// Edges of the graph.
    pub n_edges: usize,
    /// The last change's sequence number.
    pub last_seq: u64,
    /// Applying an update's deltas (propagation excluded).
    pub delta_apply: LatencySummary,
    /// Propagation waves after updates.
    pub propagation: LatencySummary,
    /// From a change's log record being queued to its durability.
    pub log_append: LatencySummary,
    /// The log: appends, syncs, segments, and sync latency.
    pub log: LogStats,
}

/// The state bus. Share it behind an `Arc`; every method takes `&self`.
pub struct StateBus {
    state: RwLock<State>,
    log: Log,
    checkpoint_dir: PathBuf,
    durability: Durability,
    checkpoints_retained: usize,
    page_bytes_max: u64,
    checkpoint_bytes_max: u64,
    device: Option<vbus_gpu::Device>,
    functions: HashMap<String, Arc<RuleFn>>,
    checkpoint_lock: Mutex<()>,
    failed: Mutex<Option<String>>,
    has_failed: AtomicBool,
    metrics: Metrics,
}

impl std::fmt::Debug for StateBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateBus")
            .field("log", &self.log.dir())
            .field("checkpoint_dir", &self.checkpoint_dir)
            .finish_non_exhaustive()
    }
}

impl StateBus {
    /// A builder keeping the log in `dir/TLOG` and checkpoints in `dir/CHECKPOINTS`.
    pub fn builder(dir: impl AsRef<Path>) -> StateBusBuilder {
        let dir = dir.as_ref();
        StateBusBuilder {
            log_dir: dir.join("TLOG"),
            checkpoint_dir: dir.join("CHECKPOINTS"),
            durability: Durability::Fdatasync,
            segment_bytes: 64 << 20,
            checkpoints_retained: 2,
            page_bytes_max: u64::MAX,
            checkpoint_bytes_max: u64::MAX,
            device: None,
            functions: HashMap::new(),
            reserved: Vec::new(),
        }
    }

    /// Opens the bus in `dir` with the defaults.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::builder(dir).open()
    }

    fn ctx(&self) -> Context<'_> {
        Context {
            device: self.device.as_ref(),
            functions: &self.functions,
        }
    }

    /// Checks, applies and logs one op under the write lock; waits for its durability outside
    /// it, so concurrent changes share syncs. Returns its sequence number.
    /// A create's page id is assigned here, under the lock.
    fn commit(&self, op: &mut Op<'_>, expected_epoch: Option<(PageId, u64)>) -> Result<u64> {
        if self.has_failed.load(Ordering::Relaxed)
            && let Some(reason) = self.failed.lock().clone()
        {
            return Err(Error::Failed { reason });
        }
        let seq = {
            let mut state = self.state.write();
            let ctx = self.ctx();
            // A create takes the next id, which is all its check asks of it, once it fits the
            // limits.
            if let Op::Create { id, size, .. } = op {
                self.check_room(&state, *size)?;
                *id = state.next_page_id;
            } else {
                state.check(op, &ctx)?;
            }
            let op = &*op;
            if let Some((id, expected)) = expected_epoch {
                let actual = state.page(id)?.epoch;
                if actual != expected {
                    return Err(Error::EpochMismatch {
                        id,
                        expected,
                        actual,
                    });
                }
            }
            // Every append goes through this lock, so the log's next number is this change's.
            let seq = state.last_seq + 1;
            let applied = match op {
                // Timed in two parts: the deltas, then the propagation wave.
                Op::Update(deltas) => self.apply_update(&mut state, seq, deltas, &ctx),
                _ => state.apply(seq, op, &ctx),
            };
            if let Err(err) = applied {
                // A create's device allocation fails before anything changed: the page does not
                // fit the GPU, and the bus goes on.
                if let (
                    Op::Create { size, .. },
                    Error::Device(vbus_gpu::Error::OutOfMemory {
                        allocated_bytes,
                        capacity_bytes,
                        ..
                    }),
                ) = (op, &err)
                {
                    return Err(Error::OverLimit {
                        limit: crate::Limit::DeviceMemory,
                        limit_bytes: *capacity_bytes,
                        used_bytes: *allocated_bytes,
                        requested_bytes: *size,
                    });
                }
                return Err(self.fail(err));
            }
            // A small fixed-size record is framed on the stack and copied into the log's queue
            // at once; the others are encoded straight into the queue (a large delta is copied
            // once).
            let logged = match op.fixed_payload() {
                Some((kind, bytes, len)) => self
                    .log
                    .enqueue(&[(kind, &bytes[..len])], self.durability)
                    .map(|seqs| seqs.start),
                None => self.log.enqueue_with(self.durability, |buf| op.encode(buf)),
            };
            match logged {
                Ok(logged) if logged == seq => {}
                Ok(logged) => {
                    return Err(self.fail(Error::BadRecord {
                        seq: logged,
                        reason: format!("logged as {logged} but applied as {seq}"),
                    }));
                }
                Err(err) => return Err(self.fail(err.into())),
            }
            seq
        };
        if self.durability != Durability::Async {
            let started = Instant::now();
            self.log.wait_durable(seq, self.durability)?;
            self.metrics.log_append.record(started.elapsed());
        }
        Ok(seq)
    }

    fn apply_update(
        &self,
        state: &mut State,
        seq: u64,
        deltas: &[(PageId, Cow<'_, Delta>)],
        ctx: &Context<'_>,
    ) -> Result<()> {
        let started = Instant::now();
        let mut changed = Vec::with_capacity(deltas.len());
        for (id, delta) in deltas {
            if state.apply_delta_only(*id, delta, ctx.device)? {
                state.bump_epoch(*id)?;
                changed.push(*id);
            }
        }
        self.metrics.delta_apply.record(started.elapsed());
        let propagating = Instant::now();
        state.propagate(&changed, &[], ctx)?;
        self.metrics.propagation.record(propagating.elapsed());
        state.last_seq = seq;
        Ok(())
    }

    /// Refuses a create of `size` bytes that would take the pages, or the checkpoints kept of
    /// them, past their limits.
    fn check_room(&self, state: &State, size: u64) -> Result<()> {
        let used = state.page_bytes();
        if used.saturating_add(size) > self.page_bytes_max {
            return Err(Error::OverLimit {
                limit: crate::Limit::PageBytes,
                limit_bytes: self.page_bytes_max,
                used_bytes: used,
                requested_bytes: size,
            });
        }
        let images = self.checkpoints_retained as u64 + 1;
        if checkpoint::estimated_bytes(used.saturating_add(size)).saturating_mul(images)
            > self.checkpoint_bytes_max
        {
            return Err(Error::OverLimit {
                limit: crate::Limit::CheckpointBytes,
                limit_bytes: self.checkpoint_bytes_max,
                used_bytes: checkpoint::estimated_bytes(used).saturating_mul(images),
                requested_bytes: size.saturating_mul(images),
            });
        }
        Ok(())
    }

    /// Memory and log may now disagree: refuse changes until reopened.
    fn fail(&self, err: Error) -> Error {
        if !matches!(
            err,
            Error::Device(_) | Error::Log(_) | Error::BadRecord { .. }
        ) {
            return err;
        }
        tracing::error!(error = %err, "state bus failed; it refuses changes until reopened");
        *self.failed.lock() = Some(err.to_string());
        self.has_failed.store(true, Ordering::Relaxed);
        err
    }

    /// Creates a zeroed page of `size` bytes at `location`; returns its id.
    pub fn create_page(&self, size: u64, location: Location) -> Result<PageId> {
        self.create(size, location).map(|(id, _)| id)
    }

    /// [`StateBus::create_page`], also returning the change's sequence number.
    pub fn create(&self, size: u64, location: Location) -> Result<(PageId, u64)> {
        // A create owns nothing to drop, and `ManuallyDrop` spares every create an out-of-line
        // call to `Op`'s drop glue (a match over its variants).
        let mut op = std::mem::ManuallyDrop::new(Op::Create {
            id: 0,
            size,
            location,
        });
        let seq = self.commit(&mut op, None)?;
        match *op {
            Op::Create { id, .. } => Ok((id, seq)),
            _ => unreachable!("a create stays a create"),
        }
    }

    /// Applies `delta` to page `id` and propagates; returns the change's sequence number.
    pub fn update_page(&self, id: PageId, delta: &Delta) -> Result<u64> {
        self.commit(&mut Op::Update(vec![(id, Cow::Borrowed(delta))]), None)
    }

    /// [`StateBus::update_page`] only if the page is still at `expected_epoch`.
    pub fn update_page_at(&self, id: PageId, delta: &Delta, expected_epoch: u64) -> Result<u64> {
        self.commit(
            &mut Op::Update(vec![(id, Cow::Borrowed(delta))]),
            Some((id, expected_epoch)),
        )
    }

    /// Applies many deltas as one change with one propagation wave.
    pub fn batch_update(&self, deltas: &[(PageId, Delta)]) -> Result<u64> {
        let deltas = deltas
            .iter()
            .map(|(id, delta)| (*id, Cow::Borrowed(delta)))
            .collect();
        self.commit(&mut Op::Update(deltas), None)
    }

    /// The page's bytes and epoch.
    pub fn query_page(&self, id: PageId) -> Result<PageView> {
        self.state.read().view(id, self.device.as_ref())
    }

    /// Deletes a page and its edges.
    pub fn delete_page(&self, id: PageId) -> Result<u64> {
        self.commit(&mut Op::Delete { id }, None)
    }

    /// Adds `source → target`: `target` is recomputed from its sources by `rule` from now on
    /// (and at once). Refused when it would close a cycle (the error names the pages).
    pub fn add_edge(&self, source: PageId, target: PageId, rule: Rule) -> Result<u64> {
        self.commit(
            &mut Op::AddEdge {
                source,
                target,
                rule,
            },
            None,
        )
    }

    /// Removes `source → target`; the target is recomputed from the sources it has left.
    pub fn remove_edge(&self, source: PageId, target: PageId) -> Result<u64> {
        self.commit(&mut Op::RemoveEdge { source, target }, None)
    }

    /// The ids of every page, ascending.
    pub fn page_ids(&self) -> Vec<PageId> {
        self.state.read().page_ids().collect()
    }

    /// One page's id, size, location and epoch, without copying its bytes.
    pub fn page_info(&self, id: PageId) -> Result<PageInfo> {
        self.state.read().info(id)
    }

    /// Every page's id, size, location and epoch (no bytes), ascending by id.
    pub fn pages(&self) -> Vec<PageInfo> {
        self.state.read().infos()
    }

    /// Every edge as `(source, target, rule)`.
    pub fn edges(&self) -> Vec<(PageId, PageId, Rule)> {
        self.state.read().graph.edges()
    }

    /// The last change's sequence number.
    pub fn last_seq(&self) -> u64 {
        self.state.read().last_seq
    }

    /// A hash of the whole state (pages with epochs, the graph).
    pub fn state_hash(&self) -> Result<[u8; 32]> {
        self.state.read().hash(self.device.as_ref())
    }

    /// Writes a checkpoint of the current state; keeps the newest `checkpoints_retained` and
    /// releases the log before the oldest kept. Returns the checkpoint's sequence number.
    pub fn checkpoint(&self) -> Result<u64> {
        let _one_at_a_time = self.checkpoint_lock.lock();
        let info = {
            let state = self.state.read();
            // Everything the image holds is durable in the log before the image exists.
            if state.last_seq > 0 {
                self.log
                    .wait_durable(state.last_seq, Durability::Fdatasync)?;
            }
            // A checkpoint that cannot fit is refused before a byte is written (a full disk
            // would fail it half-way, and the log still holds every change).
            let needed = checkpoint::estimated_bytes(state.page_bytes());
            let free = checkpoint::free_bytes(&self.checkpoint_dir)?;
            if needed > free {
                return Err(Error::OverLimit {
                    limit: crate::Limit::DiskSpace,
                    limit_bytes: free,
                    used_bytes: 0,
                    requested_bytes: needed,
                });
            }
            checkpoint::write(&self.checkpoint_dir, &state, self.device.as_ref())?
        };
        let checkpoints = checkpoint::list(&self.checkpoint_dir)?;
        let n_doomed = checkpoints.len().saturating_sub(self.checkpoints_retained);
        for old in &checkpoints[..n_doomed] {
            std::fs::remove_file(&old.path).map_err(Error::io("remove", &old.path))?;
        }
        if let Some(oldest) = checkpoints.get(n_doomed) {
            self.log.release_before(oldest.seq + 1)?;
        }
        Ok(info.seq)
    }

    /// Checkpoints and closes the bus.
    pub fn close(self) -> Result<u64> {
        self.checkpoint()
    }

    /// The state as it was right after record `seq`, rebuilt from the newest checkpoint at or
    /// before it and the log; pages are on the host.
    pub fn replay_to(&self, seq: u64) -> Result<Snapshot> {
        let last = self.last_seq();
        let checkpoints = checkpoint::list(&self.checkpoint_dir)?;
        let log_first = self.log.stats().first_seq;
        let first = checkpoints
            .first()
            .map_or(log_first.saturating_sub(1), |c| {
                c.seq.min(log_first.saturating_sub(1))
            });
        if seq > last || seq < first {
            return Err(Error::NotRetained { seq, first, last });
        }
        let ctx = Context {
            device: None,
            functions: &self.functions,
        };
        let base: Option<&CheckpointInfo> = checkpoints.iter().rev().find(|c| c.seq <= seq);
        let mut state = match base {
            Some(info) if info.seq + 1 >= log_first => checkpoint::read(info, &ctx)?,
            _ if log_first <= 1 => State::new(),
            _ => return Err(Error::NotRetained { seq, first, last }),
        };
        replay_into(&self.log, &mut state, seq, &ctx)?;
        if state.last_seq != seq && seq > 0 {
            return Err(Error::NotRetained { seq, first, last });
        }
        Ok(Snapshot { state })
    }

    /// Counts and latency percentiles.
    pub fn metrics(&self) -> StateMetrics {
        let state = self.state.read();
        StateMetrics {
            n_pages: state.n_pages(),
            page_bytes: state.page_bytes(),
            n_edges: state.graph.n_edges(),
            last_seq: state.last_seq,
            delta_apply: self.metrics.delta_apply.summary(),
            propagation: self.metrics.propagation.summary(),
            log_append: self.metrics.log_append.summary(),
            log: self.log.stats(),
        }
    }

    /// The transaction log underneath.
    pub fn log(&self) -> &Log {
        &self.log
    }
}

/// A state rebuilt by [`StateBus::replay_to`].
#[derive(Debug)]
pub struct Snapshot {
    state: State,
}

impl Snapshot {
    /// The sequence number it stands at.
    pub fn seq(&self) -> u64 {
        self.state.last_seq
    }

    /// A page as it was.
    pub fn query_page(&self, id: PageId) -> Result<PageView> {
        self.state.view(id, None)
    }

    /// Every page then (no bytes).
    pub fn pages(&self) -> Vec<PageInfo> {
        self.state.infos()
    }

    /// The ids of every page then.
    pub fn page_ids(&self) -> Vec<PageId> {
        self.state.page_ids().collect()
    }

    /// The hash [`StateBus::state_hash`] gave at that point.
    pub fn state_hash(&self) -> Result<[u8; 32]> {
        self.state.hash(None)
    }
}
