//! Issue 20, finding 3: the state bus had no total limit (four 16 GiB pages from one client on a
//! 24 GiB machine, and checkpoints that could fill the disk). Creates past a limit are refused,
//! name the limit and change nothing; the bus goes on.

use vbus_state::{Error, Limit, Location, StateBus};

const MIB: u64 = 1 << 20;

#[test]
fn pages_past_the_page_limit_are_refused_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let bus = StateBus::builder(dir.path())
        .page_bytes_max(10 * MIB)
        .open()
        .unwrap();
    let first = bus.create_page(6 * MIB, Location::Cpu).unwrap();
    let seq = bus.last_seq();
    let err = bus.create_page(5 * MIB, Location::Cpu).unwrap_err();
    match err {
        Error::OverLimit {
            limit: Limit::PageBytes,
            limit_bytes,
            used_bytes,
            requested_bytes,
        } => assert_eq!(
            (limit_bytes, used_bytes, requested_bytes),
            (10 * MIB, 6 * MIB, 5 * MIB)
        ),
        other => panic!("expected the page limit, got {other}"),
    }
    assert_eq!(
        (bus.last_seq(), bus.pages().len()),
        (seq, 1),
        "nothing changed"
    );
    assert_eq!(bus.metrics().page_bytes, 6 * MIB);
    // What fits still fits, and a delete makes room.
    bus.create_page(4 * MIB, Location::Cpu).unwrap();
    bus.delete_page(first).unwrap();
    bus.create_page(5 * MIB, Location::Cpu).unwrap();
    assert_eq!(bus.metrics().page_bytes, 9 * MIB);
}

#[test]
fn pages_whose_checkpoints_would_not_fit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Two checkpoints kept plus the one being written: three images of the pages.
    let bus = StateBus::builder(dir.path())
        .checkpoints_retained(2)
        .checkpoint_bytes_max(30 * MIB)
        .open()
        .unwrap();
    bus.create_page(8 * MIB, Location::Cpu).unwrap();
    let err = bus.create_page(2 * MIB, Location::Cpu).unwrap_err();
    assert!(
        matches!(
            err,
            Error::OverLimit {
                limit: Limit::CheckpointBytes,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("checkpoints"), "{err}");
    bus.checkpoint().unwrap();
}

/// A limit lowered below what the log already holds never stops recovery: limits guard new
/// creates only.
#[test]
fn a_lowered_limit_still_opens_what_the_log_holds() {
    let dir = tempfile::tempdir().unwrap();
    {
        let bus = StateBus::open(dir.path()).unwrap();
        bus.create_page(3 * MIB, Location::Cpu).unwrap();
        bus.create_page(3 * MIB, Location::Cpu).unwrap();
    }
    let bus = StateBus::builder(dir.path())
        .page_bytes_max(4 * MIB)
        .open()
        .unwrap();
    assert_eq!(bus.pages().len(), 2);
    assert_eq!(bus.metrics().page_bytes, 6 * MIB);
    assert!(matches!(
        bus.create_page(1, Location::Cpu),
        Err(Error::OverLimit { .. })
    ));
}

/// A GPU page larger than the device answered 500 and failed the whole bus; now it is refused
/// as over the device's memory, and the bus goes on.
#[test]
fn a_gpu_page_beyond_the_device_is_refused_and_the_bus_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let bus = StateBus::builder(dir.path())
        .device(crate::test_device())
        .open()
        .unwrap();
    let err = bus.create_page(64 * MIB, Location::Gpu).unwrap_err();
    assert!(
        matches!(
            err,
            Error::OverLimit {
                limit: Limit::DeviceMemory,
                requested_bytes,
                ..
            } if requested_bytes == 64 * MIB
        ),
        "{err}"
    );
    let page = bus.create_page(MIB, Location::Gpu).unwrap();
    assert_eq!(bus.query_page(page).unwrap().bytes.len() as u64, MIB);
    bus.create_page(MIB, Location::Cpu).unwrap();
}

/// Issue 20, formats: a checkpoint of a later format stops the open by name; the bus does not
/// fall back to an older state as it does for a damaged checkpoint.
#[test]
fn a_checkpoint_of_a_later_format_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    {
        let bus = StateBus::open(dir.path()).unwrap();
        bus.create_page(64, Location::Cpu).unwrap();
        bus.checkpoint().unwrap();
    }
    let checkpoints = dir.path().join("CHECKPOINTS");
    let newest = std::fs::read_dir(&checkpoints)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .max()
        .unwrap();
    let mut bytes = std::fs::read(&newest).unwrap();
    bytes[7] = b'2';
    std::fs::write(&newest, &bytes).unwrap();
    let err = StateBus::open(dir.path()).unwrap_err();
    assert!(matches!(err, Error::UnsupportedFormat { .. }), "{err}");
    assert!(err.to_string().contains("VBUSCKP2"), "{err}");
}
