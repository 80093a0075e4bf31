//! Which blocks `list ADDR|NET… --origin O` and `unblock --all --origin O` are about. Pure
//! functions over the block manager's list: the control server applies them to the list it
//! gets back, so the manager needs no filter of its own.

use crate::record::{BlockRecord, Origin, Target, parse_target};

/// The origins `--origin` takes, for messages.
const ORIGINS: &str = "scan, manual, import, fleet or fleet:SOURCE";

/// Checks `--origin`: `scan`, `manual`, `import`, `fleet` (every fleet block) or
/// `fleet:SOURCE` (as `list` shows the origin, e.g. `fleet:cscli`). Returned as given.
pub fn origin_filter(text: &str) -> Result<String, String> {
    let known = ["scan", "manual", "import", "fleet"].contains(&text)
        || text
            .strip_prefix("fleet:")
            .is_some_and(|source| !source.is_empty() && !source.contains(char::is_whitespace));
    if known {
        Ok(text.to_string())
    } else {
        Err(format!(
            "\"{}\" is not an origin (expected {ORIGINS})",
            crate::record::excerpt(text)
        ))
    }
}

/// A filter of blocks: by address or network, by origin, or both (every block when empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    targets: Vec<Target>,
    origin: Option<String>,
}

impl Selection {
    /// The filter a request names; `Err` says which address or origin is wrong.
    pub fn new(targets: &[String], origin: Option<&str>) -> Result<Selection, String> {
        Ok(Selection {
            targets: targets
                .iter()
                .map(|t| parse_target(t))
                .collect::<Result<_, _>>()?,
            origin: origin.map(origin_filter).transpose()?,
        })
    }

    /// Whether the filter selects every block.
    pub fn is_everything(&self) -> bool {
        self.targets.is_empty() && self.origin.is_none()
    }

    /// Whether `block` is selected: its target covers one of the addresses or networks, or
    /// lies inside one (networks that overlap), and its origin is the one asked for.
    pub fn matches(&self, block: &BlockRecord) -> bool {
        let by_target = self.targets.is_empty()
            || self
                .targets
                .iter()
                .any(|t| block.target.contains(t) || t.contains(&block.target));
        let by_origin = match self.origin.as_deref() {
            None => true,
            Some("fleet") => block.origin == Origin::Fleet,
            Some(origin) => block.origin_text() == origin,
        };
        by_target && by_origin
    }

    /// The blocks of `blocks` this filter selects, in their order.
    pub fn apply(&self, blocks: Vec<BlockRecord>) -> Vec<BlockRecord> {
        if self.is_everything() {
            return blocks;
        }
        blocks.into_iter().filter(|b| self.matches(b)).collect()
    }
}

/// A permanent block of `target` with this origin and reason, for the tests of the filters
/// and of the server that applies them.
#[cfg(test)]
pub(crate) fn test_block(target: &str, origin: Origin, reason: &str) -> BlockRecord {
    BlockRecord {
        target: parse_target(target).expect("a test target"),
        since: std::time::SystemTime::UNIX_EPOCH,
        until: None,
        offences: 1,
        origin,
        trigger: None,
        reason: reason.into(),
        actions: Vec::new(),
        members: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(target: &str, origin: Origin, reason: &str) -> BlockRecord {
        test_block(target, origin, reason)
    }

    fn blocks() -> Vec<BlockRecord> {
        vec![
            block("10.0.0.0/24", Origin::Manual, ""),
            block("10.0.1.7", Origin::Scan, ""),
            block("192.0.2.9", Origin::Fleet, "cscli manual 'ban'"),
            block("fd77::5", Origin::Fleet, "crowdsec ssh-bf"),
            block("fd77::/64", Origin::Import, ""),
        ]
    }

    fn selected(targets: &[&str], origin: Option<&str>) -> Vec<String> {
        let targets: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
        Selection::new(&targets, origin)
            .unwrap()
            .apply(blocks())
            .iter()
            .map(|b| crate::record::target_text(&b.target))
            .collect()
    }

    #[test]
    fn an_address_finds_the_blocks_that_cover_it() {
        assert_eq!(selected(&["10.0.0.5"], None), ["10.0.0.0/24"]);
        assert_eq!(selected(&["10.0.1.7"], None), ["10.0.1.7"]);
        assert_eq!(selected(&["fd77::5"], None), ["fd77::5", "fd77::/64"]);
        assert!(selected(&["10.9.9.9"], None).is_empty());
        // An IPv4-mapped address is the IPv4 host it carries.
        assert_eq!(selected(&["::ffff:10.0.1.7"], None), ["10.0.1.7"]);
    }

    #[test]
    fn a_network_finds_the_blocks_inside_it_and_those_covering_it() {
        assert_eq!(
            selected(&["10.0.0.0/16"], None),
            ["10.0.0.0/24", "10.0.1.7"]
        );
        assert_eq!(selected(&["10.0.0.128/25"], None), ["10.0.0.0/24"]);
        assert_eq!(
            selected(&["10.0.1.7", "192.0.2.0/24"], None),
            ["10.0.1.7", "192.0.2.9"]
        );
    }

    #[test]
    fn an_origin_selects_its_blocks_and_fleet_takes_every_fleet_source() {
        assert_eq!(selected(&[], Some("scan")), ["10.0.1.7"]);
        assert_eq!(selected(&[], Some("fleet")), ["192.0.2.9", "fd77::5"]);
        assert_eq!(selected(&[], Some("fleet:crowdsec")), ["fd77::5"]);
        assert_eq!(selected(&["fd77::/48"], Some("import")), ["fd77::/64"]);
        assert_eq!(selected(&[], None).len(), 5, "no filter: every block");
    }

    #[test]
    fn a_wrong_origin_or_address_says_what_is_expected() {
        assert_eq!(
            origin_filter("scans").unwrap_err(),
            "\"scans\" is not an origin (expected scan, manual, import, fleet or fleet:SOURCE)"
        );
        assert!(origin_filter("fleet:").is_err());
        assert_eq!(origin_filter("fleet:cscli").unwrap(), "fleet:cscli");
        let err = Selection::new(&["10.0.0.300".into()], None).unwrap_err();
        assert!(err.contains("not an IP address or CIDR network"), "{err}");
    }
}
