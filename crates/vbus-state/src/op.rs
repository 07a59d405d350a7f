//! The log records of the state bus: one per mutation, replayed in order to rebuild any state.
//!
//! `create: id u64 | size u64 | location u8`; `update: n u32 | (id u64 | delta)*`;
//! `delete: id u64`; `add_edge: source u64 | target u64 | rule`; `remove_edge: source u64 |
//! target u64`. Little-endian; a delta and a rule carry their own lengths.

use std::borrow::Cow;

use crate::delta::{self, Delta};
use crate::graph::Rule;
use crate::page::{Location, PageId};
use crate::{Error, Result};

const KIND_CREATE: u8 = 1;
const KIND_UPDATE: u8 = 2;
const KIND_DELETE: u8 = 3;
const KIND_ADD_EDGE: u8 = 4;
const KIND_REMOVE_EDGE: u8 = 5;

/// One mutation. Live changes borrow their deltas; replayed ones own them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op<'a> {
    Create {
        id: PageId,
        size: u64,
        location: Location,
    },
    /// Deltas applied together, then one propagation wave.
    Update(Vec<(PageId, Cow<'a, Delta>)>),
    Delete {
        id: PageId,
    },
    AddEdge {
        source: PageId,
        target: PageId,
        rule: Rule,
    },
    RemoveEdge {
        source: PageId,
        target: PageId,
    },
}

impl Op<'_> {
    /// The record kind and payload.
    pub fn encode(&self, out: &mut Vec<u8>) -> u8 {
        match self {
            Self::Create { id, size, location } => {
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&size.to_le_bytes());
                out.push(location.code());
                KIND_CREATE
            }
            Self::Update(deltas) => {
                out.extend_from_slice(&(deltas.len() as u32).to_le_bytes());
                for (id, delta) in deltas {
                    out.extend_from_slice(&id.to_le_bytes());
                    delta::encode(delta, out);
                }
                KIND_UPDATE
            }
            Self::Delete { id } => {
                out.extend_from_slice(&id.to_le_bytes());
                KIND_DELETE
            }
            Self::AddEdge {
                source,
                target,
                rule,
            } => {
                out.extend_from_slice(&source.to_le_bytes());
                out.extend_from_slice(&target.to_le_bytes());
                rule.encode(out);
                KIND_ADD_EDGE
            }
            Self::RemoveEdge { source, target } => {
                out.extend_from_slice(&source.to_le_bytes());
                out.extend_from_slice(&target.to_le_bytes());
                KIND_REMOVE_EDGE
            }
        }
    }

    /// Decodes a record; never panics.
    pub fn decode(seq: u64, kind: u8, payload: &[u8]) -> Result<Op<'static>> {
        let bad = |reason: &str| Error::BadRecord {
            seq,
            reason: reason.to_owned(),
        };
        let u64_at = |at: usize| -> Result<u64> {
            payload
                .get(at..at + 8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                .ok_or_else(|| bad("cut short"))
        };
        let op = match kind {
            KIND_CREATE => Op::Create {
                id: u64_at(0)?,
                size: u64_at(8)?,
                location: payload
                    .get(16)
                    .and_then(|&code| Location::from_code(code))
                    .ok_or_else(|| bad("bad location"))?,
            },
            KIND_UPDATE => {
                let n = payload
                    .get(..4)
                    .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                    .ok_or_else(|| bad("cut short"))?;
                if n as usize > payload.len() / 8 {
                    return Err(bad("more deltas than bytes"));
                }
                let mut at = 4;
                let mut deltas = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    let id = u64_at(at)?;
                    let (delta, len) = delta::decode(payload.get(at + 8..).unwrap_or_default())
                        .map_err(|err| bad(&err.to_string()))?;
                    at += 8 + len;
                    deltas.push((id, Cow::Owned(delta)));
                }
                Op::Update(deltas)
            }
            KIND_DELETE => Op::Delete { id: u64_at(0)? },
            KIND_ADD_EDGE => {
                let mut at = 16;
                Op::AddEdge {
                    source: u64_at(0)?,
                    target: u64_at(8)?,
                    rule: Rule::decode(payload, &mut at).ok_or_else(|| bad("bad rule"))?,
                }
            }
            KIND_REMOVE_EDGE => Op::RemoveEdge {
                source: u64_at(0)?,
                target: u64_at(8)?,
            },
            _ => return Err(bad("unknown record kind")),
        };
        Ok(op)
    }
}
