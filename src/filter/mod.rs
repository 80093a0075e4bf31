//! Filters: between the sensors and the responders, in this order — ignore list, protected
//! addresses, SCAN_TRIGGER state, already-blocked. Each one passes or drops a candidate alert.

pub mod blocked;
pub mod ignored;
pub mod lru;
pub mod protect;
pub mod trigger;

use std::sync::Arc;
use std::time::Instant;

use crate::config::Config;
use crate::config::ignore::IgnoreList;
use crate::event::Candidate;
use crate::local_addrs::LocalAddrs;

/// Why a filter stopped a probe; counted and logged at debug level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The source is in the ignore file or is one of this host's own addresses.
    Ignored,
    /// The source has not yet probed enough distinct ports.
    BelowTrigger,
    /// The source is a protected address (gateway, nameserver, established peer).
    Protected,
}

/// A filter's decision on one candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand the candidate to the next stage.
    Pass,
    /// Stop here.
    Drop(DropReason),
}

/// An address as one `u128` (IPv4 as its IPv4-mapped IPv6 form, so both forms are one
/// key): the tables a forged flood touches on every probe hash it with one write instead of
/// an enum tag, a length and the octets.
pub fn addr_key(ip: std::net::IpAddr) -> u128 {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        std::net::IpAddr::V6(v6) => u128::from(v6),
    }
}

/// One stage of the filter chain. Filters run on the thread of the sensor that saw the probe
/// (see [`crate::pipeline`]), in order, and may
/// annotate the candidate (trigger count, already blocked) as well as pass or drop it.
pub trait Filter: Send {
    /// Short name for logs and counters.
    fn name(&self) -> &'static str;

    /// Decides on one candidate at `now` (the pipeline's clock, or a capture's in a replay);
    /// may fill in its fields.
    fn inspect(&mut self, candidate: &mut Candidate, now: Instant) -> Verdict;

    /// Follows a new config generation (its config and ignore list), keeping whatever state
    /// should survive a reload.
    fn reconfigure(&mut self, config: &Config, ignore: &Arc<IgnoreList>);
}

/// Runs `candidate` through `chain` in order at `now`: `Ok` when every filter passed it,
/// else the filter that stopped it and why. The one place the chain is walked, by the
/// pipeline and by a replay alike.
pub fn judge(
    chain: &mut [Box<dyn Filter>],
    candidate: &mut Candidate,
    now: Instant,
) -> Result<(), (&'static str, DropReason)> {
    for f in chain.iter_mut() {
        if let Verdict::Drop(reason) = f.inspect(candidate, now) {
            return Err((f.name(), reason));
        }
    }
    Ok(())
}

/// The filter chain in 1.2's order: ignore list, SCAN_TRIGGER, already blocked; protected
/// addresses right after the ignore list, so that their probes count towards nothing.
pub fn standard_chain(
    config: &Config,
    ignore: &Arc<IgnoreList>,
    view: &crate::block::view::BlockView,
    protected: &protect::ProtectView,
) -> Vec<Box<dyn Filter>> {
    chain_with_local(config, ignore, view, protected, LocalAddrs::new())
}

/// [`standard_chain`] with the host's addresses given rather than read from this machine's
/// interfaces (a replay takes them from the capture).
pub fn chain_with_local(
    config: &Config,
    ignore: &Arc<IgnoreList>,
    view: &crate::block::view::BlockView,
    protected: &protect::ProtectView,
    local: LocalAddrs,
) -> Vec<Box<dyn Filter>> {
    vec![
        Box::new(ignored::IgnoreFilter::with_local_addrs(
            Arc::clone(ignore),
            local,
        )),
        Box::new(protect::ProtectFilter::new(protected.clone())),
        Box::new(trigger::TriggerFilter::new(config)),
        Box::new(blocked::BlockedFilter::new(view.clone())),
    ]
}
