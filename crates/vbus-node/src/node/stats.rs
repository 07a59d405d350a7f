//! The node's figures, as `/v1/stats` serves them.

use serde_json::json;

use super::Node;

/// The body of `/v1/stats`.
impl Node {
    /// The `/v1/stats` document: every tier's configuration and figures, the hit rates, the
    /// moves between tiers, the state bus and the process (keys in `docs/API.md`).
    pub fn stats(&self) -> serde_json::Value {
        stats_json(self)
    }
}

fn stats_json(state: &Node) -> serde_json::Value {
    let tiers = &state.config.cache_hierarchy;
    let cache = state.tiers.cache.get_stats();
    let tier = |config: &crate::config::TierConfig,
                stats: &vbus_cache::TierStats,
                extra: serde_json::Value| {
        let mut value = json!({
            "enabled": config.enabled,
            "capacity_bytes": config.capacity_bytes(),
            "eviction_policy": config.eviction_policy.as_str(),
            "hits": stats.hits,
            "misses": stats.misses,
            "hit_rate_percent": stats.hit_rate_percent(),
            "n_entries": stats.n_entries,
            "used_bytes": stats.used_bytes,
            "n_evictions": stats.n_evictions,
            "evicted_bytes": stats.evicted_bytes,
            "n_pinned": stats.n_pinned,
        });
        if let (Some(object), serde_json::Value::Object(extra)) = (value.as_object_mut(), extra) {
            object.extend(extra);
        }
        value
    };
    let l1_device = state.tiers.l1_backend.map_or("off", |kind| kind.as_str());
    json!({
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
        "home": state.home.root(),
        "l1_hit_rate": cache.l1_hit_rate,
        "l2_hit_rate": cache.l2_hit_rate,
        "l3_hit_rate": cache.l3_hit_rate,
        "tiers": {
            "L1_VRAM": tier(&tiers.l1_vram, &cache.l1, json!({ "device": l1_device })),
            "L2_RAM": tier(&tiers.l2_ram, &cache.l2, json!({})),
            "L3_DISK": tier(&tiers.l3_disk, &cache.l3, l3_extra(state)),
        },
        "moves": {
            "promotions_l3_to_l2": cache.promotions,
            "bytes_l3_to_l2": cache.bytes_l3_to_l2,
            "promotions_to_l1": cache.promotions_to_l1,
            "bytes_to_l1": cache.bytes_to_l1,
            "demotions_from_l1": cache.demotions_from_l1,
            "bytes_from_l1": cache.bytes_from_l1,
            "source_fetches": cache.source_fetches,
            "write_backs": cache.write_backs,
            "bytes_written_back": cache.bytes_written_back,
            "write_back_failures": cache.write_back_failures,
        },
        "write_mode": tiers.write_mode,
        "dirty": { "entries": cache.dirty_entries, "bytes": cache.dirty_bytes },
        "state": match &state.state_error {
            Some(error) => json!({ "enabled": true, "error": error }),
            None => state_stats(state.state_bus.as_deref()),
        },
        "process": { "rss_bytes": rss_bytes() },
    })
}

/// What only the L3 store knows: its files, its start-up reconciliation, its checksum failures.
fn l3_extra(state: &Node) -> serde_json::Value {
    let stats = state.tiers.cache.store().stats();
    json!({
        "path": state.home.l3_dir(),
        "n_files": stats.n_files,
        "pinned_bytes": stats.pinned_bytes,
        "n_checksum_failures": stats.n_checksum_failures,
        "n_missing": stats.n_missing,
        "n_changed_on_open": stats.n_changed_on_open,
        "n_adopted_on_open": stats.n_adopted_on_open,
        "n_dropped_on_open": stats.n_dropped_on_open,
        "open_ms": stats.open_ms,
    })
}

/// The state bus's figures for `/v1/stats`.
fn state_stats(bus: Option<&vbus_state::StateBus>) -> serde_json::Value {
    let Some(bus) = bus else {
        return json!({ "enabled": false });
    };
    let metrics = bus.metrics();
    let latency = |summary: vbus_tlog::LatencySummary| {
        json!({
            "count": summary.count,
            "mean_ns": summary.mean_ns,
            "p50_ns": summary.p50_ns,
            "p99_ns": summary.p99_ns,
            "max_ns": summary.max_ns,
        })
    };
    json!({
        "enabled": true,
        "n_pages": metrics.n_pages,
        "page_bytes": metrics.page_bytes,
        "n_edges": metrics.n_edges,
        "last_seq": metrics.last_seq,
        "log": {
            "first_seq": metrics.log.first_seq,
            "synced_seq": metrics.log.synced_seq,
            "n_segments": metrics.log.n_segments,
            "n_syncs": metrics.log.n_syncs,
            "appended_bytes": metrics.log.appended_bytes,
        },
        "latency": {
            "delta_apply": latency(metrics.delta_apply),
            "propagation": latency(metrics.propagation),
            "log_append": latency(metrics.log_append),
            "fsync": latency(metrics.log.sync),
        },
    })
}

/// Resident set size of this process, from `/proc/self/status`.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line["VmRSS:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}
