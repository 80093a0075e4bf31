//! Stage one: `portsentry.conf` text -> raw `KEY -> (value, line)` entries, 1.2 syntax.
//! (Implementation in progress.)

use std::path::{Path, PathBuf};

use super::{ConfigErrors, ConfigWarning};

/// One `KEY="value"` line, kept close to the text for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    /// Key as written (1.2 keys are upper case).
    pub key: String,
    /// Everything between the two double quotes.
    pub value: String,
    /// 1-based line number.
    pub line: usize,
}

/// The file's entries in order, first occurrence of a key only (1.2: first wins).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawConfig {
    /// The file the text came from.
    pub path: PathBuf,
    /// Entries, first occurrence of each key.
    pub entries: Vec<RawEntry>,
    /// Non-fatal findings (duplicate keys, …).
    pub warnings: Vec<ConfigWarning>,
}

/// Parses 1.2 syntax.
pub fn parse(path: &Path, text: &str) -> Result<RawConfig, ConfigErrors> {
    let _ = text;
    Ok(RawConfig {
        path: path.to_path_buf(),
        ..RawConfig::default()
    })
}
