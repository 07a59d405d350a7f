//! Bounded fuzzing of the parsers that take bytes from outside (issue 20): log records, state
//! deltas, dataset manifests, configs, and dataset and path names. Each starts from valid inputs
//! and flips, cuts, splices and replaces bytes; nothing may panic, and what decodes must encode
//! back to what decodes the same. A failing input is printed in hex so it can be kept as a
//! regression case beside the seeds. The CI run does `VBUS_FUZZ_ITERATIONS` (default 3,000) per
//! parser; a longer run (README, "Fuzzing"):
//! `VBUS_FUZZ_ITERATIONS=1000000 cargo test --release -p vbus --test it fuzz_`.

use std::panic::{AssertUnwindSafe, catch_unwind};

fn iterations() -> usize {
    std::env::var("VBUS_FUZZ_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3_000)
}

/// Mutants of `seeds`: bytes flipped, cut, spliced with another seed, or replaced by noise.
fn mutants(seeds: &[Vec<u8>], seed: u64, mut check: impl FnMut(&[u8])) {
    let mut rng = fastrand::Rng::with_seed(seed);
    for _ in 0..iterations() {
        let mut bytes = seeds[rng.usize(..seeds.len())].clone();
        match rng.u8(..5) {
            0 => {
                for _ in 0..rng.usize(1..5) {
                    if !bytes.is_empty() {
                        let at = rng.usize(..bytes.len());
                        bytes[at] ^= rng.u8(1..);
                    }
                }
            }
            1 => bytes.truncate(rng.usize(..=bytes.len())),
            2 => {
                let other = &seeds[rng.usize(..seeds.len())];
                let at = rng.usize(..=bytes.len());
                let take = rng.usize(..=other.len());
                bytes.splice(at..at, other[..take].iter().copied());
            }
            3 => {
                if !bytes.is_empty() {
                    let at = rng.usize(..bytes.len());
                    bytes[at] = *[b'"', b'{', b'}', b'[', b',', b'\\', 0, 0xff]
                        .get(rng.usize(..8))
                        .unwrap_or(&0);
                }
            }
            _ => bytes = (0..rng.usize(..256)).map(|_| rng.u8(..)).collect(),
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| check(&bytes)));
        if let Err(panic) = outcome {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            panic!("the parser panicked ({panic:?}) on input {hex}");
        }
    }
}

#[test]
fn fuzz_log_records() {
    let mut seeds = Vec::new();
    for (seq, payload) in [(1u64, &b""[..]), (7, b"small"), (9, &[0xAB; 300][..])] {
        let mut frame = Vec::new();
        vbus_tlog::record::encode(&mut frame, seq, 3, payload);
        seeds.push(frame);
    }
    mutants(&seeds, 1, |bytes| {
        if let Ok((record, len)) = vbus_tlog::record::decode(bytes) {
            // The padding may be cut off at the very end of a buffer (it holds nothing).
            assert!(len <= bytes.len() && (len % 8 == 0 || len == bytes.len()));
            let mut again = Vec::new();
            vbus_tlog::record::encode(&mut again, record.seq, record.kind, record.payload);
            assert_eq!(
                vbus_tlog::record::decode(&again).map(|(r, _)| r),
                Ok(record)
            );
        }
    });
}

#[test]
fn fuzz_state_deltas() {
    use vbus_state::{Delta, ElemType, MergeOp};
    let deltas = [
        Delta::dense(vec![1, 2, 3, 4]),
        Delta::sparse(vec![(0, vec![9; 8]), (100, vec![7; 3])]),
        Delta::with_op(
            MergeOp::Add,
            ElemType::I64,
            vec![(8, 5i64.to_le_bytes().to_vec())],
        ),
    ];
    let seeds: Vec<Vec<u8>> = deltas
        .iter()
        .map(|delta| {
            let mut bytes = Vec::new();
            vbus_state::delta::encode(delta, &mut bytes);
            bytes
        })
        .collect();
    mutants(&seeds, 2, |bytes| {
        if let Ok((delta, len)) = vbus_state::delta::decode(bytes) {
            assert!(len <= bytes.len());
            let mut again = Vec::new();
            vbus_state::delta::encode(&delta, &mut again);
            let (back, _) = vbus_state::delta::decode(&again).expect("an encoded delta decodes");
            assert_eq!(back, delta);
            let _ = delta.validate(1 << 20);
        }
    });
}

#[test]
fn fuzz_manifests() {
    let hash = "ab".repeat(32);
    let seed = format!(
        r#"{{"format": 1, "dataset": "ds", "version": "v1", "piece_bytes": 4194304, "files": [{{"path": "a/b.bin", "size_bytes": 5, "blake3": "{hash}", "pieces": ["{hash}"]}}]}}"#
    );
    assert!(
        vbus_sync::Manifest::from_json(&seed).is_ok(),
        "the seed is valid"
    );
    mutants(&[seed.into_bytes()], 3, |bytes| {
        if let Ok(text) = std::str::from_utf8(bytes)
            && let Ok(manifest) = vbus_sync::Manifest::from_json(text)
        {
            assert_eq!(
                vbus_sync::Manifest::from_json(&manifest.to_json()).ok(),
                Some(manifest)
            );
        }
    });
}

#[test]
fn fuzz_configs() {
    let seeds = vec![
        vbus_node::Config::default().to_json_pretty().into_bytes(),
        br#"{"cache_hierarchy": {"L1_VRAM": {"max_size_mb": 64}}, "state": {"pages_max_mb": 8}}"#
            .to_vec(),
        b"{}".to_vec(),
    ];
    mutants(&seeds, 4, |bytes| {
        if let Ok(text) = std::str::from_utf8(bytes)
            && let Ok(config) = vbus_node::Config::from_json_str(text, "<fuzz>")
        {
            let again = vbus_node::Config::from_json_str(&config.to_json_pretty(), "<fuzz>")
                .expect("a valid config's own JSON is valid");
            assert_eq!(again, config);
        }
    });
}

#[test]
fn fuzz_names() {
    let seeds: Vec<Vec<u8>> = ["models", "llama-7b/model.safetensors", "a/b/c.bin", "x"]
        .iter()
        .map(|name| name.as_bytes().to_vec())
        .collect();
    mutants(&seeds, 5, |bytes| {
        let text = String::from_utf8_lossy(bytes);
        if vbus_store::validate_path(&text).is_ok() {
            assert!(
                !text
                    .split('/')
                    .any(|segment| segment.is_empty() || segment == "." || segment == "..")
            );
            assert!(!text.contains('\0'));
        }
        if vbus_store::validate_dataset(&text).is_ok() {
            assert!(!text.contains('/') && text != "." && text != "..");
        }
        let (dataset, _) = vbus::client::split_key(&text);
        assert!(!dataset.is_empty());
    });
}
