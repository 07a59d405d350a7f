//! [`Config::validate`]: every range and cross-key rule that the types alone do not check; each
//! refusal names the key, the value and what is allowed.

use std::net::SocketAddr;

use super::*;

impl Config {
    /// Checks every range and cross-key rule that the types alone do not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let tiers = [
            ("L1_VRAM", &self.cache_hierarchy.l1_vram),
            ("L2_RAM", &self.cache_hierarchy.l2_ram),
            ("L3_DISK", &self.cache_hierarchy.l3_disk),
        ];
        for (name, tier) in tiers {
            check_range(
                &format!("cache_hierarchy.{name}.max_size_mb"),
                tier.max_size_mb,
                1,
                TIER_SIZE_MB_MAX,
                "MiB",
            )?;
        }

        let l3_policy = self.cache_hierarchy.l3_disk.eviction_policy;
        if l3_policy != EvictionPolicy::Lru {
            return Err(ConfigError::Value {
                key: "cache_hierarchy.L3_DISK.eviction_policy".to_owned(),
                value: format!("\"{}\"", l3_policy.as_str()),
                allowed: "\"lru\" (the L3 store evicts by last access)".to_owned(),
            });
        }

        let bus = &self.bus_config;
        if bus.master_db.trim().is_empty() {
            return Err(value_error(
                "bus_config.master_db",
                &bus.master_db,
                "a non-empty directory path (relative to the home, or absolute), or s3://BUCKET[/PREFIX]",
            ));
        }
        if let Some(rest) = bus.master_db.strip_prefix("s3://")
            && rest.split('/').next().is_none_or(str::is_empty)
        {
            return Err(value_error(
                "bus_config.master_db",
                &bus.master_db,
                "s3://BUCKET or s3://BUCKET/PREFIX (the bucket is missing)",
            ));
        }
        let endpoint_ok = bus.s3_endpoint.is_empty()
            || bus.s3_endpoint.starts_with("http://")
            || bus.s3_endpoint.starts_with("https://");
        if !endpoint_ok {
            return Err(value_error(
                "bus_config.s3_endpoint",
                &bus.s3_endpoint,
                "\"\" (the environment or AWS), or an http:// or https:// URL",
            ));
        }
        if bus.repositories.len() > REPOSITORIES_MAX {
            return Err(ConfigError::Value {
                key: "bus_config.repositories".to_owned(),
                value: format!("a list of {} entries", bus.repositories.len()),
                allowed: format!("at most {REPOSITORIES_MAX} entries"),
            });
        }
        for (repository_idx, repository) in bus.repositories.iter().enumerate() {
            if repository.trim().is_empty() || repository.contains('\0') {
                return Err(value_error(
                    &format!("bus_config.repositories[{repository_idx}]"),
                    repository,
                    "a non-empty path or address without NUL",
                ));
            }
        }
        check_range(
            "bus_config.sync_interval_seconds",
            bus.sync_interval_seconds,
            1,
            SYNC_INTERVAL_SECONDS_MAX,
            "seconds",
        )?;

        check_range(
            "bus_config.pull_workers",
            u64::from(bus.pull_workers),
            1,
            64,
            "pieces",
        )?;
        for (key, value) in [
            (
                "bus_config.upload_bytes_per_second",
                bus.upload_bytes_per_second,
            ),
            (
                "bus_config.download_bytes_per_second",
                bus.download_bytes_per_second,
            ),
        ] {
            check_range(key, value, 0, RATE_BYTES_PER_SECOND_MAX, "bytes per second")?;
        }
        if let Some(token) = &bus.cluster_token {
            let token_ok = (API_TOKEN_LEN_MIN..=API_TOKEN_LEN_MAX).contains(&token.len())
                && token.chars().all(|c| c.is_ascii_graphic());
            if !token_ok {
                return Err(ConfigError::Value {
                    key: "bus_config.cluster_token".to_owned(),
                    value: format!("a token of {} bytes", token.len()),
                    allowed: format!(
                        "null, or {API_TOKEN_LEN_MIN} to {API_TOKEN_LEN_MAX} printable ASCII characters without spaces"
                    ),
                });
            }
        }
        if !bus.tracker.is_empty() && bus.cluster_token.is_none() {
            return Err(value_error(
                "bus_config.tracker",
                &bus.tracker,
                "empty (no cluster), or a tracker address together with bus_config.cluster_token",
            ));
        }
        for (key, value) in [
            ("bus_config.tracker", &bus.tracker),
            ("bus_config.agent_id", &bus.agent_id),
            ("bus_config.advertise", &bus.advertise),
        ] {
            if value.len() > 1024 || value.chars().any(|c| c.is_control() || c == ' ') {
                return Err(value_error(
                    key,
                    value,
                    "at most 1024 characters, no spaces or control characters",
                ));
            }
        }

        let listen = self.api.listen_addr()?;
        if let Some(token) = &self.api.token {
            let token_ok = (API_TOKEN_LEN_MIN..=API_TOKEN_LEN_MAX).contains(&token.len())
                && token.chars().all(|c| c.is_ascii_graphic());
            if !token_ok {
                return Err(ConfigError::Value {
                    key: "api.token".to_owned(),
                    value: format!("a token of {} bytes", token.len()),
                    allowed: format!(
                        "null, or {API_TOKEN_LEN_MIN} to {API_TOKEN_LEN_MAX} printable ASCII characters without spaces"
                    ),
                });
            }
        }
        if !listen.ip().is_loopback() && self.api.token.is_none() {
            return Err(value_error(
                "api.listen",
                &self.api.listen,
                "a loopback address (127.0.0.1 or [::1]) unless api.token is set",
            ));
        }

        check_range(
            "state.segment_size_mb",
            self.state.segment_size_mb,
            SEGMENT_SIZE_MB_MIN,
            SEGMENT_SIZE_MB_MAX,
            "MiB",
        )?;
        check_range(
            "state.checkpoint_interval_seconds",
            self.state.checkpoint_interval_seconds,
            0,
            SYNC_INTERVAL_SECONDS_MAX,
            "seconds (0 turns automatic checkpoints off)",
        )?;
        check_range(
            "state.checkpoints_retained",
            u64::from(self.state.checkpoints_retained),
            u64::from(CHECKPOINTS_RETAINED_MIN),
            u64::from(CHECKPOINTS_RETAINED_MAX),
            "checkpoints",
        )?;
        check_range(
            "state.pages_max_mb",
            self.state.pages_max_mb,
            1,
            TIER_SIZE_MB_MAX,
            "MiB",
        )?;
        check_range(
            "state.checkpoints_max_mb",
            self.state.checkpoints_max_mb,
            1,
            TIER_SIZE_MB_MAX,
            "MiB",
        )?;
        check_range(
            "gpu.reserve_mb",
            self.gpu.reserve_mb,
            0,
            TIER_SIZE_MB_MAX,
            "MiB",
        )?;
        check_range(
            "audit.file_max_bytes",
            self.audit.file_max_bytes,
            AUDIT_FILE_BYTES_MIN,
            u64::MAX,
            "bytes",
        )?;
        check_range(
            "audit.files_kept",
            u64::from(self.audit.files_kept),
            1,
            u64::from(AUDIT_FILES_KEPT_MAX),
            "files",
        )?;
        check_range(
            "audit.metrics_interval_seconds",
            self.audit.metrics_interval_seconds,
            0,
            SYNC_INTERVAL_SECONDS_MAX,
            "seconds (0 turns metric snapshots off)",
        )?;
        Ok(())
    }
}

pub(super) fn parse_listen(key: &str, listen: &str) -> Result<SocketAddr, ConfigError> {
    listen.parse::<SocketAddr>().map_err(|_| {
        value_error(
            key,
            listen,
            "an IP address and port, for example 127.0.0.1:7878 or [::1]:7878",
        )
    })
}

pub(super) fn check_range(
    key: &str,
    value: u64,
    min: u64,
    max: u64,
    unit: &str,
) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::Value {
            key: key.to_owned(),
            value: value.to_string(),
            allowed: format!("an integer from {min} to {max} ({unit})"),
        })
    }
}

pub(super) fn value_error(key: &str, value: &str, allowed: &str) -> ConfigError {
    ConfigError::Value {
        key: key.to_owned(),
        value: serde_json::Value::String(value.to_owned()).to_string(),
        allowed: allowed.to_owned(),
    }
}
