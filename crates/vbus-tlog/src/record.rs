//! One record's frame. Little-endian, 8-byte aligned:
//!
//! ```text
//! body_len u32 | crc32c u32 | seq u64 | kind u8 | payload (body_len - 1 bytes) | zero padding
//! ```
//!
//! The CRC-32C covers `body_len`, `seq` and the body, so a record moved, cut or overwritten in
//! part fails it. A `body_len` of zero marks the end of a segment's records (segments are
//! preallocated with zeros).

/// Bytes before the body.
pub const HEADER_BYTES: usize = 16;
/// The largest body (kind and payload) a record may carry: 256 MiB.
pub const MAX_BODY_BYTES: usize = 256 << 20;

/// A decoded record, borrowing its payload from the buffer it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Sequence number.
    pub seq: u64,
    /// The caller's record type.
    pub kind: u8,
    /// The caller's bytes.
    pub payload: &'a [u8],
}

/// Why bytes did not decode as a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Zeros where a header would start: no more records.
    End,
    /// The buffer ends inside the record.
    Truncated {
        /// Bytes the record needs.
        needed: usize,
        /// Bytes there are.
        available: usize,
    },
    /// `body_len` beyond [`MAX_BODY_BYTES`].
    BadLength(u32),
    /// The checksum does not match.
    BadChecksum {
        /// Stored in the frame.
        stored: u32,
        /// Computed over the bytes.
        computed: u32,
    },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::End => write!(f, "end of records"),
            Self::Truncated { needed, available } => {
                write!(
                    f,
                    "record cut short: needs {needed} bytes, {available} remain"
                )
            }
            Self::BadLength(len) => write!(f, "record length {len} is beyond the limit"),
            Self::BadChecksum { stored, computed } => {
                write!(
                    f,
                    "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
                )
            }
        }
    }
}

/// Bytes a record with `payload_len` payload bytes takes, padding included.
pub fn encoded_len(payload_len: usize) -> usize {
    (HEADER_BYTES + 1 + payload_len).next_multiple_of(8)
}

/// Payloads up to this many bytes are framed on the stack by [`encode`].
const STACK_PAYLOAD_MAX: usize = 48;

/// Appends the frame of one record to `out`. A small record (a page create, an edge) is built
/// on the stack and appended in one copy: the same bytes as [`encode_with`] writes, without its
/// growth checks per field.
pub fn encode(out: &mut Vec<u8>, seq: u64, kind: u8, payload: &[u8]) {
    if payload.len() > STACK_PAYLOAD_MAX {
        encode_with(out, seq, |out| {
            out.extend_from_slice(payload);
            kind
        });
        return;
    }
    let mut frame = [0u8; HEADER_BYTES + 1 + STACK_PAYLOAD_MAX + 7];
    let body_end = HEADER_BYTES + 1 + payload.len();
    frame[..4].copy_from_slice(&(1 + payload.len() as u32).to_le_bytes());
    frame[8..16].copy_from_slice(&seq.to_le_bytes());
    frame[HEADER_BYTES] = kind;
    frame[HEADER_BYTES + 1..body_end].copy_from_slice(payload);
    let crc = checksum(&frame[..body_end]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&frame[..encoded_len(payload.len())]);
}

/// Appends the frame of one record whose payload `write_payload` appends to `out` in place (no
/// intermediate buffer) and whose kind it returns; returns the payload's length. The caller
/// checks that length against [`MAX_BODY_BYTES`] and truncates `out` back when it is over.
pub fn encode_with(
    out: &mut Vec<u8>,
    seq: u64,
    write_payload: impl FnOnce(&mut Vec<u8>) -> u8,
) -> usize {
    let start = out.len();
    // body_len, CRC, sequence number and kind, filled in once the payload is there.
    out.extend_from_slice(&[0; HEADER_BYTES + 1]);
    let kind = write_payload(out);
    let payload_len = out.len() - start - HEADER_BYTES - 1;
    let body_len = u32::try_from(1 + payload_len).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    out[start + 8..start + 16].copy_from_slice(&seq.to_le_bytes());
    out[start + HEADER_BYTES] = kind;
    let crc = checksum(&out[start..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.resize(start + encoded_len(payload_len), 0);
    payload_len
}

/// CRC-32C of a frame (without its padding), skipping the CRC field itself.
fn checksum(frame: &[u8]) -> u32 {
    crate::crc::append_after_word([frame[0], frame[1], frame[2], frame[3]], &frame[8..])
}

/// Decodes the record at the start of `buf`; returns it and the bytes it takes (padding
/// included). Never panics, whatever `buf` holds.
pub fn decode(buf: &[u8]) -> Result<(RecordRef<'_>, usize), DecodeError> {
    if buf.len() < 4 {
        return if buf.iter().all(|&b| b == 0) {
            Err(DecodeError::End)
        } else {
            Err(DecodeError::Truncated {
                needed: HEADER_BYTES,
                available: buf.len(),
            })
        };
    }
    let body_len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if body_len == 0 {
        return Err(DecodeError::End);
    }
    if body_len as usize > MAX_BODY_BYTES {
        return Err(DecodeError::BadLength(body_len));
    }
    let frame_len = HEADER_BYTES + body_len as usize;
    if buf.len() < frame_len {
        return Err(DecodeError::Truncated {
            needed: frame_len,
            available: buf.len(),
        });
    }
    let frame = &buf[..frame_len];
    let stored = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let computed = checksum(frame);
    if stored != computed {
        return Err(DecodeError::BadChecksum { stored, computed });
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&frame[8..16]);
    let record = RecordRef {
        seq: u64::from_le_bytes(seq),
        kind: frame[16],
        payload: &frame[17..],
    };
    // The padding may be cut off at the very end of a buffer; it holds nothing.
    Ok((record, frame_len.next_multiple_of(8).min(buf.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_large_payloads_frame_alike() {
        let payload: Vec<u8> = (0..200u8).map(|b| b.wrapping_mul(37)).collect();
        for len in 0..payload.len() {
            let (mut stacked, mut in_place) = (vec![9u8; 3], vec![9u8; 3]);
            encode(&mut stacked, 77 + len as u64, 5, &payload[..len]);
            encode_with(&mut in_place, 77 + len as u64, |out| {
                out.extend_from_slice(&payload[..len]);
                5
            });
            assert_eq!(stacked, in_place, "payload of {len} bytes");
            let (record, used) = decode(&stacked[3..]).expect("decodes");
            assert_eq!(
                (record.kind, record.payload, used),
                (5, &payload[..len], stacked.len() - 3)
            );
        }
    }

    #[test]
    fn round_trips_and_aligns() {
        let mut buf = Vec::new();
        for (seq, payload) in [(1u64, &b""[..]), (2, b"a"), (3, &[7u8; 300][..])] {
            let before = buf.len();
            encode(&mut buf, seq, seq as u8, payload);
            assert_eq!(buf.len() - before, encoded_len(payload.len()));
            assert_eq!(buf.len() % 8, 0);
        }
        let mut at = 0;
        for (seq, payload) in [(1u64, &b""[..]), (2, b"a"), (3, &[7u8; 300][..])] {
            let (record, len) = decode(&buf[at..]).unwrap();
            assert_eq!(
                record,
                RecordRef {
                    seq,
                    kind: seq as u8,
                    payload
                }
            );
            at += len;
        }
        assert_eq!(decode(&buf[at..]), Err(DecodeError::End));
        assert_eq!(decode(&[0u8; 64]), Err(DecodeError::End));
    }

    #[test]
    fn every_flipped_bit_and_every_cut_is_an_error() {
        let mut buf = Vec::new();
        encode(&mut buf, 42, 3, b"hello, log");
        let frame_len = HEADER_BYTES + 1 + 10;
        for bit in 0..frame_len * 8 {
            let mut damaged = buf.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                decode(&damaged).is_err(),
                "bit {bit} flipped went unnoticed"
            );
        }
        for cut in 1..frame_len {
            assert!(
                matches!(decode(&buf[..cut]), Err(DecodeError::Truncated { .. })),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = fastrand::Rng::with_seed(5);
        for _ in 0..200_000 {
            let len = rng.usize(..64);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if rng.bool() && len >= 4 {
                // A plausible small length, so the checksum path runs too.
                bytes[..4].copy_from_slice(&(rng.u32(..48)).to_le_bytes());
            }
            let _ = decode(&bytes);
        }
    }
}
