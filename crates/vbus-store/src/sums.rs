//! Piece checksums: the XXH3-64 of each 1 MiB piece of a file, so that every read can be checked
//! at memory speed (XXH3 runs at about 16 GB/s on one core of the 2-core VM, three times the
//! CRC32C instruction's 5.5 GB/s there and twice a warm read; BLAKE3, at 1.5 GB/s, does not keep
//! up). BLAKE3 stays the file's identity (ETags, manifests, peers); the sums only guard the local
//! copy, and are derived from bytes that matched it.
//!
//! The index entry keeps one `u64` digest of the sums: for a file of at most one piece it is
//! the piece's XXH3 itself, so small files need nothing more; a larger file's sums live in a
//! side file, `.vbus-index/sums/{name}` (`magic (8) | piece_bytes u32 | n_pieces u32 | sums u64..`,
//! little-endian), whose sums must hash to the digest. A side file that is missing, torn or
//! stale (a crash between a publish and its side file, a power cut) fails that test and costs
//! only a full BLAKE3 check of the file, which writes it anew; it is never trusted blindly, so
//! side files are not fsynced.

use std::fs;
use std::hash::Hasher as _;
use std::io;
use std::path::{Path, PathBuf};

use twox_hash::XxHash3_64;

/// Bytes per checked piece.
pub(crate) const PIECE_BYTES: usize = 1 << 20;
/// Side-file format, version 1.
const MAGIC: &[u8; 8] = b"VBUSSUM1";
const HEADER_BYTES: usize = 16;
/// Folder of the side files, under the index folder.
pub(crate) const SUMS_DIR: &str = "sums";

/// The XXH3-64 of each piece of one file, in order (none for an empty file).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Sums(Vec<u64>);

/// The checksum of one piece.
pub(crate) fn piece_sum(piece: &[u8]) -> u64 {
    XxHash3_64::oneshot(piece)
}

impl Sums {
    /// The sums of `bytes`, whole.
    pub fn of(bytes: &[u8]) -> Self {
        Self(bytes.chunks(PIECE_BYTES).map(piece_sum).collect())
    }

    /// The sums of a single piece whose checksum is `digest` (a file of at most one piece).
    pub fn single(digest: u64) -> Self {
        Self(vec![digest])
    }

    /// How many pieces a file of `size_bytes` has.
    pub fn n_pieces(size_bytes: u64) -> u64 {
        size_bytes.div_ceil(PIECE_BYTES as u64)
    }

    /// The value the index keeps: the piece's checksum for one piece, else the XXH3 of the
    /// sums.
    pub fn digest(&self) -> u64 {
        match self.0.as_slice() {
            [] => 0,
            [only] => *only,
            sums => piece_sum(&encode_sums(sums)),
        }
    }

    /// Whether the sums need a side file (more than one piece).
    pub fn needs_side_file(&self) -> bool {
        self.0.len() > 1
    }

    /// The expected checksum of piece `index`.
    pub fn piece(&self, index: usize) -> Option<u64> {
        self.0.get(index).copied()
    }

    /// The index of the first piece of `bytes` (which start at piece 0) whose checksum differs.
    pub fn first_mismatch(&self, bytes: &[u8]) -> Option<usize> {
        let mut pieces = bytes.chunks(PIECE_BYTES);
        (0..self
            .0
            .len()
            .max(Sums::n_pieces(bytes.len() as u64) as usize))
            .find(|&index| pieces.next().map(piece_sum) != self.piece(index))
    }

    /// The side file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(HEADER_BYTES + 8 * self.0.len());
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&(PIECE_BYTES as u32).to_le_bytes());
        bytes.extend_from_slice(&(self.0.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&encode_sums(&self.0));
        bytes
    }

    /// The sums of a side file, when it is whole and describes a file of `size_bytes` whose
    /// digest is `digest`; `None` otherwise.
    pub fn decode(bytes: &[u8], size_bytes: u64, digest: u64) -> Option<Self> {
        let (header, body) = bytes.split_at_checked(HEADER_BYTES)?;
        let word = |at: usize| {
            u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
        };
        if &header[..8] != MAGIC
            || word(8) as usize != PIECE_BYTES
            || u64::from(word(12)) != Sums::n_pieces(size_bytes)
            || body.len() != 8 * word(12) as usize
        {
            return None;
        }
        let sums = Self(
            body.chunks_exact(8)
                .map(|word| u64::from_le_bytes(word.try_into().unwrap_or_default()))
                .collect(),
        );
        (sums.digest() == digest).then_some(sums)
    }
}

fn encode_sums(sums: &[u64]) -> Vec<u8> {
    sums.iter().flat_map(|sum| sum.to_le_bytes()).collect()
}

/// Builds the sums of bytes that arrive in parts of any size.
#[derive(Clone, Default)]
pub(crate) struct SumsBuilder {
    sums: Vec<u64>,
    hasher: XxHash3_64,
    fill: usize,
}

impl std::fmt::Debug for SumsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SumsBuilder")
            .field("n_pieces", &self.sums.len())
            .field("fill", &self.fill)
            .finish_non_exhaustive()
    }
}

impl SumsBuilder {
    /// Adds the next bytes.
    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let take = (PIECE_BYTES - self.fill).min(bytes.len());
            self.hasher.write(&bytes[..take]);
            self.fill += take;
            bytes = &bytes[take..];
            if self.fill == PIECE_BYTES {
                self.sums.push(self.hasher.finish());
                self.hasher = XxHash3_64::default();
                self.fill = 0;
            }
        }
    }

    /// The sums of everything added.
    pub fn finish(mut self) -> Sums {
        if self.fill > 0 {
            self.sums.push(self.hasher.finish());
        }
        Sums(self.sums)
    }
}

/// Where the side file of `key` lives under the index folder: a flat name derived from the key
/// (a collision only makes a side file fail its digest test).
pub(crate) fn side_file(index_dir: &Path, key: &str) -> PathBuf {
    let name = blake3::hash(key.as_bytes()).to_hex();
    index_dir.join(SUMS_DIR).join(&name.as_str()[..32])
}

/// Reads the side file of a file of `size_bytes` with `digest`; `None` when it is missing or
/// does not match.
pub(crate) fn read_side_file(path: &Path, size_bytes: u64, digest: u64) -> Option<Sums> {
    match fs::read(path) {
        Ok(bytes) => {
            let sums = Sums::decode(&bytes, size_bytes, digest);
            if sums.is_none() {
                tracing::warn!(path = %path.display(), "a piece-checksum file does not match its index entry; the file is checked in full");
            }
            sums
        }
        Err(err) => {
            if err.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %err, "cannot read a piece-checksum file; the file is checked in full");
            }
            None
        }
    }
}

/// Removes a side file, if there is one.
pub(crate) fn remove_side_file(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "cannot remove a piece-checksum file")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_builder_fed_in_odd_parts_matches_the_whole() {
        let bytes: Vec<u8> = (0..3 * PIECE_BYTES + 12_345)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let mut builder = SumsBuilder::default();
        for part in bytes.chunks(77_777) {
            builder.update(part);
        }
        let sums = builder.finish();
        assert_eq!(sums, Sums::of(&bytes));
        assert_eq!(sums.0.len(), 4);
        assert_eq!(sums.first_mismatch(&bytes), None);
        let mut damaged = bytes.clone();
        damaged[2 * PIECE_BYTES + 5] ^= 1;
        assert_eq!(sums.first_mismatch(&damaged), Some(2));
        assert_eq!(sums.first_mismatch(&bytes[..PIECE_BYTES]), Some(1));
    }

    #[test]
    fn a_side_file_must_match_size_and_digest() {
        let bytes = vec![7u8; 2 * PIECE_BYTES + 1];
        let sums = Sums::of(&bytes);
        assert!(sums.needs_side_file());
        let encoded = sums.encode();
        let size = bytes.len() as u64;
        assert_eq!(
            Sums::decode(&encoded, size, sums.digest()),
            Some(sums.clone())
        );
        assert_eq!(
            Sums::decode(&encoded, size + PIECE_BYTES as u64, sums.digest()),
            None
        );
        assert_eq!(Sums::decode(&encoded, size, sums.digest() ^ 1), None);
        assert_eq!(
            Sums::decode(&encoded[..encoded.len() - 1], size, sums.digest()),
            None
        );
        let mut flipped = encoded.clone();
        flipped[HEADER_BYTES + 2] ^= 4;
        assert_eq!(Sums::decode(&flipped, size, sums.digest()), None);
        assert!(!Sums::of(b"small").needs_side_file());
        assert_eq!(Sums::of(b"small").digest(), piece_sum(b"small"));
        assert_eq!(Sums::of(b"").digest(), 0);
    }
}
