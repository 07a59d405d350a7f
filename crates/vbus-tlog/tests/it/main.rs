//! `vbus-tlog` through its public API.

mod basics;
mod crash;
mod recovery;

/// The payload of record `seq`: its length and bytes derive from `seq`, so a record carrying
/// another's bytes, or cut short, is told apart.
pub fn payload(seq: u64) -> Vec<u8> {
    let len = (seq.wrapping_mul(2_654_435_761) % 700) as usize;
    (0..len).map(|at| (seq as usize ^ at) as u8).collect()
}
