//! Device settings: a TOML file in the data folder (`till.toml`), with
//! environment overrides (`TILL_SECTION_KEY`, e.g. `TILL_SYNC_INTERVAL_S`)
//! and `till config get|set`. Every default is here, in one place. Tenant
//! settings (currency, offline limits, policies) are synced records instead.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The config file inside a till's data folder.
pub const CONFIG_FILE: &str = "till.toml";

/// Device settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub sync: SyncConfig,
    pub network: NetworkConfig,
    pub backup: BackupConfig,
}

/// Scheduled backups (see `till backup`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupConfig {
    /// A folder for backups (another disk is best) or `s3://bucket/prefix`.
    pub destination: String,
    /// Endpoint of S3-compatible storage (empty: AWS, or `AWS_ENDPOINT_URL`).
    pub s3_endpoint: String,
    /// S3 region (empty: `AWS_REGION`, else us-east-1).
    pub s3_region: String,
    /// File holding the passphrase (or use `recipient`).
    pub passphrase_file: String,
    /// An age recipient key (`age1...`).
    pub recipient: String,
    /// Seconds between scheduled backups in `till node run` (0: none).
    pub interval_s: u64,
    /// Backups kept at the destination (0: all).
    pub keep: u64,
}

/// When and how the till syncs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncConfig {
    /// Sync in the background at all.
    pub auto: bool,
    /// Seconds between rounds when nothing else triggers one.
    pub interval_s: u64,
    /// Failed rounds in a row before the till shows `error` (retries go on).
    pub retry_limit: u32,
    /// First retry delay; doubles per failure, with full jitter.
    pub backoff_base_ms: u64,
    /// Longest retry delay.
    pub backoff_cap_ms: u64,
    /// How often the hub's health is probed, independent of the backoff.
    pub probe_interval_ms: u64,
    /// How long a probe may take before the hub counts as unreachable.
    pub probe_timeout_ms: u64,
    /// Wait after a local write before syncing, to batch bursts.
    pub debounce_ms: u64,
    /// Longest one request to the hub may take.
    pub request_timeout_ms: u64,
    /// Operations per snapshot page while bootstrapping (at most the hub's
    /// 5000; smaller pages cost more round trips and less memory).
    pub snapshot_page_len: usize,
}

/// What the network may be used for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// `auto` (cellular counts as metered), `yes` or `no`.
    pub metered: String,
    /// Lanes pushed on a metered link.
    pub metered_lanes: Vec<String>,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            auto: true,
            interval_s: 10,
            retry_limit: 8,
            backoff_base_ms: 500,
            backoff_cap_ms: 60_000,
            probe_interval_ms: 2_000,
            probe_timeout_ms: 2_000,
            debounce_ms: 200,
            request_timeout_ms: 30_000,
            snapshot_page_len: tillsync_core::wire::SNAPSHOT_PAGE_LEN_MAX,
        }
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig { metered: "auto".into(), metered_lanes: vec!["sales".into(), "stock".into()] }
    }
}

/// A config problem, said so that it can be fixed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("unknown setting '{0}': see `till config get --data DIR` for the settings")]
    UnknownKey(String),
    #[error("{key} = {value}: {why}")]
    Invalid { key: String, value: String, why: String },
}

fn path(dir: &Path) -> PathBuf {
    dir.join(CONFIG_FILE)
}

impl Config {
    /// Reads the file (defaults where absent), then environment overrides,
    /// then validates.
    pub fn load(dir: &Path) -> Result<Config, ConfigError> {
        let p = path(dir);
        let mut c: Config = match std::fs::read_to_string(&p) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| ConfigError::File { path: p.display().to_string(), message: e.to_string() })?,
            Err(_) => Config::default(),
        };
        for key in Config::keys() {
            let env = format!("TILL_{}", key.replace('.', "_").to_ascii_uppercase());
            if let Ok(v) = std::env::var(&env) {
                c.set(key, &v)?;
            }
        }
        c.validate()?;
        Ok(c)
    }

    /// Writes the file.
    pub fn save(&self, dir: &Path) -> Result<(), ConfigError> {
        self.validate()?;
        let p = path(dir);
        let text = toml::to_string(self)
            .map_err(|e| ConfigError::File { path: p.display().to_string(), message: e.to_string() })?;
        let header = "# Tillsync device settings; `till config set --data DIR KEY VALUE` edits this file.\n";
        std::fs::write(&p, format!("{header}{text}"))
            .map_err(|e| ConfigError::File { path: p.display().to_string(), message: e.to_string() })
    }

    /// Every settable key.
    pub fn keys() -> &'static [&'static str] {
        &[
            "sync.auto",
            "sync.interval_s",
            "sync.retry_limit",
            "sync.backoff_base_ms",
            "sync.backoff_cap_ms",
            "sync.probe_interval_ms",
            "sync.probe_timeout_ms",
            "sync.debounce_ms",
            "sync.request_timeout_ms",
            "sync.snapshot_page_len",
            "network.metered",
            "network.metered_lanes",
            "backup.destination",
            "backup.passphrase_file",
            "backup.recipient",
            "backup.interval_s",
            "backup.keep",
            "backup.s3_endpoint",
            "backup.s3_region",
        ]
    }

    /// One setting as text.
    pub fn get(&self, key: &str) -> Result<String, ConfigError> {
        let s = &self.sync;
        Ok(match key {
            "sync.auto" => s.auto.to_string(),
            "sync.interval_s" => s.interval_s.to_string(),
            "sync.retry_limit" => s.retry_limit.to_string(),
            "sync.backoff_base_ms" => s.backoff_base_ms.to_string(),
            "sync.backoff_cap_ms" => s.backoff_cap_ms.to_string(),
            "sync.probe_interval_ms" => s.probe_interval_ms.to_string(),
            "sync.probe_timeout_ms" => s.probe_timeout_ms.to_string(),
            "sync.debounce_ms" => s.debounce_ms.to_string(),
            "sync.request_timeout_ms" => s.request_timeout_ms.to_string(),
            "sync.snapshot_page_len" => s.snapshot_page_len.to_string(),
            "network.metered" => self.network.metered.clone(),
            "network.metered_lanes" => self.network.metered_lanes.join(","),
            "backup.destination" => self.backup.destination.clone(),
            "backup.passphrase_file" => self.backup.passphrase_file.clone(),
            "backup.recipient" => self.backup.recipient.clone(),
            "backup.interval_s" => self.backup.interval_s.to_string(),
            "backup.keep" => self.backup.keep.to_string(),
            "backup.s3_endpoint" => self.backup.s3_endpoint.clone(),
            "backup.s3_region" => self.backup.s3_region.clone(),
            other => return Err(ConfigError::UnknownKey(other.into())),
        })
    }

    /// Sets one setting from text.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let bad = |why: &str| ConfigError::Invalid { key: key.into(), value: value.into(), why: why.into() };
        let num = || value.trim().parse::<u64>().map_err(|_| bad("expected a whole number"));
        let s = &mut self.sync;
        match key {
            "sync.auto" => s.auto = value.trim().parse().map_err(|_| bad("expected true or false"))?,
            "sync.interval_s" => s.interval_s = num()?,
            "sync.retry_limit" => s.retry_limit = num()?.min(u32::MAX as u64) as u32,
            "sync.backoff_base_ms" => s.backoff_base_ms = num()?,
            "sync.backoff_cap_ms" => s.backoff_cap_ms = num()?,
            "sync.probe_interval_ms" => s.probe_interval_ms = num()?,
            "sync.probe_timeout_ms" => s.probe_timeout_ms = num()?,
            "sync.debounce_ms" => s.debounce_ms = num()?,
            "sync.request_timeout_ms" => s.request_timeout_ms = num()?,
            "sync.snapshot_page_len" => s.snapshot_page_len = num()?.min(usize::MAX as u64) as usize,
            "network.metered" => self.network.metered = value.trim().to_string(),
            "network.metered_lanes" => {
                self.network.metered_lanes =
                    value.split(',').map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()
            }
            "backup.destination" => self.backup.destination = value.trim().to_string(),
            "backup.passphrase_file" => self.backup.passphrase_file = value.trim().to_string(),
            "backup.recipient" => self.backup.recipient = value.trim().to_string(),
            "backup.interval_s" => self.backup.interval_s = num()?,
            "backup.keep" => self.backup.keep = num()?,
            "backup.s3_endpoint" => self.backup.s3_endpoint = value.trim().to_string(),
            "backup.s3_region" => self.backup.s3_region = value.trim().to_string(),
            other => return Err(ConfigError::UnknownKey(other.into())),
        }
        self.validate()
    }

    /// Checks ranges and names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad =
            |key: &str, value: String, why: &str| Err(ConfigError::Invalid { key: key.into(), value, why: why.into() });
        let s = &self.sync;
        if !(1..=86_400).contains(&s.interval_s) {
            return bad("sync.interval_s", s.interval_s.to_string(), "between 1 and 86400 seconds");
        }
        if !(1..=1_000).contains(&s.retry_limit) {
            return bad("sync.retry_limit", s.retry_limit.to_string(), "between 1 and 1000");
        }
        if !(10..=600_000).contains(&s.backoff_base_ms)
            || s.backoff_cap_ms < s.backoff_base_ms
            || s.backoff_cap_ms > 3_600_000
        {
            return bad(
                "sync.backoff_cap_ms",
                s.backoff_cap_ms.to_string(),
                "base 10 ms..10 min, cap at least the base and at most 1 h",
            );
        }
        if !(100..=600_000).contains(&s.probe_interval_ms) || !(100..=60_000).contains(&s.probe_timeout_ms) {
            return bad(
                "sync.probe_interval_ms",
                s.probe_interval_ms.to_string(),
                "probe interval 100 ms..10 min, timeout 100 ms..60 s",
            );
        }
        if !(500..=600_000).contains(&s.request_timeout_ms) {
            return bad("sync.request_timeout_ms", s.request_timeout_ms.to_string(), "between 500 ms and 10 min");
        }
        if !(1..=tillsync_core::wire::SNAPSHOT_PAGE_LEN_MAX).contains(&s.snapshot_page_len) {
            return bad(
                "sync.snapshot_page_len",
                s.snapshot_page_len.to_string(),
                &format!("between 1 and {}", tillsync_core::wire::SNAPSHOT_PAGE_LEN_MAX),
            );
        }
        if s.debounce_ms > 60_000 {
            return bad("sync.debounce_ms", s.debounce_ms.to_string(), "at most 60000");
        }
        if !["auto", "yes", "no"].contains(&self.network.metered.as_str()) {
            return bad("network.metered", self.network.metered.clone(), "auto, yes or no");
        }
        if self.backup.interval_s != 0 && self.backup.interval_s < 5 {
            return bad("backup.interval_s", self.backup.interval_s.to_string(), "0 (off) or at least 5 seconds");
        }
        if self.backup.interval_s != 0 && self.backup.destination.is_empty() {
            return bad("backup.interval_s", self.backup.interval_s.to_string(), "set backup.destination first");
        }
        let e = &self.backup.s3_endpoint;
        if !e.is_empty() && !e.starts_with("https://") && !e.starts_with("http://") {
            return bad("backup.s3_endpoint", e.clone(), "a URL: https://HOST[:PORT]");
        }
        for l in &self.network.metered_lanes {
            if tillsync_core::Lane::parse(l).is_none() {
                return bad("network.metered_lanes", l.clone(), "lanes are sales, stock, catalog, telemetry");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_validates() {
        let dir = std::env::temp_dir().join(format!("till-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = Config::load(&dir).unwrap();
        assert_eq!(c, Config::default());
        c.set("sync.interval_s", "30").unwrap();
        c.set("network.metered_lanes", "sales").unwrap();
        c.save(&dir).unwrap();
        let c2 = Config::load(&dir).unwrap();
        assert_eq!(c2.sync.interval_s, 30);
        assert_eq!(c2.get("network.metered_lanes").unwrap(), "sales");
        assert!(c2.clone().set("sync.interval_s", "0").is_err());
        assert!(c2.clone().set("network.metered", "maybe").is_err());
        assert!(c2.clone().set("network.metered_lanes", "sales,bogus").is_err());
        assert!(matches!(c2.clone().set("nope", "1"), Err(ConfigError::UnknownKey(_))));
        std::fs::write(dir.join(CONFIG_FILE), "[sync]\ninterval_s = \"x\"\n").unwrap();
        let e = Config::load(&dir).unwrap_err();
        assert!(e.to_string().contains("till.toml"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
