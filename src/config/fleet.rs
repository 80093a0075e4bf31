//! The `CROWDSEC_*` keys as plain data: the config build checks them, the fleet module
//! (`crate::fleet`) builds its threads from them. Here so that config/ imports nothing that
//! runs.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// `CROWDSEC_MAX_DECISIONS` default: room for the community blocklist (some 25,000-30,000
/// decisions) and many subscribed lists.
pub const DEFAULT_MAX_DECISIONS: usize = 200_000;
/// The names `CROWDSEC_PULL_RESPONDERS` takes.
pub const PULL_RESPONDER_NAMES: [&str; 3] = ["hosts_deny", "run_cmd", "route"];
/// `CROWDSEC_POLL_INTERVAL` default.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(10);
/// The outbox file's name beside `BLOCK_STATE_FILE` when `CROWDSEC_OUTBOX_FILE` is unset.
const OUTBOX_NAME: &str = "crowdsec.outbox";

/// The `CROWDSEC_*` keys, as plain data (the config build checks which combinations make
/// sense; this module builds threads from it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSettings {
    /// `CROWDSEC_LAPI_URL`: `http(s)://host:port` of the Local API; `None`: no fleet.
    pub lapi_url: Option<String>,
    /// `CROWDSEC_MACHINE_ID`: the machine login that pushes.
    pub machine_id: Option<String>,
    /// `CROWDSEC_PASSWORD_FILE`: the file holding that machine's password.
    pub password_file: Option<PathBuf>,
    /// `CROWDSEC_BOUNCER_KEY_FILE`: the file holding the bouncer API key that pulls.
    pub bouncer_key_file: Option<PathBuf>,
    /// `CROWDSEC_POLL_INTERVAL`: time between two pulls of the decision stream.
    pub poll_interval: Duration,
    /// `CROWDSEC_OUTBOX_FILE`: where undelivered pushes wait; `None`: beside
    /// `BLOCK_STATE_FILE`.
    pub outbox_file: Option<PathBuf>,
    /// `CROWDSEC_MAX_DECISIONS`: pulled decisions held at most.
    pub max_decisions: usize,
    /// `CROWDSEC_ORIGINS`: the origins pulled (exact names); empty: all.
    pub origins: Vec<String>,
    /// `CROWDSEC_SCENARIOS_CONTAINING`: only decisions whose scenario contains one of these
    /// (case-insensitive); empty: all.
    pub scenarios_containing: Vec<String>,
    /// `CROWDSEC_SCENARIOS_NOT_CONTAINING`: no decision whose scenario contains one of
    /// these.
    pub scenarios_not_containing: Vec<String>,
    /// `CROWDSEC_CA_CERT`: PEM certificates trusted for an `https://` LAPI besides the
    /// system's roots (a private CA).
    pub ca_cert: Option<PathBuf>,
    /// `CROWDSEC_CERT`: PEM client certificate (chain) for a LAPI that asks for one.
    pub cert: Option<PathBuf>,
    /// `CROWDSEC_KEY`: the client certificate's PEM private key.
    pub key: Option<PathBuf>,
    /// `CROWDSEC_PULL_RESPONDERS`: responders also run for pulled decisions (`hosts_deny`,
    /// `run_cmd`, `route`); empty: none.
    pub pull_responders: Vec<String>,
}

impl Default for FleetSettings {
    fn default() -> Self {
        FleetSettings {
            lapi_url: None,
            machine_id: None,
            password_file: None,
            bouncer_key_file: None,
            poll_interval: DEFAULT_POLL_INTERVAL,
            outbox_file: None,
            max_decisions: DEFAULT_MAX_DECISIONS,
            origins: Vec::new(),
            scenarios_containing: Vec::new(),
            scenarios_not_containing: Vec::new(),
            ca_cert: None,
            cert: None,
            key: None,
            pull_responders: Vec::new(),
        }
    }
}

impl FleetSettings {
    /// The outbox file in use: `CROWDSEC_OUTBOX_FILE`, or `crowdsec.outbox` beside the
    /// block journal.
    pub fn outbox_path(&self, block_state_file: &Path) -> PathBuf {
        self.outbox_file
            .clone()
            .unwrap_or_else(|| block_state_file.with_file_name(OUTBOX_NAME))
    }
}

/// Checks `CROWDSEC_LAPI_URL`'s value: `http://` or `https://`, a host, nothing after the
/// port but an optional `/`.
pub fn check_lapi_url(value: &str) -> Result<String, String> {
    let text = value.trim().trim_end_matches('/');
    let rest = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"))
        .ok_or(
            "expected a URL starting with http:// or https://, e.g. \"http://127.0.0.1:8080\"",
        )?;
    if rest.is_empty() || rest.contains('/') || rest.contains('@') || rest.contains('?') {
        return Err(
            "expected the LAPI's base URL, scheme, host and port only, e.g. \
             \"http://127.0.0.1:8080\""
                .into(),
        );
    }
    Ok(text.to_string())
}

/// A comma-separated list of words (origins, scenario parts): trimmed, empty ones dropped;
/// a word with a space, a control character or a comma inside is refused (it could not go
/// into the stream's query as the LAPI reads it).
pub fn word_list(value: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for word in value.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        if word.chars().any(|c| c.is_whitespace() || c.is_control()) || word.len() > 200 {
            return Err(format!(
                "\"{}\" is not a word: expected a comma-separated list, e.g. \"CAPI,crowdsec\"",
                crate::record::excerpt(word)
            ));
        }
        if !out.iter().any(|w| w == word) {
            out.push(word.to_string());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_lists_are_trimmed_deduplicated_and_refuse_spaces() {
        assert_eq!(
            word_list(" CAPI, crowdsec,,CAPI ").unwrap(),
            ["CAPI", "crowdsec"]
        );
        assert!(word_list("").unwrap().is_empty());
        assert!(
            word_list("a b")
                .unwrap_err()
                .contains("\"a b\" is not a word")
        );
    }
}
