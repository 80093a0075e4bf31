//! The ignore list (in progress).

/// Hosts never acted on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IgnoreList {
    entries: Vec<ipnet::IpNet>,
}
