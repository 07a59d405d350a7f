//! The VRAM pool never hands out overlapping memory under a random alloc/free workload: each
//! live buffer holds its own pattern, and every pattern survives. The host pool grows in the
//! background for allocations that must not wait.

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

/// A ready-only host allocation never waits for the driver: on an empty pool it answers `None`
/// and a background thread adds a chunk, after which it succeeds; `grow_host_pool` adds chunks up
/// front and stops at the capacity.
#[test]
fn ready_host_memory_comes_from_chunks_grown_in_the_background() {
    let device = device(64 << 20, 96 << 20);
    assert!(
        device.alloc_host_ready(1 << 20).is_none(),
        "the pool starts empty"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut buffer = loop {
        if let Some(buffer) = device.alloc_host_ready(1 << 20) {
            break buffer;
        }
        assert!(std::time::Instant::now() < deadline, "the pool never grew");
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    assert_eq!(buffer.len(), 1 << 20);
    buffer.fill(0x5a);
    let mut on_device = device.alloc(1 << 20).unwrap();
    device.upload(&buffer, &mut on_device, 0).unwrap();
    let mut back = vec![0u8; 1 << 20];
    device.download(&on_device, 0, &mut back).unwrap();
    assert!(back.iter().all(|&b| b == 0x5a));
    device.grow_host_pool(1 << 30).unwrap();
    let host = device.stats().host;
    assert_eq!(
        (host.reserved_bytes, host.allocated_bytes),
        (96 << 20, 1 << 20),
        "grown to the capacity and no further"
    );
    assert!(
        device.alloc_host_ready(95 << 20).is_none(),
        "no free range that large"
    );
    let rest = device
        .alloc_host_ready(32 << 20)
        .expect("the second chunk is free");
    drop((rest, buffer));
    assert_eq!(device.stats().host.allocated_bytes, 0);
}
