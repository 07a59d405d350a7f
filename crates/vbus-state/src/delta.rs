//! Deltas: runs of `(offset, bytes)` (one run at offset 0 covering the page is a dense delta)
//! applied with a merge operator over an element type, and their compact binary encoding.
//!
//! The law: applying `a` then `b` equals applying [`merge`]`(a, b)`. It holds bit for bit for
//! every operator over integers (wrapping addition) and for overwrite, max, min and or over
//! floats; float addition is not associative, so merging two float `add` deltas is refused.

use crate::{Error, Result};

/// How a delta's bytes combine with the page's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MergeOp {
    /// The delta's bytes replace the page's (the default).
    Overwrite,
    /// Element-wise addition (wrapping for integers).
    Add,
    /// Element-wise maximum (for floats, a NaN on one side gives the other).
    Max,
    /// Element-wise minimum (for floats, a NaN on one side gives the other).
    Min,
    /// Bitwise or.
    Or,
}

impl MergeOp {
    /// Every operator.
    pub const ALL: [MergeOp; 5] = [Self::Overwrite, Self::Add, Self::Max, Self::Min, Self::Or];

    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Overwrite => 0,
            Self::Add => 1,
            Self::Max => 2,
            Self::Min => 3,
            Self::Or => 4,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }

    /// The name used in the API (`overwrite`, `add`, `max`, `min`, `or`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Overwrite => "overwrite",
            Self::Add => "add",
            Self::Max => "max",
            Self::Min => "min",
            Self::Or => "or",
        }
    }
}

/// The element type a delta's operator works on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElemType {
    /// Unsigned bytes.
    U8,
    /// 32-bit signed integers, little-endian.
    I32,
    /// 64-bit signed integers, little-endian.
    I64,
    /// 32-bit floats, little-endian.
    F32,
    /// 64-bit floats, little-endian.
    F64,
}

impl ElemType {
    /// Every element type.
    pub const ALL: [ElemType; 5] = [Self::U8, Self::I32, Self::I64, Self::F32, Self::F64];

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::U8 => 1,
            Self::I32 | Self::F32 => 4,
            Self::I64 | Self::F64 => 8,
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            Self::U8 => 0,
            Self::I32 => 1,
            Self::I64 => 2,
            Self::F32 => 3,
            Self::F64 => 4,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }

    /// The name used in the API (`u8`, `i32`, `i64`, `f32`, `f64`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::U8 => "u8",
            Self::I32 => "i32",
            Self::I64 => "i64",
            Self::F32 => "f32",
            Self::F64 => "f64",
        }
    }
}

/// One run: bytes at an offset of the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// Byte offset in the page.
    pub offset: u64,
    /// The delta's bytes there.
    pub bytes: Vec<u8>,
}

/// A change to one page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// How the bytes combine with the page's.
    pub op: MergeOp,
    /// The element type `op` works on (runs must be aligned to it).
    pub elem: ElemType,
    /// Runs in increasing offset order, not overlapping.
    pub runs: Vec<Run>,
}

impl Delta {
    /// Overwrites the whole page (or its first `bytes.len()` bytes) with `bytes`.
    pub fn dense(bytes: Vec<u8>) -> Self {
        Self {
            op: MergeOp::Overwrite,
            elem: ElemType::U8,
            runs: vec![Run { offset: 0, bytes }],
        }
    }

    /// Overwrites the given runs (sorted and checked by [`Delta::validate`]).
    pub fn sparse(runs: Vec<(u64, Vec<u8>)>) -> Self {
        Self::with_op(MergeOp::Overwrite, ElemType::U8, runs)
    }

    /// Runs combined with the page under `op` over `elem`.
    pub fn with_op(op: MergeOp, elem: ElemType, mut runs: Vec<(u64, Vec<u8>)>) -> Self {
        runs.sort_by_key(|(offset, _)| *offset);
        Self {
            op,
            elem,
            runs: runs
                .into_iter()
                .map(|(offset, bytes)| Run { offset, bytes })
                .collect(),
        }
    }

    /// Bytes the runs carry.
    pub fn payload_bytes(&self) -> usize {
        self.runs.iter().map(|run| run.bytes.len()).sum()
    }

    /// Checks the runs against a page of `page_size` bytes: in order, not overlapping, inside
    /// the page, and aligned to the element size.
    pub fn validate(&self, page_size: u64) -> Result<()> {
        let elem = self.elem.size() as u64;
        let mut end = 0u64;
        for (idx, run) in self.runs.iter().enumerate() {
            let len = run.bytes.len() as u64;
            let bad = |reason: String| Error::BadDelta {
                reason: format!("run {idx} (offset {}, {len} bytes): {reason}", run.offset),
            };
            if idx > 0 && run.offset < end {
                return Err(bad("overlaps or precedes the run before it".to_owned()));
            }
            let run_end = run
                .offset
                .checked_add(len)
                .ok_or_else(|| bad("offset overflows".to_owned()))?;
            if run_end > page_size {
                return Err(bad(format!("ends past the page's {page_size} bytes")));
            }
            if !run.offset.is_multiple_of(elem) || !len.is_multiple_of(elem) {
                return Err(bad(format!(
                    "not aligned to {} elements of {elem} bytes",
                    self.elem.as_str()
                )));
            }
            end = run_end;
        }
        Ok(())
    }

    /// Applies the delta to `page` (validated first). Returns whether any byte changed.
    pub fn apply(&self, page: &mut [u8]) -> Result<bool> {
        self.validate(page.len() as u64)?;
        let mut changed = false;
        for run in &self.runs {
            let target = &mut page[run.offset as usize..run.offset as usize + run.bytes.len()];
            if changed && self.op == MergeOp::Overwrite {
                // Already changed: an overwrite need not compare before it copies.
                target.copy_from_slice(&run.bytes);
            } else {
                changed |= combine_into(self.op, self.elem, target, &run.bytes);
            }
        }
        Ok(changed)
    }
}

/// `target = target ⊕ source` element-wise; returns whether `target` changed.
pub(crate) fn combine_into(op: MergeOp, elem: ElemType, target: &mut [u8], source: &[u8]) -> bool {
    if op == MergeOp::Overwrite {
        if target == source {
            return false;
        }
        target.copy_from_slice(source);
        return true;
    }
    macro_rules! elementwise {
        ($ty:ty, $add:expr, $max:expr, $min:expr, $or:expr) => {{
            const N: usize = std::mem::size_of::<$ty>();
            let mut changed = false;
            for (t, s) in target.chunks_exact_mut(N).zip(source.chunks_exact(N)) {
                let a = <$ty>::from_le_bytes(t.try_into().expect("chunk of N"));
                let b = <$ty>::from_le_bytes(s.try_into().expect("chunk of N"));
                let combined: $ty = match op {
                    MergeOp::Add => $add(a, b),
                    MergeOp::Max => $max(a, b),
                    MergeOp::Min => $min(a, b),
                    MergeOp::Or => $or(a, b),
                    MergeOp::Overwrite => b,
                };
                let bytes = combined.to_le_bytes();
                if bytes != *t {
                    t.copy_from_slice(&bytes);
                    changed = true;
                }
            }
            changed
        }};
    }
    match elem {
        ElemType::U8 => elementwise!(u8, u8::wrapping_add, u8::max, u8::min, |a: u8, b: u8| a | b),
        ElemType::I32 => {
            elementwise!(
                i32,
                i32::wrapping_add,
                i32::max,
                i32::min,
                |a: i32, b: i32| a | b
            )
        }
        ElemType::I64 => {
            elementwise!(
                i64,
                i64::wrapping_add,
                i64::max,
                i64::min,
                |a: i64, b: i64| a | b
            )
        }
        ElemType::F32 => elementwise!(
            f32,
            |a: f32, b: f32| a + b,
            |a: f32, b: f32| f32::from_bits(float_max(
                a.into(),
                b.into(),
                a.to_bits().into(),
                b.to_bits().into()
            ) as u32),
            |a: f32, b: f32| f32::from_bits(float_min(
                a.into(),
                b.into(),
                a.to_bits().into(),
                b.to_bits().into()
            ) as u32),
            |a: f32, b: f32| f32::from_bits(a.to_bits() | b.to_bits())
        ),
        ElemType::F64 => elementwise!(
            f64,
            |a: f64, b: f64| a + b,
            |a: f64, b: f64| f64::from_bits(float_max(a, b, a.to_bits(), b.to_bits())),
            |a: f64, b: f64| f64::from_bits(float_min(a, b, a.to_bits(), b.to_bits())),
            |a: f64, b: f64| f64::from_bits(a.to_bits() | b.to_bits())
        ),
    }
}

/// The larger of two floats (given with their bits), deterministic to the bit so that max is
/// associative: a NaN gives the other side, and of two equal values (`+0` and `-0`) the one with
/// the sign bit clear.
fn float_max(a: f64, b: f64, a_bits: u64, b_bits: u64) -> u64 {
    if a.is_nan() || b > a {
        b_bits
    } else if b.is_nan() || a > b {
        a_bits
    } else {
        a_bits & b_bits
    }
}

/// The smaller of two floats, as [`float_max`]: of `+0` and `-0`, the one with the sign bit set.
fn float_min(a: f64, b: f64, a_bits: u64, b_bits: u64) -> u64 {
    if a.is_nan() || b < a {
        b_bits
    } else if b.is_nan() || a < b {
        a_bits
    } else {
        a_bits | b_bits
    }
}

/// One delta with the effect of `a` then `b` on any page. Both must share operator and element
/// type; float `add` deltas are refused (their sum is not associative).
pub fn merge(a: &Delta, b: &Delta) -> Result<Delta> {
    if (a.op, a.elem) != (b.op, b.elem) {
        return Err(Error::NotMergeable {
            reason: format!(
                "{} over {} then {} over {}: different operators or element types",
                a.op.as_str(),
                a.elem.as_str(),
                b.op.as_str(),
                b.elem.as_str()
            ),
        });
    }
    if a.op == MergeOp::Add && matches!(a.elem, ElemType::F32 | ElemType::F64) {
        return Err(Error::NotMergeable {
            reason:
                "float addition is not associative: a merged delta would change results bit for bit"
                    .to_owned(),
        });
    }
    // Cut both at every run boundary; combine where both cover, keep either where one does.
    let mut cuts: Vec<u64> = a
        .runs
        .iter()
        .chain(&b.runs)
        .flat_map(|run| [run.offset, run.offset + run.bytes.len() as u64])
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let covering = |delta: &Delta, start: u64, end: u64| -> Option<Vec<u8>> {
        delta.runs.iter().find_map(|run| {
            let run_end = run.offset + run.bytes.len() as u64;
            (run.offset <= start && end <= run_end).then(|| {
                run.bytes[(start - run.offset) as usize..(end - run.offset) as usize].to_vec()
            })
        })
    };
    let mut runs: Vec<Run> = Vec::new();
    for window in cuts.windows(2) {
        let (start, end) = (window[0], window[1]);
        let bytes = match (covering(a, start, end), covering(b, start, end)) {
            (Some(mut first), Some(second)) => {
                combine_into(a.op, a.elem, &mut first, &second);
                first
            }
            (Some(only), None) | (None, Some(only)) => only,
            (None, None) => continue,
        };
        match runs.last_mut() {
            Some(last) if last.offset + last.bytes.len() as u64 == start => {
                last.bytes.extend_from_slice(&bytes);
            }
            _ => runs.push(Run {
                offset: start,
                bytes,
            }),
        }
    }
    Ok(Delta {
        op: a.op,
        elem: a.elem,
        runs,
    })
}

// The encoding: `op u8 | elem u8 | n_runs varint | (gap varint | len varint | bytes)*`, where
// `gap` is the offset minus the end of the previous run.

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn get_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Appends the delta's encoding to `out`.
pub fn encode(delta: &Delta, out: &mut Vec<u8>) {
    out.push(delta.op.code());
    out.push(delta.elem.code());
    put_varint(out, delta.runs.len() as u64);
    let mut end = 0u64;
    for run in &delta.runs {
        put_varint(out, run.offset.wrapping_sub(end));
        put_varint(out, run.bytes.len() as u64);
        out.extend_from_slice(&run.bytes);
        end = run.offset.wrapping_add(run.bytes.len() as u64);
    }
}

/// Decodes a delta from the start of `bytes`; returns it and the bytes it took. Never panics.
pub fn decode(bytes: &[u8]) -> Result<(Delta, usize)> {
    let bad = |reason: &str| Error::BadDelta {
        reason: format!("cannot decode a delta: {reason}"),
    };
    let op = MergeOp::from_code(*bytes.first().ok_or_else(|| bad("empty"))?)
        .ok_or_else(|| bad("unknown operator"))?;
    let elem = ElemType::from_code(*bytes.get(1).ok_or_else(|| bad("cut short"))?)
        .ok_or_else(|| bad("unknown element type"))?;
    let mut at = 2;
    let n_runs = get_varint(bytes, &mut at).ok_or_else(|| bad("bad run count"))?;
    // Every run takes at least two bytes: a count beyond that is a lie.
    if n_runs > (bytes.len() as u64) / 2 {
        return Err(bad("more runs than bytes"));
    }
    let mut runs = Vec::with_capacity(n_runs as usize);
    let mut end = 0u64;
    for _ in 0..n_runs {
        let gap = get_varint(bytes, &mut at).ok_or_else(|| bad("bad run offset"))?;
        let len = get_varint(bytes, &mut at).ok_or_else(|| bad("bad run length"))?;
        let offset = end
            .checked_add(gap)
            .ok_or_else(|| bad("offset overflows"))?;
        let len_usize = usize::try_from(len).map_err(|_| bad("run too long"))?;
        let data = at
            .checked_add(len_usize)
            .and_then(|stop| bytes.get(at..stop))
            .ok_or_else(|| bad("run cut short"))?;
        at += len_usize;
        end = offset
            .checked_add(len)
            .ok_or_else(|| bad("run end overflows"))?;
        runs.push(Run {
            offset,
            bytes: data.to_vec(),
        });
    }
    Ok((Delta { op, elem, runs }, at))
}
