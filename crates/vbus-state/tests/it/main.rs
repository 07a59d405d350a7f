//! `vbus-state` through its public API.

mod bus;
mod crash;
mod delta;
mod history;
mod limits;

/// A 16 MiB device for the GPU-page tests, on the backend `VBUS_GPU_TEST_BACKEND` names
/// (simulated by default).
pub fn test_device() -> vbus_gpu::Device {
    let backend =
        vbus_gpu::BackendChoice::from_test_env().unwrap_or_else(|error| panic!("{error}"));
    vbus_gpu::Device::open(&vbus_gpu::DeviceOptions {
        backend,
        capacity_bytes: 16 << 20,
        host_capacity_bytes: 16 << 20,
        chunk_bytes: 4 << 20,
        ..vbus_gpu::DeviceOptions::default()
    })
    .unwrap()
}

use vbus_state::{Delta, ElemType, Location, MergeOp, Rule, StateBus};

/// One change of a random history, chosen from the bus's state and rngs seeded by the last
/// sequence number, so the same state always takes the same step (a crashed run and its
/// reference replay agree). A refused attempt (a cycle, say) changes nothing, and the next
/// attempt tries another change.
pub fn random_step(bus: &StateBus) {
    let seq = bus.last_seq();
    for attempt in 0..100u64 {
        let mut rng = fastrand::Rng::with_seed(seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ attempt);
        if try_step(bus, &mut rng) && bus.last_seq() != seq {
            return;
        }
    }
}

fn try_step(bus: &StateBus, rng: &mut fastrand::Rng) -> bool {
    let pages = bus.page_ids();
    let pick = |rng: &mut fastrand::Rng| pages[rng.usize(..pages.len())];
    let rng = &mut *rng;
    let choice = if pages.len() < 4 { 0 } else { rng.u32(..100) };
    let outcome = match choice {
        0..=9 => bus
            .create_page(8 * rng.u64(1..4), Location::Cpu)
            .map(|_| ()),
        10..=49 => {
            let id = pick(rng);
            let size = bus.query_page(id).unwrap().size;
            let offset = 8 * rng.u64(..size / 8);
            let len = (8 * rng.u64(1..4)).min(size - offset);
            let bytes: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            let delta = if rng.bool() {
                Delta::sparse(vec![(offset, bytes)])
            } else {
                Delta::with_op(MergeOp::Add, ElemType::I64, vec![(offset, bytes)])
            };
            bus.update_page(id, &delta).map(|_| ())
        }
        50..=69 => {
            let updates: Vec<_> = (0..rng.usize(2..5))
                .map(|_| {
                    let id = pick(rng);
                    (
                        id,
                        Delta::with_op(MergeOp::Max, ElemType::U8, vec![(0, vec![rng.u8(..); 8])]),
                    )
                })
                .collect();
            bus.batch_update(&updates).map(|_| ())
        }
        70..=89 => {
            let (source, target) = (pick(rng), pick(rng));
            bus.add_edge(
                source,
                target,
                Rule::Semiring {
                    op: MergeOp::Add,
                    elem: ElemType::I64,
                },
            )
            .map(|_| ())
        }
        90..=91 => {
            let edges = bus.edges();
            if edges.is_empty() {
                Ok(())
            } else {
                let (source, target, _) = edges[rng.usize(..edges.len())].clone();
                bus.remove_edge(source, target).map(|_| ())
            }
        }
        92..=93 => bus.delete_page(pick(rng)).map(|_| ()),
        _ => bus
            .create_page(8 * rng.u64(1..4), Location::Cpu)
            .map(|_| ()),
    };
    outcome.is_ok()
}
