//! The page graph: edges source → target with a rule. A page with in-edges is derived: when a
//! source changes, its bytes are recomputed from all its sources (in ascending id order) by the
//! rule. Cycles are refused.

use crate::delta::{ElemType, MergeOp, combine_into};
use crate::page::PageId;
use crate::{Error, Result};

/// How a target is computed from its sources.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Rule {
    /// Element-wise fold of the sources under a semiring operator (`add`, `max`, `min`, `or`)
    /// over an element type; sources and target have one size.
    Semiring {
        /// The operator (`overwrite` is refused: it is not a fold).
        op: MergeOp,
        /// The element type.
        elem: ElemType,
    },
    /// A Rust function registered with the bus under this name, given the sources' bytes and
    /// the target's buffer.
    Function(String),
}

impl Rule {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Semiring { op, elem } => {
                out.push(0);
                out.push(op.code());
                out.push(elem.code());
            }
            Self::Function(name) => {
                out.push(1);
                out.extend_from_slice(&(name.len() as u32).to_le_bytes());
                out.extend_from_slice(name.as_bytes());
            }
        }
    }

    pub(crate) fn decode(bytes: &[u8], at: &mut usize) -> Option<Self> {
        let tag = *bytes.get(*at)?;
        *at += 1;
        match tag {
            0 => {
                let op = MergeOp::from_code(*bytes.get(*at)?)?;
                let elem = ElemType::from_code(*bytes.get(*at + 1)?)?;
                *at += 2;
                Some(Self::Semiring { op, elem })
            }
            1 => {
                let len = u32::from_le_bytes(bytes.get(*at..*at + 4)?.try_into().ok()?) as usize;
                *at += 4;
                let name = std::str::from_utf8(bytes.get(*at..at.checked_add(len)?)?).ok()?;
                *at += len;
                Some(Self::Function(name.to_owned()))
            }
            _ => None,
        }
    }
}

/// A registered rule function: sources' bytes (ascending page id), the target's buffer.
pub type RuleFn = dyn Fn(&[&[u8]], &mut [u8]) + Send + Sync;

#[derive(Debug, Default, Clone)]
pub(crate) struct Node {
    /// Targets of this page's out-edges, ascending.
    pub targets: Vec<PageId>,
    /// Sources of this page's in-edges, ascending, and their shared rule.
    pub sources: Vec<PageId>,
    pub rule: Option<Rule>,
}

/// Adjacency by page id (ids are dense).
#[derive(Debug, Default, Clone)]
pub(crate) struct Graph {
    nodes: Vec<Node>,
    n_edges: usize,
}

impl Graph {
    pub fn node(&self, id: PageId) -> Option<&Node> {
        self.nodes.get(id as usize)
    }

    fn node_mut(&mut self, id: PageId) -> &mut Node {
        let idx = id as usize;
        if self.nodes.len() <= idx {
            self.nodes.resize_with(idx + 1, Node::default);
        }
        &mut self.nodes[idx]
    }

    pub fn n_edges(&self) -> usize {
        self.n_edges
    }

    /// Every edge as `(source, target, rule)`, ascending.
    pub fn edges(&self) -> Vec<(PageId, PageId, Rule)> {
        let mut edges = Vec::with_capacity(self.n_edges);
        for (target, node) in self.nodes.iter().enumerate() {
            if let Some(rule) = &node.rule {
                for &source in &node.sources {
                    edges.push((source, target as PageId, rule.clone()));
                }
            }
        }
        edges.sort_by_key(|(source, target, _)| (*source, *target));
        edges
    }

    /// Checks that `source → target` under `rule` may be added (no cycle, one rule per target).
    pub fn check_edge(&self, source: PageId, target: PageId, rule: &Rule) -> Result<()> {
        if let Some(existing) = self.node(target).and_then(|node| node.rule.as_ref())
            && existing != rule
        {
            return Err(Error::BadEdge {
                reason: format!(
                    "page {target} is already computed by {existing:?}; every in-edge of a page shares its rule"
                ),
            });
        }
        if let Some(path) = self.path(target, source) {
            let mut cycle: Vec<String> = path.iter().map(ToString::to_string).collect();
            cycle.push(target.to_string());
            return Err(Error::Cycle {
                pages: cycle.join(" → "),
            });
        }
        Ok(())
    }

    /// Adds an edge checked by [`Graph::check_edge`]; false when it was there already.
    pub fn add(&mut self, source: PageId, target: PageId, rule: Rule) -> bool {
        let node = self.node_mut(target);
        if let Err(at) = node.sources.binary_search(&source) {
            node.sources.insert(at, source);
            node.rule = Some(rule);
            let node = self.node_mut(source);
            if let Err(at) = node.targets.binary_search(&target) {
                node.targets.insert(at, target);
            }
            self.n_edges += 1;
            true
        } else {
            false
        }
    }

    /// Removes an edge; false when there was none.
    pub fn remove(&mut self, source: PageId, target: PageId) -> bool {
        let Some(node) = self.nodes.get_mut(target as usize) else {
            return false;
        };
        let Ok(at) = node.sources.binary_search(&source) else {
            return false;
        };
        node.sources.remove(at);
        if node.sources.is_empty() {
            node.rule = None;
        }
        let node = self.node_mut(source);
        if let Ok(at) = node.targets.binary_search(&target) {
            node.targets.remove(at);
        }
        self.n_edges -= 1;
        true
    }

    /// Removes every edge touching `page`.
    pub fn remove_page(&mut self, page: PageId) {
        let Some(node) = self.nodes.get(page as usize).cloned() else {
            return;
        };
        for target in node.targets {
            self.remove(page, target);
        }
        for source in node.sources {
            self.remove(source, page);
        }
    }

    /// A path `from → … → to` along edges, if one exists.
    fn path(&self, from: PageId, to: PageId) -> Option<Vec<PageId>> {
        if from == to {
            return Some(vec![from]);
        }
        let mut parent: std::collections::HashMap<PageId, PageId> =
            std::collections::HashMap::new();
        let mut stack = vec![from];
        while let Some(page) = stack.pop() {
            for &next in self.node(page).map_or(&[][..], |node| &node.targets) {
                if next == from || parent.contains_key(&next) {
                    continue;
                }
                parent.insert(next, page);
                if next == to {
                    let mut path = vec![to];
                    let mut at = to;
                    while let Some(&previous) = parent.get(&at) {
                        path.push(previous);
                        at = previous;
                    }
                    path.reverse();
                    return Some(path);
                }
                stack.push(next);
            }
        }
        None
    }

    /// The pages downstream of `changed` in an order where every page comes after its sources
    /// (`marks` is scratch space, one stamp per page).
    pub fn cone_in_topological_order(
        &self,
        changed: &[PageId],
        marks: &mut Vec<u32>,
        stamp: u32,
    ) -> Vec<PageId> {
        if marks.len() < self.nodes.len() {
            marks.resize(self.nodes.len(), 0);
        }
        // Iterative depth-first search; the reverse of the finishing order is topological.
        let mut finished = Vec::new();
        let mut stack: Vec<(PageId, usize)> = Vec::new();
        for &root in changed {
            let Some(node) = self.node(root) else {
                continue;
            };
            for &target in &node.targets {
                if marks[target as usize] == stamp {
                    continue;
                }
                marks[target as usize] = stamp;
                stack.push((target, 0));
                while let Some((page, next_idx)) = stack.last_mut() {
                    let targets = &self.nodes[*page as usize].targets;
                    if let Some(&next) = targets.get(*next_idx) {
                        *next_idx += 1;
                        if marks[next as usize] != stamp {
                            marks[next as usize] = stamp;
                            stack.push((next, 0));
                        }
                    } else {
                        finished.push(*page);
                        stack.pop();
                    }
                }
            }
        }
        finished.reverse();
        finished
    }
}

/// Computes a target from its sources under a semiring rule: the first source's bytes folded
/// with each next one.
pub(crate) fn fold_semiring(op: MergeOp, elem: ElemType, sources: &[&[u8]], target: &mut [u8]) {
    let Some((first, rest)) = sources.split_first() else {
        return;
    };
    target.copy_from_slice(first);
    for source in rest {
        combine_into(op, elem, target, source);
    }
}
