//! CRC-32C (Castagnoli) for record frames. Short frames (most records: page creates, edges,
//! small deltas) go through a table-driven loop, eight bytes a step: the `crc32c` crate's
//! hardware path costs a fixed ~140 instructions a call in dispatch and setup, more than the
//! whole checksum of a 30-byte frame. Long frames go to the hardware path.

/// Frames shorter than this are checksummed by the tables.
const SHORT_BYTES: usize = 64;

/// The reflected Castagnoli polynomial.
const POLY: u32 = 0x82f6_3b78;

/// `TABLES[k][b]`: the CRC of byte `b` followed by `k` zero bytes (slicing by 8).
static TABLES: [[u32; 256]; 8] = tables();

const fn tables() -> [[u32; 256]; 8] {
    let mut tables = [[0u32; 256]; 8];
    let mut byte = 0;
    while byte < 256 {
        let mut crc = byte as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        tables[0][byte] = crc;
        byte += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut byte = 0;
        while byte < 256 {
            let prev = tables[k - 1][byte];
            tables[k][byte] = (prev >> 8) ^ tables[0][(prev & 0xff) as usize];
            byte += 1;
        }
        k += 1;
    }
    tables
}

/// The CRC-32C of `data` appended to bytes whose CRC-32C is `crc` (0 for none), as
/// `crc32c::crc32c_append` computes it.
pub(crate) fn append(crc: u32, data: &[u8]) -> u32 {
    if data.len() >= SHORT_BYTES {
        return crc32c::crc32c_append(crc, data);
    }
    let mut crc = !crc;
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let lo = crc ^ u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        let hi = u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
        crc = TABLES[7][(lo & 0xff) as usize]
            ^ TABLES[6][((lo >> 8) & 0xff) as usize]
            ^ TABLES[5][((lo >> 16) & 0xff) as usize]
            ^ TABLES[4][(lo >> 24) as usize]
            ^ TABLES[3][(hi & 0xff) as usize]
            ^ TABLES[2][((hi >> 8) & 0xff) as usize]
            ^ TABLES[1][((hi >> 16) & 0xff) as usize]
            ^ TABLES[0][(hi >> 24) as usize];
    }
    for &byte in chunks.remainder() {
        crc = TABLES[0][((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// The CRC-32C of the 4 bytes `word` followed by `data`: the word in one table step.
pub(crate) fn append_after_word(word: [u8; 4], data: &[u8]) -> u32 {
    let lo = !0u32 ^ u32::from_le_bytes(word);
    let crc = TABLES[3][(lo & 0xff) as usize]
        ^ TABLES[2][((lo >> 8) & 0xff) as usize]
        ^ TABLES[1][((lo >> 16) & 0xff) as usize]
        ^ TABLES[0][(lo >> 24) as usize];
    append(!crc, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_the_crc32c_crate_at_every_length_and_split() {
        let mut rng = fastrand::Rng::with_seed(7);
        let data: Vec<u8> = (0..600).map(|_| rng.u8(..)).collect();
        for len in 0..data.len() {
            let whole = &data[..len];
            assert_eq!(append(0, whole), crc32c::crc32c(whole), "length {len}");
            let split = rng.usize(..=len);
            let (head, tail) = whole.split_at(split);
            assert_eq!(
                append(append(0, head), tail),
                crc32c::crc32c(whole),
                "length {len} split at {split}"
            );
        }
        for len in 0..100 {
            let word = [data[0], data[1], data[2], data[3]];
            assert_eq!(
                append_after_word(word, &data[4..4 + len]),
                crc32c::crc32c(&data[..4 + len]),
                "a word and {len} bytes"
            );
        }
        // The standard check value.
        assert_eq!(append(0, b"123456789"), 0xe306_9283);
    }
}
