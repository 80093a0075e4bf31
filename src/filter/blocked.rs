//! Third filter: marks probes from hosts the block manager has blocked as "already blocked",
//! from the view the manager publishes. It never drops: the daemon still logs the detection
//! line, then 1.2's "already blocked" line, and never acts twice. It reserves nothing: a
//! host whose block is not confirmed goes on to the manager, which alone decides (a block
//! under way is "block in progress", a failed one is tried again).

use std::sync::Arc;

use super::{Filter, Verdict};
use crate::block::view::BlockView;
use crate::config::Config;
use crate::config::ignore::IgnoreList;
use crate::event::Candidate;

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct BlockedFilter {
    view: BlockView,
}

impl BlockedFilter {
    /// A filter reading the manager's view.
    pub fn new(view: BlockView) -> BlockedFilter {
        BlockedFilter { view }
    }
}

impl Filter for BlockedFilter {
    fn name(&self) -> &'static str {
        "blocked"
    }

    fn inspect(&mut self, candidate: &mut Candidate, _now: std::time::Instant) -> Verdict {
        candidate.already_blocked = self.view.is_blocked(candidate.hit.src);
        Verdict::Pass
    }

    fn reconfigure(&mut self, _config: &Config, _ignore: &Arc<IgnoreList>) {}
}
