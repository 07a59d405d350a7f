//! The state bus's verbs: pages, updates, epochs, edges and propagation, GPU pages, checkpoints.

use vbus_state::{Delta, Durability, ElemType, Error, Location, MergeOp, Rule, StateBus};

fn i64s(values: &[i64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn as_i64s(bytes: &[u8]) -> Vec<i64> {
    bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn sum_rule() -> Rule {
    Rule::Semiring {
        op: MergeOp::Add,
        elem: ElemType::I64,
    }
}

#[test]
fn pages_deltas_epochs_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let bus = StateBus::open(dir.path()).unwrap();
    let page = bus.create_page(1024, Location::Cpu).unwrap();
    let view = bus.query_page(page).unwrap();
    assert_eq!(
        (view.size, view.epoch, view.bytes),
        (1024, 0, vec![0u8; 1024])
    );

    let seq = bus
        .update_page(page, &Delta::sparse(vec![(10, vec![1, 2, 3])]))
        .unwrap();
    let add = Delta::with_op(
        MergeOp::Add,
        ElemType::I32,
        vec![(16, 5i32.to_le_bytes().to_vec())],
    );
    bus.update_page(page, &add).unwrap();
    bus.update_page(page, &add).unwrap();
    let view = bus.query_page(page).unwrap();
    assert_eq!(view.epoch, 3);
    assert_eq!(&view.bytes[10..13], &[1, 2, 3]);
    assert_eq!(&view.bytes[16..20], &10i32.to_le_bytes());
    // A delta that changes nothing leaves the epoch alone.
    bus.update_page(page, &Delta::sparse(vec![(10, vec![1, 2, 3])]))
        .unwrap();
    assert_eq!(bus.query_page(page).unwrap().epoch, 3);
    // Optimistic concurrency by epoch.
    let err = bus
        .update_page_at(page, &Delta::sparse(vec![(0, vec![9])]), 2)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::EpochMismatch {
                expected: 2,
                actual: 3,
                ..
            }
        ),
        "{err}"
    );
    bus.update_page_at(page, &Delta::sparse(vec![(0, vec![9])]), 3)
        .unwrap();
    // Bad input changes nothing.
    let before = bus.state_hash().unwrap();
    assert!(matches!(
        bus.update_page(page, &Delta::sparse(vec![(1020, vec![0; 8])])),
        Err(Error::BadDelta { .. })
    ));
    assert!(matches!(
        bus.update_page(99, &add),
        Err(Error::NoSuchPage { id: 99 })
    ));
    assert_eq!(bus.state_hash().unwrap(), before);
    assert!(seq >= 2);

    let (other, seq) = bus.create(8, Location::Cpu).unwrap();
    assert_eq!(
        seq,
        bus.last_seq(),
        "create answers its own change's number"
    );
    let info = bus.page_info(page).unwrap();
    assert_eq!(
        (info.size, info.epoch),
        (1024, bus.query_page(page).unwrap().epoch)
    );
    bus.delete_page(other).unwrap();
    assert!(matches!(
        bus.query_page(other),
        Err(Error::NoSuchPage { .. })
    ));
    let hash = bus.state_hash().unwrap();
    let last = bus.last_seq();
    drop(bus);

    // Reopen without a checkpoint: the log alone rebuilds it.
    let bus = StateBus::open(dir.path()).unwrap();
    assert_eq!((bus.state_hash().unwrap(), bus.last_seq()), (hash, last));
    // A new page gets a new id, never a reused one.
    assert!(bus.create_page(8, Location::Cpu).unwrap() > other);
}

#[test]
fn edges_propagate_in_order_and_cycles_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bus = StateBus::builder(dir.path())
        .durability(Durability::Buffered)
        .function("double", |sources, target| {
            for (out, chunk) in target.chunks_exact_mut(8).zip(sources[0].chunks_exact(8)) {
                let value = i64::from_le_bytes(chunk.try_into().unwrap());
                out.copy_from_slice(&(2 * value).to_le_bytes());
            }
        })
        .open()
        .unwrap();
    // a, b → sum = a + b → doubled = 2 * sum; c is unrelated.
    let [a, b, sum, doubled, c] = [0; 5].map(|_| bus.create_page(16, Location::Cpu).unwrap());
    bus.update_page(a, &Delta::dense(i64s(&[1, 2]))).unwrap();
    bus.add_edge(a, sum, sum_rule()).unwrap();
    bus.add_edge(b, sum, sum_rule()).unwrap();
    bus.add_edge(sum, doubled, Rule::Function("double".to_owned()))
        .unwrap();
    assert_eq!(as_i64s(&bus.query_page(sum).unwrap().bytes), [1, 2]);
    assert_eq!(as_i64s(&bus.query_page(doubled).unwrap().bytes), [2, 4]);

    bus.batch_update(&[
        (a, Delta::dense(i64s(&[10, 20]))),
        (b, Delta::dense(i64s(&[5, 5]))),
    ])
    .unwrap();
    assert_eq!(as_i64s(&bus.query_page(sum).unwrap().bytes), [15, 25]);
    assert_eq!(as_i64s(&bus.query_page(doubled).unwrap().bytes), [30, 50]);
    let epochs = |bus: &StateBus| [sum, doubled, c].map(|p| bus.query_page(p).unwrap().epoch);
    let before = epochs(&bus);
    // b changes but the sum does not: a += 1, b -= 1 in one batch; nothing downstream moves.
    let plus = Delta::with_op(MergeOp::Add, ElemType::I64, vec![(0, i64s(&[1]))]);
    let minus = Delta::with_op(MergeOp::Add, ElemType::I64, vec![(0, i64s(&[-1]))]);
    bus.batch_update(&[(a, plus), (b, minus)]).unwrap();
    assert_eq!(epochs(&bus), before, "unchanged inputs recomputed targets");

    // doubled → a would close a → sum → doubled → a.
    let err = bus.add_edge(doubled, a, sum_rule()).unwrap_err();
    match &err {
        Error::Cycle { pages } => assert_eq!(pages, &format!("{a} → {sum} → {doubled} → {a}")),
        other => panic!("expected a cycle, got {other}"),
    }
    assert!(bus.add_edge(c, c, sum_rule()).is_err());
    // A target has one rule; sizes must agree; functions must be registered.
    assert!(matches!(
        bus.add_edge(c, sum, Rule::Function("double".to_owned())),
        Err(Error::BadEdge { .. })
    ));
    let small = bus.create_page(8, Location::Cpu).unwrap();
    assert!(matches!(
        bus.add_edge(small, sum, sum_rule()),
        Err(Error::BadEdge { .. })
    ));
    assert!(matches!(
        bus.add_edge(c, small, Rule::Function("nope".to_owned())),
        Err(Error::UnknownFunction { .. })
    ));
    // Removing an edge recomputes the target from what is left.
    bus.remove_edge(b, sum).unwrap();
    assert_eq!(as_i64s(&bus.query_page(sum).unwrap().bytes), [11, 20]);
    assert_eq!(bus.edges().len(), 2);
    let metrics = bus.metrics();
    assert!(metrics.propagation.count >= 3 && metrics.delta_apply.count >= 3);
    assert_eq!(metrics.n_edges, 2);
}

#[test]
fn gpu_pages_keep_their_bytes_on_the_device() {
    let dir = tempfile::tempdir().unwrap();
    let device = crate::test_device();
    let open = || {
        StateBus::builder(dir.path())
            .device(device.clone())
            .open()
            .unwrap()
    };
    let bus = open();
    let used_before = device.stats().vram.allocated_bytes;
    let page = bus.create_page(1 << 20, Location::Gpu).unwrap();
    assert!(
        device.stats().vram.allocated_bytes >= used_before + (1 << 20),
        "the page is not in device memory"
    );
    let runs: Vec<(u64, Vec<u8>)> = (0..64)
        .map(|run| (run * 4096, vec![run as u8 + 1; 100]))
        .collect();
    bus.update_page(page, &Delta::sparse(runs)).unwrap();
    let add = Delta::with_op(MergeOp::Add, ElemType::U8, vec![(0, vec![1; 10])]);
    bus.update_page(page, &add).unwrap();
    let view = bus.query_page(page).unwrap();
    assert_eq!(view.location, Location::Gpu);
    assert_eq!(&view.bytes[..12], &[2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1]);
    assert_eq!(&view.bytes[63 * 4096..63 * 4096 + 100], &[64u8; 100][..]);
    let hash = bus.state_hash().unwrap();
    bus.close().unwrap();
    // Back from the checkpoint, on the device again.
    let bus = open();
    assert_eq!(bus.state_hash().unwrap(), hash);
    assert_eq!(bus.query_page(page).unwrap().location, Location::Gpu);
}

/// A propagation target on the device is recomputed there, and its epoch moves only when its
/// bytes change (the device page is read back to tell).
#[test]
fn propagation_reaches_gpu_pages() {
    let dir = tempfile::tempdir().unwrap();
    let device = crate::test_device();
    let bus = StateBus::builder(dir.path()).device(device).open().unwrap();
    let source = bus.create_page(16, Location::Cpu).unwrap();
    let target = bus.create_page(16, Location::Gpu).unwrap();
    let max = Rule::Semiring {
        op: MergeOp::Max,
        elem: ElemType::I64,
    };
    bus.add_edge(source, target, max).unwrap();
    let set = |values: [i64; 2]| {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        bus.update_page(source, &Delta::dense(bytes)).unwrap();
    };
    set([5, 7]);
    let view = bus.query_page(target).unwrap();
    assert_eq!(view.location, Location::Gpu);
    assert_eq!(as_i64s(&view.bytes), [5, 7]);
    let epoch = view.epoch;
    // The same bytes again: the source changes epoch, the target's recomputed bytes do not.
    set([5, 7]);
    assert_eq!(bus.query_page(target).unwrap().epoch, epoch);
    set([9, 7]);
    let view = bus.query_page(target).unwrap();
    assert_eq!(as_i64s(&view.bytes), [9, 7]);
    assert_eq!(view.epoch, epoch + 1);
}

#[test]
fn checkpoints_are_kept_two_deep_and_release_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        StateBus::builder(dir.path())
            .segment_bytes(16 << 10)
            .durability(Durability::Buffered)
            .open()
            .unwrap()
    };
    let bus = open();
    let page = bus.create_page(4096, Location::Cpu).unwrap();
    let mut checkpoint_seqs = Vec::new();
    for round in 0..4u8 {
        for step in 0..100u64 {
            bus.update_page(page, &Delta::sparse(vec![(step * 8, vec![round; 300])]))
                .unwrap();
        }
        checkpoint_seqs.push(bus.checkpoint().unwrap());
    }
    let checkpoints: Vec<_> = std::fs::read_dir(dir.path().join("CHECKPOINTS"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(checkpoints.len(), 2, "{checkpoints:?}");
    let log = bus.metrics().log;
    assert!(log.first_seq > 1, "the log was not released");
    assert!(log.first_seq <= checkpoint_seqs[2] + 1);
    // Replay reaches back to the older kept checkpoint, not before.
    assert!(bus.replay_to(checkpoint_seqs[2]).is_ok());
    assert!(matches!(
        bus.replay_to(checkpoint_seqs[0]),
        Err(Error::NotRetained { .. })
    ));
    let hash = bus.state_hash().unwrap();
    drop(bus);
    assert_eq!(open().state_hash().unwrap(), hash);

    // A damaged newest checkpoint: the older one and the log still rebuild the state.
    let newest = dir
        .path()
        .join("CHECKPOINTS")
        .join(format!("ckpt-{:020}.bin", checkpoint_seqs[3]));
    let mut bytes = std::fs::read(&newest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&newest, bytes).unwrap();
    assert_eq!(open().state_hash().unwrap(), hash);
}

#[test]
fn async_changes_reach_the_log_and_reserved_pages_start_zeroed() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        StateBus::builder(dir.path())
            .durability(Durability::Async)
            .reserve_pages(64, 100)
            .open()
            .unwrap()
    };
    let bus = open();
    let mut pages = Vec::new();
    for value in 0..150u8 {
        let page = bus.create_page(64, Location::Cpu).unwrap();
        assert_eq!(bus.query_page(page).unwrap().bytes, vec![0u8; 64]);
        bus.update_page(page, &Delta::sparse(vec![(0, vec![value; 8])]))
            .unwrap();
        pages.push(page);
    }
    // A deleted page's buffer is reused zeroed.
    bus.delete_page(pages.pop().unwrap()).unwrap();
    let again = bus.create_page(64, Location::Cpu).unwrap();
    assert_eq!(bus.query_page(again).unwrap().bytes, vec![0u8; 64]);
    let hash = bus.state_hash().unwrap();
    // No checkpoint: dropping the bus writes the queued records, and the log rebuilds it all.
    drop(bus);
    assert_eq!(open().state_hash().unwrap(), hash);
}
