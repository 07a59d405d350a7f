//! `/metrics`: the tiers, the moves between them, the L3 store and the state bus in Prometheus
//! text format.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::AppState;

/// The figures of `/v1/stats` as Prometheus samples.
pub(super) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let cache = state.cache().get_stats();
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, value) in samples {
            if labels.is_empty() {
                out.push_str(&format!("{name} {value}\n"));
            } else {
                out.push_str(&format!("{name}{{{labels}}} {value}\n"));
            }
        }
    };
    let tiers = [("l1", &cache.l1), ("l2", &cache.l2), ("l3", &cache.l3)];
    let per_tier = |pick: &dyn Fn(&vbus_cache::TierStats) -> u64| -> Vec<(String, f64)> {
        tiers
            .iter()
            .map(|(name, stats)| (format!("tier=\"{name}\""), pick(stats) as f64))
            .collect()
    };
    for (name, kind, help, pick) in [
        (
            "vbus_cache_hits_total",
            "counter",
            "Gets answered by the tier.",
            (|s: &vbus_cache::TierStats| s.hits) as fn(&vbus_cache::TierStats) -> u64,
        ),
        (
            "vbus_cache_misses_total",
            "counter",
            "Gets the tier could not answer.",
            |s| s.misses,
        ),
        (
            "vbus_cache_evictions_total",
            "counter",
            "Values evicted from the tier.",
            |s| s.n_evictions,
        ),
        (
            "vbus_cache_used_bytes",
            "gauge",
            "Bytes the tier holds.",
            |s| s.used_bytes,
        ),
        (
            "vbus_cache_capacity_bytes",
            "gauge",
            "The tier's capacity.",
            |s| s.capacity_bytes,
        ),
        (
            "vbus_cache_entries",
            "gauge",
            "Values the tier holds.",
            |s| s.n_entries,
        ),
    ] {
        let samples = per_tier(&pick);
        let samples: Vec<(&str, f64)> = samples.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        family(name, kind, help, &samples);
    }
    for (name, value) in [
        ("vbus_l1_hit_rate", cache.l1_hit_rate),
        ("vbus_l2_hit_rate", cache.l2_hit_rate),
        ("vbus_l3_hit_rate", cache.l3_hit_rate),
    ] {
        family(name, "gauge", "Hit rate, percent.", &[("", value)]);
    }
    for (name, help, value) in [
        (
            "vbus_promotions_total",
            "Values promoted L3 to L2.",
            cache.promotions,
        ),
        (
            "vbus_write_backs_total",
            "Dirty values written to L3.",
            cache.write_backs,
        ),
        (
            "vbus_source_fetches_total",
            "Values fetched from the source.",
            cache.source_fetches,
        ),
    ] {
        family(name, "counter", help, &[("", value as f64)]);
    }
    let l3 = state.cache().store().stats();
    for (name, help, value) in [
        (
            "vbus_l3_checksum_failures_total",
            "L3 files whose bytes failed their checksums (each quarantined, never served).",
            l3.n_checksum_failures,
        ),
        (
            "vbus_l3_changed_on_open_total",
            "L3 files whose bytes changed on disk while the daemon was down.",
            l3.n_changed_on_open,
        ),
        (
            "vbus_l3_missing_total",
            "L3 files deleted by hand while the daemon ran.",
            l3.n_missing,
        ),
    ] {
        family(name, "counter", help, &[("", value as f64)]);
    }
    family(
        "vbus_dirty_bytes",
        "gauge",
        "Write-back bytes not yet in L3.",
        &[("", cache.dirty_bytes as f64)],
    );
    if let Some(bus) = state.state_bus() {
        let metrics = bus.metrics();
        family(
            "vbus_state_pages",
            "gauge",
            "Pages of the state bus.",
            &[("", metrics.n_pages as f64)],
        );
        family(
            "vbus_state_last_seq",
            "gauge",
            "The last change's sequence number.",
            &[("", metrics.last_seq as f64)],
        );
        family(
            "vbus_state_log_syncs_total",
            "counter",
            "Log syncs.",
            &[("", metrics.log.n_syncs as f64)],
        );
        family(
            "vbus_state_delta_apply_seconds",
            "summary",
            "Applying an update's deltas.",
            &[
                ("quantile=\"0.5\"", metrics.delta_apply.p50_ns as f64 / 1e9),
                ("quantile=\"0.99\"", metrics.delta_apply.p99_ns as f64 / 1e9),
            ],
        );
    }
    let mut response = out.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}
