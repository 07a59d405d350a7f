//! Property tests: the merge law bit for bit, the codec round trip, and decoding that never
//! panics.

use vbus_state::delta::{decode, encode};
use vbus_state::{Delta, ElemType, MergeOp, merge};

const PAGE: usize = 256;

fn random_delta(rng: &mut fastrand::Rng, op: MergeOp, elem: ElemType) -> Delta {
    let unit = elem.size();
    let mut runs = Vec::new();
    let mut at = 0usize;
    while at < PAGE && runs.len() < 6 {
        at += rng.usize(..24) * unit;
        let len = (1 + rng.usize(..8)) * unit;
        if at + len > PAGE {
            break;
        }
        let bytes: Vec<u8> = match elem {
            // Floats from a small set of values (NaN, ±0, ±inf included) so ties and NaNs occur.
            ElemType::F32 => (0..len / 4)
                .flat_map(|_| {
                    [0.0f32, -0.0, 1.5, -2.25, f32::NAN, f32::INFINITY, 3.0e7][rng.usize(..7)]
                        .to_le_bytes()
                })
                .collect(),
            ElemType::F64 => (0..len / 8)
                .flat_map(|_| {
                    [0.0f64, -0.0, 1.5, -2.25, f64::NAN, f64::NEG_INFINITY, 1e300][rng.usize(..7)]
                        .to_le_bytes()
                })
                .collect(),
            _ => (0..len).map(|_| rng.u8(..)).collect(),
        };
        runs.push((at as u64, bytes));
        at += len;
    }
    Delta::with_op(op, elem, runs)
}

fn random_page(rng: &mut fastrand::Rng, elem: ElemType) -> Vec<u8> {
    match elem {
        ElemType::F32 => (0..PAGE / 4)
            .flat_map(|_| [0.0f32, -0.0, 7.0, f32::NAN, -1.0][rng.usize(..5)].to_le_bytes())
            .collect(),
        ElemType::F64 => (0..PAGE / 8)
            .flat_map(|_| [0.0f64, -0.0, 7.0, f64::NAN, -1.0][rng.usize(..5)].to_le_bytes())
            .collect(),
        _ => (0..PAGE).map(|_| rng.u8(..)).collect(),
    }
}

#[test]
fn applying_a_then_b_equals_applying_their_merge() {
    let mut rng = fastrand::Rng::with_seed(3);
    let mut n_checked = 0;
    for op in MergeOp::ALL {
        for elem in ElemType::ALL {
            for case in 0..400 {
                let (a, b) = (
                    random_delta(&mut rng, op, elem),
                    random_delta(&mut rng, op, elem),
                );
                let page = random_page(&mut rng, elem);
                let float_add = op == MergeOp::Add && matches!(elem, ElemType::F32 | ElemType::F64);
                let merged = match merge(&a, &b) {
                    Ok(merged) => merged,
                    Err(err) => {
                        assert!(float_add, "{op:?} {elem:?}: {err}");
                        continue;
                    }
                };
                assert!(!float_add, "float add deltas were merged");
                let mut stepwise = page.clone();
                a.apply(&mut stepwise).unwrap();
                b.apply(&mut stepwise).unwrap();
                let mut at_once = page;
                merged.apply(&mut at_once).unwrap();
                assert_eq!(stepwise, at_once, "{op:?} over {elem:?}, case {case}");
                n_checked += 1;
            }
        }
    }
    assert!(n_checked >= 9_000, "{n_checked} cases");
    // Different operators do not merge.
    let add = Delta::with_op(MergeOp::Add, ElemType::I32, vec![(0, vec![1, 0, 0, 0])]);
    assert!(merge(&Delta::dense(vec![1; 4]), &add).is_err());
}

#[test]
fn the_codec_round_trips_and_never_panics() {
    let mut rng = fastrand::Rng::with_seed(4);
    for op in MergeOp::ALL {
        for elem in ElemType::ALL {
            for _ in 0..200 {
                let delta = random_delta(&mut rng, op, elem);
                let mut bytes = vec![0xee];
                encode(&delta, &mut bytes);
                let (decoded, len) = decode(&bytes[1..]).unwrap();
                assert_eq!(decoded, delta);
                assert_eq!(len, bytes.len() - 1);
                // Every cut is refused, never a panic.
                for cut in 0..len {
                    assert!(decode(&bytes[1..1 + cut]).is_err(), "cut at {cut} of {len}");
                }
            }
        }
    }
    // A sparse delta of 1% of 2 MiB in 64-byte runs: about 1% of the page's bytes on the wire.
    let runs: Vec<(u64, Vec<u8>)> = (0..328).map(|run| (run * 6400, vec![7u8; 64])).collect();
    let mut bytes = Vec::new();
    encode(&Delta::sparse(runs), &mut bytes);
    assert!(bytes.len() < 21_000 + 1_000, "{} bytes", bytes.len());
    for _ in 0..200_000 {
        let junk: Vec<u8> = (0..rng.usize(..40)).map(|_| rng.u8(..)).collect();
        let _ = decode(&junk);
    }
}

#[test]
fn deltas_outside_or_misaligned_are_refused_and_change_nothing() {
    let mut page = vec![0u8; 16];
    for delta in [
        Delta::sparse(vec![(12, vec![1; 8])]),
        Delta::with_op(MergeOp::Add, ElemType::I32, vec![(2, vec![1; 4])]),
        Delta::with_op(MergeOp::Add, ElemType::I64, vec![(0, vec![1; 4])]),
        Delta {
            op: MergeOp::Overwrite,
            elem: ElemType::U8,
            runs: vec![
                vbus_state::Run {
                    offset: 4,
                    bytes: vec![1; 4],
                },
                vbus_state::Run {
                    offset: 2,
                    bytes: vec![1; 4],
                },
            ],
        },
    ] {
        assert!(delta.apply(&mut page).is_err(), "{delta:?}");
        assert_eq!(page, vec![0u8; 16]);
    }
}
