//! `CONFIG/vbus_config.json`: the tiers, the BUS, the API, the state bus, the GPU and the audit logs.
//!
//! This file is the one place where defaults and allowed values live; `docs/CONFIG.md` describes
//! them and a test checks that its default block equals [`Config::default`]. Every key is
//! optional: a missing key takes its default. Unknown keys, wrong types, out-of-range values and
//! unsupported policies are refused with a [`ConfigError`] that names the key, the value and what
//! is allowed.

mod validate;

use validate::parse_listen;

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The largest tier size accepted, in MiB (16 TiB).
pub const TIER_SIZE_MB_MAX: u64 = 16 * 1024 * 1024;
/// The longest write-back interval accepted, in seconds (one day).
pub const SYNC_INTERVAL_SECONDS_MAX: u64 = 86_400;
/// Bounds of a transaction-log segment, in MiB.
pub const SEGMENT_SIZE_MB_MIN: u64 = 1;
/// Bounds of a transaction-log segment, in MiB.
pub const SEGMENT_SIZE_MB_MAX: u64 = 4096;
/// Bounds of how many checkpoints are kept.
pub const CHECKPOINTS_RETAINED_MIN: u32 = 2;
/// Bounds of how many checkpoints are kept.
pub const CHECKPOINTS_RETAINED_MAX: u32 = 64;
/// Shortest accepted API token, in bytes.
pub const API_TOKEN_LEN_MIN: usize = 16;
/// Longest accepted API token, in bytes.
pub const API_TOKEN_LEN_MAX: usize = 4096;
/// The largest upload or download limit accepted (1 TB/s; 0 means no limit).
pub const RATE_BYTES_PER_SECOND_MAX: u64 = 1_000_000_000_000;
/// Largest number of repositories in `bus_config.repositories`.
pub const REPOSITORIES_MAX: usize = 1024;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The tiers.
    pub cache_hierarchy: CacheHierarchy,
    /// The BUS.
    pub bus_config: BusConfig,
    /// The daemon's HTTP API.
    pub api: ApiConfig,
    /// The state bus (pages, deltas, transaction log).
    pub state: StateConfig,
    /// Which GPU backs L1.
    pub gpu: GpuConfig,
    /// The daemon's log and metric files under `AUDIT/`.
    pub audit: AuditConfig,
}

/// Smallest size a log or metrics file may reach before it is rotated, in bytes.
pub const AUDIT_FILE_BYTES_MIN: u64 = 4096;
/// Most rotated files kept beside the current one.
pub const AUDIT_FILES_KEPT_MAX: u32 = 100;

/// `audit`: the daemon's log (`AUDIT/LOGS/vbus_daemon.log`) and metric snapshots
/// (`AUDIT/METRICS/vbus_metrics.jsonl`), each rotated by size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Bytes a log or metrics file reaches before it is rotated (renamed `.1`, older ones
    /// shifted), at least [`AUDIT_FILE_BYTES_MIN`]. Default 64 MiB.
    pub file_max_bytes: u64,
    /// Rotated files kept beside the current one, from 1 to [`AUDIT_FILES_KEPT_MAX`]. Default 5.
    pub files_kept: u32,
    /// Seconds between metric snapshots (a JSON line of `/v1/stats`); 0 turns them off.
    /// Default 60.
    pub metrics_interval_seconds: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            file_max_bytes: 64 << 20,
            files_kept: 5,
            metrics_interval_seconds: 60,
        }
    }
}

/// `cache_hierarchy`: one entry per tier, under the names of the origin documents. A key missing inside a tier
/// takes that tier's default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "CacheHierarchyPatch")]
pub struct CacheHierarchy {
    /// L1, GPU VRAM (the simulated device without a GPU). Default: enabled, 1024 MiB, `lru`.
    #[serde(rename = "L1_VRAM")]
    pub l1_vram: TierConfig,
    /// L2, host RAM (page-locked when a GPU is present). Default: enabled, 4096 MiB, `lru`.
    #[serde(rename = "L2_RAM")]
    pub l2_ram: TierConfig,
    /// L3, complete files on disk. Default: enabled, 10240 MiB, `lru`.
    #[serde(rename = "L3_DISK")]
    pub l3_disk: TierConfig,
    /// When a put reaches L3. Default `write_through`.
    pub write_mode: WriteMode,
    /// Which reads of L3 check the bytes. Default `every_read`.
    pub verify_reads: VerifyReads,
}

impl Default for CacheHierarchy {
    fn default() -> Self {
        Self {
            l1_vram: TierConfig::with_size_mb(1024),
            l2_ram: TierConfig::with_size_mb(4096),
            l3_disk: TierConfig::with_size_mb(10_240),
            write_mode: WriteMode::WriteThrough,
            verify_reads: VerifyReads::EveryRead,
        }
    }
}

/// Which reads of L3 check the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum VerifyReads {
    /// Every read checks each 1 MiB piece against its XXH3-64 before it leaves L3, to a client,
    /// a peer or L2 (the default).
    #[default]
    EveryRead,
    /// Only the first read of each file after the daemon starts is checked (against its
    /// BLAKE3); a file damaged after that is served as it is. An explicit opt-out.
    FirstRead,
}

/// When a put reaches L3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    /// Durable in L3 before the put is acknowledged (the default).
    #[default]
    WriteThrough,
    /// Kept in RAM and written to L3 when L2 evicts it, on a flush, or at shutdown; lost if the
    /// process is killed first.
    WriteBack,
}

/// `cache_hierarchy` as written: every key optional.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct CacheHierarchyPatch {
    #[serde(rename = "L1_VRAM")]
    l1_vram: TierPatch,
    #[serde(rename = "L2_RAM")]
    l2_ram: TierPatch,
    #[serde(rename = "L3_DISK")]
    l3_disk: TierPatch,
    write_mode: Option<WriteMode>,
    verify_reads: Option<VerifyReads>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct TierPatch {
    enabled: Option<bool>,
    max_size_mb: Option<u64>,
    eviction_policy: Option<EvictionPolicy>,
}

impl TierPatch {
    fn over(self, default: TierConfig) -> TierConfig {
        TierConfig {
            enabled: self.enabled.unwrap_or(default.enabled),
            max_size_mb: self.max_size_mb.unwrap_or(default.max_size_mb),
            eviction_policy: self.eviction_policy.unwrap_or(default.eviction_policy),
        }
    }
}

impl From<CacheHierarchyPatch> for CacheHierarchy {
    fn from(patch: CacheHierarchyPatch) -> Self {
        let default = Self::default();
        Self {
            l1_vram: patch.l1_vram.over(default.l1_vram),
            l2_ram: patch.l2_ram.over(default.l2_ram),
            l3_disk: patch.l3_disk.over(default.l3_disk),
            write_mode: patch.write_mode.unwrap_or(default.write_mode),
            verify_reads: patch.verify_reads.unwrap_or(default.verify_reads),
        }
    }
}

/// One tier of the hierarchy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierConfig {
    /// Whether the tier holds values. Default `true`.
    pub enabled: bool,
    /// Capacity in MiB, from 1 to [`TIER_SIZE_MB_MAX`].
    pub max_size_mb: u64,
    /// Which value to evict first when the tier is full. Default `lru`.
    pub eviction_policy: EvictionPolicy,
}

impl TierConfig {
    fn with_size_mb(max_size_mb: u64) -> Self {
        Self {
            enabled: true,
            max_size_mb,
            eviction_policy: EvictionPolicy::Lru,
        }
    }

    /// Capacity in bytes.
    pub fn capacity_bytes(&self) -> u64 {
        self.max_size_mb.saturating_mul(1024 * 1024)
    }
}

/// Eviction policies a tier accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EvictionPolicy {
    /// Least recently used (the default); a hit among the newest quarter is not reordered.
    #[default]
    Lru,
    /// S3-FIFO: a small probationary FIFO in front of a main FIFO with a ghost queue.
    S3fifo,
    /// SIEVE: one FIFO with a visited bit and a moving hand.
    Sieve,
}

impl EvictionPolicy {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lru => "lru",
            Self::S3fifo => "s3fifo",
            Self::Sieve => "sieve",
        }
    }
}

/// `bus_config`: the master store, repositories and coherence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    /// The master store (the origin). A path relative to the home, an absolute path, or an
    /// S3-compatible bucket as `s3://BUCKET[/PREFIX]`. Default `DATA/MASTER_DB`.
    pub master_db: String,
    /// The S3 endpoint of an `s3://` master (`http://HOST:PORT` for a local server); empty (the
    /// default) means `AWS_ENDPOINT_URL`, else AWS itself. Credentials always come from the
    /// environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`).
    pub s3_endpoint: String,
    /// The region of an `s3://` master; empty (the default) means `AWS_REGION`, else
    /// `us-east-1`.
    pub s3_region: String,
    /// Repositories kept coherent with the master. Default empty; at most
    /// [`REPOSITORIES_MAX`] entries, none empty.
    pub repositories: Vec<String>,
    /// Whether the access-pattern router may prefetch. Default `true`; it has
    /// no effect until the router exists.
    pub ai_routing_enabled: bool,
    /// The coherence protocol. Only `mesi` is supported.
    pub coherency_protocol: CoherencyProtocol,
    /// How often Modified replicas are written back to the master, in seconds, from 1 to
    /// [`SYNC_INTERVAL_SECONDS_MAX`]. Default 60.
    pub sync_interval_seconds: u64,
    /// The tracker this daemon joins as an agent (`host:port`); empty (the default) means no
    /// cluster: pulls go to the master alone.
    pub tracker: String,
    /// The secret every tracker and peer request carries (`Authorization: Bearer`); required
    /// with `tracker`, 16 to 256 printable ASCII characters. Default none.
    pub cluster_token: Option<String>,
    /// This agent's id in the cluster; empty (the default) means `advertise`.
    pub agent_id: String,
    /// Where peers reach this daemon (`host:port`); empty (the default) means `api.listen`.
    pub advertise: String,
    /// Pieces a pull fetches at once, 1 to 64. Default 4.
    pub pull_workers: u32,
    /// This agent's upload limit to peers, bytes per second; 0 (the default) means none.
    pub upload_bytes_per_second: u64,
    /// This agent's download limit (peers and master together), bytes per second; 0 (the
    /// default) means none.
    pub download_bytes_per_second: u64,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            master_db: "DATA/MASTER_DB".to_owned(),
            s3_endpoint: String::new(),
            s3_region: String::new(),
            repositories: Vec::new(),
            ai_routing_enabled: true,
            coherency_protocol: CoherencyProtocol::Mesi,
            sync_interval_seconds: 60,
            tracker: String::new(),
            cluster_token: None,
            agent_id: String::new(),
            advertise: String::new(),
            pull_workers: 4,
            upload_bytes_per_second: 0,
            download_bytes_per_second: 0,
        }
    }
}

/// Coherence protocols the BUS accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CoherencyProtocol {
    /// Modified, Exclusive, Shared, Invalid, with the tracker as the directory.
    #[default]
    Mesi,
}

/// `api`: the daemon's HTTP endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address and port to listen on. Default `127.0.0.1:7878`. Any address other than loopback
    /// requires `token`.
    pub listen: String,
    /// Bearer token clients must send, from [`API_TOKEN_LEN_MIN`] to [`API_TOKEN_LEN_MAX`] bytes.
    /// Default `null` (no token; loopback only).
    pub token: Option<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7878".to_owned(),
            token: None,
        }
    }
}

impl ApiConfig {
    /// The parsed listen address (validated by [`Config::validate`]).
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        parse_listen("api.listen", &self.listen)
    }
}

/// `state`: the state bus and its transaction log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Whether the state bus runs in the daemon. Default `true`.
    pub enabled: bool,
    /// What an acknowledged log append has survived. Default `fdatasync`.
    pub durability: Durability,
    /// Size of one transaction-log segment in MiB, from 1 to 4096. Default 64.
    pub segment_size_mb: u64,
    /// Seconds between automatic checkpoints; 0 turns them off. Default 300.
    pub checkpoint_interval_seconds: u64,
    /// Checkpoints kept (older log segments are released), from 2 to 64. Default 2.
    pub checkpoints_retained: u32,
    /// The most MiB all pages may take together, host and GPU; a create past it is refused with
    /// 507. Default 4096 (`vbus init` sizes it from the scan).
    pub pages_max_mb: u64,
    /// The most MiB the kept checkpoints may take on disk together, counting the one being
    /// written; a create whose checkpoints would not fit is refused with 507. Default 12288
    /// (`vbus init` sizes it from the scan).
    pub checkpoints_max_mb: u64,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            durability: Durability::Fdatasync,
            segment_size_mb: 64,
            checkpoint_interval_seconds: 300,
            checkpoints_retained: 2,
            pages_max_mb: 4096,
            checkpoints_max_mb: 12_288,
        }
    }
}

/// Durability of acknowledged transaction-log appends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Queued in memory and written within 5 ms; a process crash loses at most that window.
    Async,
    /// Written to the OS; survives a process crash, not a power cut.
    Buffered,
    /// `fdatasync` before the acknowledgement.
    #[default]
    Fdatasync,
    /// `fsync` before the acknowledgement.
    Fsync,
}

/// `gpu`: which device backs L1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GpuConfig {
    /// `auto` (CUDA when a driver and device exist, else simulated), `cuda` or `simulated`.
    /// Default `auto`.
    pub backend: GpuBackend,
    /// The CUDA device ordinal L1 lives on. Default 0.
    pub device_index: u32,
    /// VRAM left free for other programs, in MiB, up to [`TIER_SIZE_MB_MAX`]. Default 1024.
    pub reserve_mb: u64,
}

impl Default for GpuConfig {
    fn default() -> Self {
        Self {
            backend: GpuBackend::Auto,
            device_index: 0,
            reserve_mb: 1024,
        }
    }
}

/// How L1 picks its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GpuBackend {
    /// CUDA when a driver and the configured device exist, else the simulated device.
    #[default]
    Auto,
    /// CUDA; start-up fails without it.
    Cuda,
    /// Host memory behind the device API (tests, machines without a GPU).
    Simulated,
}

/// A refused configuration: which key, what was wrong, what is allowed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file is not valid JSON.
    #[error("{source_name}: not valid JSON at line {line}, column {column}: {message}")]
    Syntax {
        /// File name, or `<input>`.
        source_name: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What the parser expected.
        message: String,
    },
    /// A key is unknown or holds a value of the wrong type or an unsupported name.
    #[error("{source_name}: config key `{key}`: {message}")]
    Key {
        /// File name, or `<input>`.
        source_name: String,
        /// Dotted path of the key, for example `cache_hierarchy.L1_VRAM.eviction_policy`.
        key: String,
        /// What was wrong and what is allowed.
        message: String,
    },
    /// A value of the right type outside its allowed range.
    #[error("config key `{key}`: value {value} is not allowed; allowed: {allowed}")]
    Value {
        /// Dotted path of the key.
        key: String,
        /// The value found, as JSON.
        value: String,
        /// The allowed values.
        allowed: String,
    },
}

impl ConfigError {
    /// The dotted key the error is about, when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Syntax { .. } => None,
            Self::Key { key, .. } | Self::Value { key, .. } => Some(key),
        }
    }
}

impl Config {
    /// Parses and validates a configuration text. `source_name` names it in errors.
    pub fn from_json_str(text: &str, source_name: &str) -> Result<Self, ConfigError> {
        // serde would read a struct from an array too (`[]`, `[{}]`): a config is an object.
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(text)
            && !value.is_object()
        {
            return Err(ConfigError::Key {
                source_name: source_name.to_owned(),
                key: "(top level)".to_owned(),
                message: format!(
                    "a config is a JSON object ({{\"cache_hierarchy\": ..., ...}}), not {}",
                    match value {
                        serde_json::Value::Array(_) => "an array",
                        serde_json::Value::String(_) => "a string",
                        serde_json::Value::Number(_) => "a number",
                        serde_json::Value::Bool(_) => "a boolean",
                        _ => "null",
                    }
                ),
            });
        }
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let config: Config =
            serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
                let key = err.path().to_string();
                let inner = err.into_inner();
                if inner.is_syntax() || inner.is_eof() {
                    ConfigError::Syntax {
                        source_name: source_name.to_owned(),
                        line: inner.line(),
                        column: inner.column(),
                        message: strip_position(&inner.to_string()),
                    }
                } else {
                    ConfigError::Key {
                        source_name: source_name.to_owned(),
                        key: if key == "." {
                            "(top level)".to_owned()
                        } else {
                            key
                        },
                        message: strip_position(&inner.to_string()),
                    }
                }
            })?;
        deserializer.end().map_err(|err| ConfigError::Syntax {
            source_name: source_name.to_owned(),
            line: err.line(),
            column: err.column(),
            message: strip_position(&err.to_string()),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Ok(Self::from_json_str(&text, &path.display().to_string())?)
    }

    /// The configuration as pretty JSON, as `init` writes it.
    pub fn to_json_pretty(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("config serialises to JSON");
        text.push('\n');
        text
    }

    /// Where the master store is: an `s3://` URL as written, else a directory, relative
    /// entries taken from `home`.
    pub fn master_db_location(&self, home: &Path) -> String {
        let master = &self.bus_config.master_db;
        let path = Path::new(master);
        if master.starts_with("s3://") || path.is_absolute() {
            master.clone()
        } else {
            home.join(path).display().to_string()
        }
    }
}

/// serde_json appends " at line L column C" to its messages; the key already locates the error.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(idx) => message[..idx].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip() {
        let config = Config::default();
        config.validate().unwrap();
        let text = config.to_json_pretty();
        assert_eq!(Config::from_json_str(&text, "<defaults>").unwrap(), config);
    }

    #[test]
    fn empty_object_takes_every_default() {
        assert_eq!(
            Config::from_json_str("{}", "<input>").unwrap(),
            Config::default()
        );
    }

    #[test]
    fn a_partial_tier_takes_that_tiers_defaults() {
        let text = r#"{"cache_hierarchy": {"L1_VRAM": {"enabled": false}, "L2_RAM": {"eviction_policy": "sieve"}}}"#;
        let tiers = Config::from_json_str(text, "<input>")
            .unwrap()
            .cache_hierarchy;
        let defaults = CacheHierarchy::default();
        assert!(!tiers.l1_vram.enabled);
        assert_eq!(tiers.l1_vram.max_size_mb, defaults.l1_vram.max_size_mb);
        assert_eq!(tiers.l2_ram.eviction_policy, EvictionPolicy::Sieve);
        assert_eq!(tiers.l2_ram.max_size_mb, defaults.l2_ram.max_size_mb);
        assert_eq!(tiers.l3_disk, defaults.l3_disk);
        assert_eq!(tiers.write_mode, WriteMode::WriteThrough);
        let text = r#"{"cache_hierarchy": {"write_mode": "write_back"}}"#;
        let tiers = Config::from_json_str(text, "<input>")
            .unwrap()
            .cache_hierarchy;
        assert_eq!(tiers.write_mode, WriteMode::WriteBack);
        assert_eq!(tiers.l2_ram, defaults.l2_ram);
    }

    #[test]
    fn seed_example_is_accepted() {
        let text = r#"{
          "cache_hierarchy": {
            "L1_VRAM": {"enabled": true, "max_size_mb": 4096, "eviction_policy": "lru"},
            "L2_RAM": {"enabled": true, "max_size_mb": 8192, "eviction_policy": "lru"},
            "L3_DISK": {"enabled": true, "max_size_mb": 10240, "eviction_policy": "lru"}
          },
          "bus_config": {
            "master_db": "/path/to/master/database",
            "repositories": ["/path/to/repo1", "/path/to/repo2"],
            "ai_routing_enabled": true,
            "coherency_protocol": "mesi",
            "sync_interval_seconds": 60
          }
        }"#;
        let config = Config::from_json_str(text, "<seed>").unwrap();
        assert_eq!(config.cache_hierarchy.l1_vram.max_size_mb, 4096);
        assert_eq!(config.cache_hierarchy.l2_ram.capacity_bytes(), 8192 << 20);
        assert_eq!(config.bus_config.repositories.len(), 2);
        assert_eq!(
            config.master_db_location(Path::new("/home")),
            "/path/to/master/database"
        );
        let mut s3 = config.clone();
        s3.bus_config.master_db = "s3://bucket/prefix".to_owned();
        assert_eq!(
            s3.master_db_location(Path::new("/home")),
            "s3://bucket/prefix"
        );
        let mut relative = config;
        relative.bus_config.master_db = "DATA/MASTER_DB".to_owned();
        assert_eq!(
            relative.master_db_location(Path::new("/home")),
            "/home/DATA/MASTER_DB"
        );
    }

    fn check(text: &str, key: &str, fragment: &str) {
        let err = Config::from_json_str(text, "<input>").expect_err(text);
        assert_eq!(err.key(), Some(key), "{err}");
        let message = err.to_string();
        assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
    }

    /// Issue 20, finding 7: `[]` and `[{}]` were accepted as configs.
    #[test]
    fn a_config_that_is_not_an_object_is_refused() {
        for text in ["[]", "[{}]", "\"cache\"", "7", "null"] {
            check(text, "(top level)", "a config is a JSON object");
        }
        check(
            r#"{"cache_hierarchy": {"verify_reads": "never"}}"#,
            "cache_hierarchy.verify_reads",
            "`never`, expected `every_read` or `first_read`",
        );
    }

    #[test]
    fn bad_values_name_key_value_and_allowed() {
        check(
            r#"{"cache_hierarchy": {"L1_VRAM": {"max_size_mb": 10, "eviction_policy": "fifo"}}}"#,
            "cache_hierarchy.L1_VRAM.eviction_policy",
            "`fifo`, expected one of `lru`, `s3fifo`, `sieve`",
        );
        check(
            r#"{"cache_hierarchy": {"write_mode": "write_around"}}"#,
            "cache_hierarchy.write_mode",
            "`write_around`, expected `write_through` or `write_back`",
        );
        check(
            r#"{"cache_hierarchy": {"L2_RAM": {"max_size_mb": 0}}}"#,
            "cache_hierarchy.L2_RAM.max_size_mb",
            "value 0 is not allowed; allowed: an integer from 1 to 16777216 (MiB)",
        );
        check(
            r#"{"cache_hierarchy": {"L3_DISK": {"max_size_mb": "big"}}}"#,
            "cache_hierarchy.L3_DISK.max_size_mb",
            "\"big\"",
        );
        check(
            r#"{"cache_hierarchy": {"L4_TAPE": {}}}"#,
            "cache_hierarchy.L4_TAPE",
            "unknown field `L4_TAPE`",
        );
        check(
            r#"{"api": {"listen": "0.0.0.0:7878"}}"#,
            "api.listen",
            "unless api.token is set",
        );
        check(
            r#"{"api": {"listen": "localhost"}}"#,
            "api.listen",
            "\"localhost\"",
        );
        check(
            r#"{"bus_config": {"coherency_protocol": "moesi"}}"#,
            "bus_config.coherency_protocol",
            "`moesi`",
        );
        check(
            r#"{"bus_config": {"master_db": "s3:///prefix"}}"#,
            "bus_config.master_db",
            "the bucket is missing",
        );
        check(
            r#"{"bus_config": {"s3_endpoint": "127.0.0.1:9000"}}"#,
            "bus_config.s3_endpoint",
            "an http:// or https:// URL",
        );
    }

    #[test]
    fn non_loopback_listen_with_token_is_accepted() {
        let text = r#"{"api": {"listen": "0.0.0.0:7878", "token": "0123456789abcdef0123"}}"#;
        let config = Config::from_json_str(text, "<input>").unwrap();
        assert!(!config.api.listen_addr().unwrap().ip().is_loopback());
    }

    #[test]
    fn syntax_errors_give_the_position() {
        let err = Config::from_json_str("{\n  \"api\": {,}\n}", "f.json").unwrap_err();
        assert!(
            matches!(err, ConfigError::Syntax { line: 2, .. }),
            "{err:?}"
        );
        assert!(Config::from_json_str("{} {}", "f.json").is_err());
    }
}
