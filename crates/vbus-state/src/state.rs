//! The in-memory state: pages by id, the graph, and how each [`Op`] changes them. The live bus
//! and replay run the same code, which is what makes replay exact.

use std::collections::HashMap;
use std::sync::Arc;

use crate::delta::Delta;
use crate::graph::{Graph, Rule, RuleFn, fold_semiring};
use crate::op::Op;
use crate::page::{Bytes, Location, Page, PageId, PagePool};
use crate::{Error, Result};

/// What applying ops needs besides the state.
pub(crate) struct Context<'a> {
    /// The device GPU pages live on; `None` keeps every page on the host (replay snapshots).
    pub device: Option<&'a vbus_gpu::Device>,
    pub functions: &'a HashMap<String, Arc<RuleFn>>,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pages: Vec<Option<Page>>,
    n_pages: usize,
    /// The pages' sizes added up (host and GPU).
    page_bytes: u64,
    pub graph: Graph,
    pub next_page_id: PageId,
    /// The last record applied.
    pub last_seq: u64,
    pool: PagePool,
    marks: Vec<u32>,
    changed_marks: Vec<u32>,
    stamp: u32,
    scratch: Vec<u8>,
}

/// A page as a caller sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageView {
    /// The page's id.
    pub id: PageId,
    /// Its size in bytes.
    pub size: u64,
    /// Where its bytes live.
    pub location: Location,
    /// Changes so far (deltas applied and recomputations that changed it).
    pub epoch: u64,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// A page without its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageInfo {
    /// The page's id.
    pub id: PageId,
    /// Its size in bytes.
    pub size: u64,
    /// Where its bytes live.
    pub location: Location,
    /// Its epoch.
    pub epoch: u64,
}

impl State {
    pub fn info(&self, id: PageId) -> Result<PageInfo> {
        let page = self.page(id)?;
        Ok(PageInfo {
            id,
            size: page.size,
            location: page.location,
            epoch: page.epoch,
        })
    }

    pub fn infos(&self) -> Vec<PageInfo> {
        self.page_ids()
            .filter_map(|id| self.info(id).ok())
            .collect()
    }

    pub fn new() -> Self {
        Self {
            next_page_id: 1,
            ..Self::default()
        }
    }

    pub fn n_pages(&self) -> usize {
        self.n_pages
    }

    /// The bytes of every page, host and GPU.
    pub fn page_bytes(&self) -> u64 {
        self.page_bytes
    }

    // Both build the error only when the page is missing: `ok_or(Error::NoSuchPage { .. })`
    // built it on every call and dropped it through an out-of-line call to `Error`'s drop glue,
    // a sixth of what a propagation wave spent per page (clippy rejects `ok_or_else` here,
    // hence the `match`).
    pub fn page(&self, id: PageId) -> Result<&Page> {
        match self.pages.get(id as usize) {
            Some(Some(page)) => Ok(page),
            _ => Err(Error::NoSuchPage { id }),
        }
    }

    fn page_mut(&mut self, id: PageId) -> Result<&mut Page> {
        match self.pages.get_mut(id as usize) {
            Some(Some(page)) => Ok(page),
            _ => Err(Error::NoSuchPage { id }),
        }
    }

    pub fn page_ids(&self) -> impl Iterator<Item = PageId> + '_ {
        self.pages
            .iter()
            .enumerate()
            .filter(|(_, page)| page.is_some())
            .map(|(id, _)| id as PageId)
    }

    pub fn view(&self, id: PageId, device: Option<&vbus_gpu::Device>) -> Result<PageView> {
        let page = self.page(id)?;
        Ok(PageView {
            id,
            size: page.size,
            location: page.location,
            epoch: page.epoch,
            bytes: page.read(device)?,
        })
    }

    /// Checks that `op` can be applied, so that applying it changes all or nothing.
    pub fn check(&self, op: &Op<'_>, ctx: &Context<'_>) -> Result<()> {
        match op {
            Op::Create { id, location, .. } => {
                if *id != self.next_page_id {
                    return Err(Error::BadRecord {
                        seq: self.last_seq + 1,
                        reason: format!("creates page {id}, the next id is {}", self.next_page_id),
                    });
                }
                let _ = (location, ctx);
                Ok(())
            }
            Op::Update(deltas) => {
                for (id, delta) in deltas {
                    delta.validate(self.page(*id)?.size)?;
                }
                Ok(())
            }
            Op::Delete { id } => self.page(*id).map(|_| ()),
            Op::AddEdge {
                source,
                target,
                rule,
            } => {
                let (source_size, target_size) =
                    (self.page(*source)?.size, self.page(*target)?.size);
                match rule {
                    Rule::Semiring { op, elem } => {
                        if *op == crate::MergeOp::Overwrite {
                            return Err(Error::BadEdge {
                                reason: "overwrite is not a fold; use add, max, min or or"
                                    .to_owned(),
                            });
                        }
                        if source_size != target_size
                            || !target_size.is_multiple_of(elem.size() as u64)
                        {
                            return Err(Error::BadEdge {
                                reason: format!(
                                    "page {source} ({source_size} bytes) and page {target} ({target_size} bytes) must have one size, a multiple of {} bytes",
                                    elem.size()
                                ),
                            });
                        }
                    }
                    Rule::Function(name) => {
                        if !ctx.functions.contains_key(name) {
                            return Err(Error::UnknownFunction { name: name.clone() });
                        }
                    }
                }
                self.graph.check_edge(*source, *target, rule)
            }
            Op::RemoveEdge { source, target } => {
                self.page(*source)?;
                self.page(*target)?;
                Ok(())
            }
        }
    }

    /// Applies a checked op at `seq`.
    pub fn apply(&mut self, seq: u64, op: &Op<'_>, ctx: &Context<'_>) -> Result<()> {
        match op {
            Op::Create { id, size, location } => {
                let bytes = match (location, ctx.device) {
                    (Location::Gpu, Some(device)) => {
                        let mut buffer = device.alloc(*size).map_err(Error::Device)?;
                        if *size > 0 {
                            device
                                .upload(&vec![0u8; *size as usize], &mut buffer, 0)
                                .map_err(Error::Device)?;
                        }
                        Bytes::Device(buffer)
                    }
                    _ => Bytes::Host(self.pool.take(*size)),
                };
                let idx = *id as usize;
                let page = Page {
                    size: *size,
                    location: *location,
                    epoch: 0,
                    bytes,
                };
                // Ids are handed out in order: a new page goes at the end.
                if idx == self.pages.len() {
                    self.pages.push(Some(page));
                } else {
                    if self.pages.len() < idx {
                        self.pages.resize_with(idx + 1, || None);
                    }
                    self.pages[idx] = Some(page);
                }
                self.n_pages += 1;
                self.page_bytes += *size;
                self.next_page_id = id + 1;
            }
            Op::Update(deltas) => {
                let mut changed = Vec::with_capacity(deltas.len());
                for (id, delta) in deltas {
                    let page = self.page_mut(*id)?;
                    if page.apply(delta, ctx.device)? {
                        page.epoch += 1;
                        changed.push(*id);
                    }
                }
                self.propagate(&changed, &[], ctx)?;
            }
            Op::Delete { id } => {
                let Some(page) = self.pages[*id as usize].take() else {
                    return Err(Error::NoSuchPage { id: *id });
                };
                self.n_pages -= 1;
                self.page_bytes -= page.size;
                self.graph.remove_page(*id);
                if let Bytes::Host(bytes) = page.bytes {
                    self.pool.give(bytes);
                }
            }
            Op::AddEdge {
                source,
                target,
                rule,
            } => {
                if self.graph.add(*source, *target, rule.clone()) {
                    self.propagate(&[], &[*target], ctx)?;
                }
            }
            Op::RemoveEdge { source, target } => {
                if self.graph.remove(*source, *target)
                    && self
                        .graph
                        .node(*target)
                        .is_some_and(|node| node.rule.is_some())
                {
                    self.propagate(&[], &[*target], ctx)?;
                }
            }
        }
        self.last_seq = seq;
        Ok(())
    }

    /// Recomputes the pages downstream of `changed` (and the pages in `force`, and what is
    /// downstream of them) in topological order, skipping a page none of whose sources
    /// changed. Returns how many pages changed.
    pub fn propagate(
        &mut self,
        changed: &[PageId],
        force: &[PageId],
        ctx: &Context<'_>,
    ) -> Result<usize> {
        if changed.is_empty() && force.is_empty() {
            return Ok(0);
        }
        // Updates pass `changed`, edge changes `force` (the target, recomputed whatever its
        // sources did); never both.
        self.stamp = self.stamp.wrapping_add(1).max(1);
        let stamp = self.stamp;
        let roots: Vec<PageId> = changed.iter().chain(force).copied().collect();
        let mut order: Vec<PageId> = force.to_vec();
        order.extend(
            self.graph
                .cone_in_topological_order(&roots, &mut self.marks, stamp),
        );
        if self.changed_marks.len() < self.pages.len() {
            self.changed_marks.resize(self.pages.len(), 0);
        }
        let changed_stamp = stamp;
        for &page in changed {
            self.changed_marks[page as usize] = changed_stamp;
        }
        let mut n_changed = 0;
        let mut scratch = std::mem::take(&mut self.scratch);
        for (position, &target) in order.iter().enumerate() {
            let forced = position < force.len();
            {
                let Some(node) = self.graph.node(target) else {
                    continue;
                };
                let Some(rule) = &node.rule else { continue };
                if !forced
                    && !node
                        .sources
                        .iter()
                        .any(|&source| self.changed_marks[source as usize] == changed_stamp)
                {
                    continue;
                }
                let size = self.page(target)?.size as usize;
                scratch.clear();
                scratch.resize(size, 0);
                let all_host = node.sources.iter().all(|&source| {
                    matches!(self.page(source).map(|p| &p.bytes), Ok(Bytes::Host(_)))
                });
                match rule {
                    Rule::Semiring { op, elem } if all_host => {
                        // The common case, without gathering the inputs.
                        for (idx, &source) in node.sources.iter().enumerate() {
                            let Bytes::Host(bytes) = &self.page(source)?.bytes else {
                                unreachable!("checked: every source is on the host")
                            };
                            if idx == 0 {
                                scratch.copy_from_slice(bytes);
                            } else {
                                crate::delta::combine_into(*op, *elem, &mut scratch, bytes);
                            }
                        }
                    }
                    _ => {
                        // Device sources are read back; host sources are borrowed.
                        let mut owned: Vec<Vec<u8>> = Vec::new();
                        for &source in &node.sources {
                            let page = self.page(source)?;
                            if let Bytes::Device(_) = page.bytes {
                                owned.push(page.read(ctx.device)?);
                            }
                        }
                        let mut owned_iter = owned.iter();
                        let mut inputs: Vec<&[u8]> = Vec::with_capacity(node.sources.len());
                        for &source in &node.sources {
                            match &self.page(source)?.bytes {
                                Bytes::Host(bytes) => inputs.push(bytes),
                                Bytes::Device(_) => {
                                    inputs.push(owned_iter.next().expect("read above"));
                                }
                            }
                        }
                        match rule {
                            Rule::Semiring { op, elem } => {
                                fold_semiring(*op, *elem, &inputs, &mut scratch);
                            }
                            Rule::Function(name) => {
                                let function = ctx
                                    .functions
                                    .get(name)
                                    .ok_or_else(|| Error::UnknownFunction { name: name.clone() })?;
                                function(&inputs, &mut scratch);
                            }
                        }
                    }
                }
            }
            let page = self.page_mut(target)?;
            if page.replace(&scratch, ctx.device)? {
                page.epoch += 1;
                self.changed_marks[target as usize] = changed_stamp;
                n_changed += 1;
            }
        }
        self.scratch = scratch;
        Ok(n_changed)
    }

    /// A hash of every page (id, size, location, epoch, bytes), the graph and the next id.
    pub fn hash(&self, device: Option<&vbus_gpu::Device>) -> Result<[u8; 32]> {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.next_page_id.to_le_bytes());
        for id in self.page_ids() {
            let page = self.page(id)?;
            hasher.update(&id.to_le_bytes());
            hasher.update(&page.size.to_le_bytes());
            hasher.update(&[page.location.code()]);
            hasher.update(&page.epoch.to_le_bytes());
            match &page.bytes {
                Bytes::Host(bytes) => hasher.update(bytes),
                Bytes::Device(_) => hasher.update(&page.read(device)?),
            };
        }
        let mut rules = Vec::new();
        for (source, target, rule) in self.graph.edges() {
            hasher.update(&source.to_le_bytes());
            hasher.update(&target.to_le_bytes());
            rules.clear();
            rule.encode(&mut rules);
            hasher.update(&rules);
        }
        Ok(*hasher.finalize().as_bytes())
    }

    /// Restores a page from a checkpoint.
    pub fn restore_page(
        &mut self,
        id: PageId,
        location: Location,
        epoch: u64,
        bytes: Vec<u8>,
        device: Option<&vbus_gpu::Device>,
    ) -> Result<()> {
        let size = bytes.len() as u64;
        let stored = match (location, device) {
            (Location::Gpu, Some(device)) => {
                let mut buffer = device.alloc(size).map_err(Error::Device)?;
                device
                    .upload(&bytes, &mut buffer, 0)
                    .map_err(Error::Device)?;
                Bytes::Device(buffer)
            }
            _ => Bytes::Host(bytes),
        };
        let idx = id as usize;
        if self.pages.len() <= idx {
            self.pages.resize_with(idx + 1, || None);
        }
        match &self.pages[idx] {
            None => self.n_pages += 1,
            Some(old) => self.page_bytes -= old.size,
        }
        self.page_bytes += size;
        self.pages[idx] = Some(Page {
            size,
            location,
            epoch,
            bytes: stored,
        });
        Ok(())
    }

    /// Pre-faults host buffers for `n_pages` pages of `size` bytes.
    pub fn reserve_pages(&mut self, size: u64, n_pages: usize) {
        self.pool.reserve(size, n_pages);
        // Room in the page table too, touched now (filled and emptied again) so that the
        // creates do not grow, copy or fault it.
        let len = self.pages.len();
        self.pages.resize_with(len + n_pages, || None);
        self.pages.truncate(len);
    }

    /// Counts a change of a page.
    pub fn bump_epoch(&mut self, id: PageId) -> Result<()> {
        self.page_mut(id)?.epoch += 1;
        Ok(())
    }

    /// Applies one delta straight to a page's bytes (for the benchmark of delta application
    /// alone, without the log).
    pub fn apply_delta_only(
        &mut self,
        id: PageId,
        delta: &Delta,
        device: Option<&vbus_gpu::Device>,
    ) -> Result<bool> {
        self.page_mut(id)?.apply(delta, device)
    }
}
