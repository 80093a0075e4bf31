//! A config generation: everything built from files (config, ignore list, plugins) that a
//! reload replaces as a whole. Built off the detection path, then swapped in.

use std::sync::Arc;

use crate::config::Config;
use crate::filter::ignore::IgnoreList;

/// One consistent set of file-derived settings; the number goes up with every reload.
#[derive(Debug, Clone)]
pub struct Generation {
    /// 1 for the config read at start, +1 for every successful reload.
    pub number: u64,
    /// The typed portsentry.conf.
    pub config: Arc<Config>,
    /// The parsed ignore file(s).
    pub ignore: Arc<IgnoreList>,
}
