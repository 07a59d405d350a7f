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

/// A record's payload when it has a fixed size: the kind, the bytes and how many are used.
pub(crate) type FixedPayload = (u8, [u8; 17], usize);

impl Op<'_> {
    /// The record of a create, delete or edge removal, encoded on the stack (the bytes
    /// [`Op::encode`] writes), for the log's one-copy path; `None` for the other kinds.
    pub fn fixed_payload(&self) -> Option<FixedPayload> {
        let mut bytes = [0u8; 17];
        match self {
            Self::Create { id, size, location } => {
                bytes[..8].copy_from_slice(&id.to_le_bytes());
                bytes[8..16].copy_from_slice(&size.to_le_bytes());
                bytes[16] = location.code();
                Some((KIND_CREATE, bytes, 17))
            }
            Self::Delete { id } => {
                bytes[..8].copy_from_slice(&id.to_le_bytes());
                Some((KIND_DELETE, bytes, 8))
            }
            Self::RemoveEdge { source, target } => {
                bytes[..8].copy_from_slice(&source.to_le_bytes());
                bytes[8..16].copy_from_slice(&target.to_le_bytes());
                Some((KIND_REMOVE_EDGE, bytes, 16))
            }
            Self::Update(_) | Self::AddEdge { .. } => None,
        }
    }

    /// The record kind and payload.
    pub fn encode(&self, out: &mut Vec<u8>) -> u8 {
        if let Some((kind, bytes, len)) = self.fixed_payload() {
            out.extend_from_slice(&bytes[..len]);
            return kind;
        }
        match self {
            Self::Update(deltas) => {
                out.extend_from_slice(&(deltas.len() as u32).to_le_bytes());
                for (id, delta) in deltas {
                    out.extend_from_slice(&id.to_le_bytes());
                    delta::encode(delta, out);
                }
                KIND_UPDATE
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
            Self::Create { .. } | Self::Delete { .. } | Self::RemoveEdge { .. } => {
                unreachable!("fixed-size records are encoded above")
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixed-size records have the layout the module comment gives, byte for byte, and
    /// decode back to the same op.
    #[test]
    fn fixed_payloads_follow_the_record_layout() {
        let ops = [
            (
                Op::Create {
                    id: 7,
                    size: 4096,
                    location: Location::Gpu,
                },
                KIND_CREATE,
                [
                    &7u64.to_le_bytes()[..],
                    &4096u64.to_le_bytes(),
                    &[Location::Gpu.code()],
                ]
                .concat(),
            ),
            (
                Op::Delete { id: u64::MAX - 3 },
                KIND_DELETE,
                (u64::MAX - 3).to_le_bytes().to_vec(),
            ),
            (
                Op::RemoveEdge {
                    source: 11,
                    target: 1 << 40,
                },
                KIND_REMOVE_EDGE,
                [11u64.to_le_bytes(), (1u64 << 40).to_le_bytes()].concat(),
            ),
        ];
        for (op, expected_kind, expected) in ops {
            let mut encoded = Vec::new();
            assert_eq!(op.encode(&mut encoded), expected_kind, "{op:?}");
            assert_eq!(encoded, expected, "{op:?}");
            assert_eq!(Op::decode(1, expected_kind, &encoded).expect("decodes"), op);
        }
        assert!(Op::Update(Vec::new()).fixed_payload().is_none());
    }
}
