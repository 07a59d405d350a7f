//! The VRAM pool never hands out overlapping memory under a random alloc/free workload: each
//! live buffer holds its own pattern, and every pattern survives.

use crate::{device, random_bytes};

#[test]
fn random_alloc_and_free_never_overlap() {
    let device = device(64 << 20, 64 << 20);
    let mut state = 0x00c0_ffee_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut live: Vec<(vbus_gpu::DeviceBuffer, Vec<u8>)> = Vec::new();
    for op_idx in 0..3_000u64 {
        if live.is_empty() || next() % 5 < 3 {
            let len = next() % (600 << 10);
            match device.alloc(len) {
                Ok(mut buffer) => {
                    let pattern = random_bytes(len as usize, op_idx + 1);
                    device.upload(&pattern, &mut buffer, 0).unwrap();
                    live.push((buffer, pattern));
                }
                Err(vbus_gpu::Error::OutOfMemory { .. }) => {
                    let victim = (next() as usize) % live.len();
                    live.swap_remove(victim);
                }
                Err(err) => panic!("unexpected error: {err}"),
            }
        } else {
            let victim = (next() as usize) % live.len();
            live.swap_remove(victim);
        }
        if op_idx % 250 == 0 {
            for (buffer, pattern) in &live {
                let mut back = vec![0u8; pattern.len()];
                device.download(buffer, 0, &mut back).unwrap();
                assert!(
                    back == *pattern,
                    "a buffer was overwritten by a neighbour (op {op_idx})"
                );
            }
        }
        let stats = device.stats();
        let expected: u64 = live
            .iter()
            .map(|(b, _)| b.len().next_multiple_of(vbus_gpu::ALIGN_BYTES))
            .sum();
        assert_eq!(stats.vram.allocated_bytes, expected);
        assert!(stats.vram.reserved_bytes <= stats.vram.capacity_bytes);
    }
    for (buffer, pattern) in &live {
        let mut back = vec![0u8; pattern.len()];
        device.download(buffer, 0, &mut back).unwrap();
        assert!(back == *pattern, "a buffer was overwritten by a neighbour");
    }
    let stats = device.stats();
    assert!((0.0..=1.0).contains(&stats.vram.fragmentation));
    drop(live);
    assert_eq!(device.stats().vram.allocated_bytes, 0);
    assert!(device.trim() > 0);
}
