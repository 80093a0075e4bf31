//! Native kernel blocking: an nftables table of our own, spoken to over netlink.
//!
//! The layout, in `nft` words (the table name comes from [`NftSettings::table`]):
//!
//! ```text
//! table inet portsentry {
//!     set ipv4_addr { type ipv4_addr; size N; flags timeout; }
//!     set ipv6_addr { type ipv6_addr; size N; flags timeout; }
//!     set ipv4_net { type ipv4_addr; flags interval,timeout; }
//!     set ipv6_net { type ipv6_addr; flags interval,timeout; }
//!     set fleet_ipv4 { type ipv4_addr; flags timeout; }
//!     set fleet_ipv6 { type ipv6_addr; flags timeout; }
//!     set fleet_net4 { type ipv4_addr; flags interval,timeout; }
//!     set fleet_net6 { type ipv6_addr; flags interval,timeout; }
//!     chain input {
//!         type filter hook input priority filter - 10; policy accept;
//!         ip saddr @ipv4_addr drop
//!         ip6 saddr @ipv6_addr drop
//!         ip saddr @ipv4_net drop
//!         ip6 saddr @ipv6_net drop
//!         ip saddr @fleet_ipv4 drop
//!         ip6 saddr @fleet_ipv6 drop
//!         ip saddr @fleet_net4 drop
//!         ip6 saddr @fleet_net6 drop
//!     }
//!     chain forward { ... the same on hook forward, only with NftSettings::forward ... }
//! }
//! ```
//!
//! The `fleet_*` sets hold the decisions pulled from CrowdSec (hosts, and networks as
//! interval elements: [`interval`]), apart from the blocks made here, so that neither
//! side's undo can remove the other's element.
//!
//! A block is an element of a set, carrying the block's remaining time as its kernel timeout,
//! so that it expires in the kernel even while the daemon is down; many blocks go in one
//! netlink batch, which the kernel applies as one transaction. The table is the daemon's
//! alone: nothing here reads or changes any other table, and nothing deletes it at stop
//! (blocks hold while the daemon restarts).
//!
//! Why raw netlink and no crate: `rustables` (pure Rust) and `nftnl` (over libnftnl) both
//! lack element timeouts, set sizes and reading elements back, the three things this needs;
//! adding them means unsafe FFI into libnftnl or forking a crate. The dozen messages used
//! here are small enough to write by hand (`wire.rs`), over the `nix` socket calls already
//! in use: no new dependency, no C library, no build-time bindings.

mod interval;
mod responder;
mod wire;

pub use interval::{IntervalChanges, Room};
pub use responder::{NftHandle, NftResponder, config_warnings};

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use nix::errno::Errno;

use wire::{Attrs, Batch, Cmd, Rejected, Socket, Writer};

/// The table name when the config names none.
pub const DEFAULT_TABLE: &str = "portsentry";
/// The set of blocked IPv4 hosts (IPv4-mapped IPv6 sources land here too).
pub const SET_V4: &str = "ipv4_addr";
/// The set of blocked IPv6 hosts.
pub const SET_V6: &str = "ipv6_addr";
/// The interval set of IPv4 networks blocked here (blocks of a prefix).
pub const SET_NET_V4: &str = "ipv4_net";
/// The interval set of IPv6 networks blocked here.
pub const SET_NET_V6: &str = "ipv6_net";
/// The set of IPv4 hosts pulled from the fleet (CrowdSec decisions).
pub const FLEET_SET_V4: &str = "fleet_ipv4";
/// The set of IPv6 hosts pulled from the fleet.
pub const FLEET_SET_V6: &str = "fleet_ipv6";
/// The interval set of IPv4 networks pulled from the fleet.
pub const FLEET_NET_SET_V4: &str = "fleet_net4";
/// The interval set of IPv6 networks pulled from the fleet.
pub const FLEET_NET_SET_V6: &str = "fleet_net6";

/// Longest kernel timeout given to an element (100 years): the kernel rejects timeouts that
/// overflow its clock, and a longer block is permanent for every practical purpose.
const MAX_TIMEOUT_MS: u64 = 100 * 365 * 24 * 3600 * 1000;
/// Elements per netlink message: a message's element list is one attribute, whose length
/// field has 16 bits (1,000 IPv6 elements with timeouts take 40 KB).
const ELEMENTS_PER_MESSAGE: usize = 1000;
/// `priority filter - 10`: before the admin's own filter chains on the same hook.
const CHAIN_PRIORITY: i32 = -10;
/// Set flags that make a set unusable as a plain host set (anonymous, constant, interval,
/// map, object map, concatenation).
const FOREIGN_SET_FLAGS: u32 = 0x1 | 0x2 | 0x4 | 0x8 | 0x40 | 0x80;
/// Delete rounds before giving up on elements that keep vanishing under our feet.
const DELETE_ROUNDS: usize = 5;

/// What the nftables backend owns: plain data, from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftSettings {
    /// Name of the table (family `inet`) that holds the sets and chains.
    pub table: String,
    /// Elements each set can hold (`size` of the sets); a full set refuses new blocks.
    pub set_size: u32,
    /// Also drop blocked sources on the forward hook (routers, hosts running containers).
    pub forward: bool,
}

impl Default for NftSettings {
    /// Table `inet portsentry`, 65,536 hosts per family, input hook only.
    fn default() -> Self {
        NftSettings {
            table: DEFAULT_TABLE.to_string(),
            set_size: 65_536,
            forward: false,
        }
    }
}

/// Set size when `MAX_ACTIVE_BLOCKS="0"` (no limit): the kernel needs a number, and a
/// million hosts per family is far beyond any real list of blocks (the kernel allocates
/// elements as they come, not the size up front).
pub const UNLIMITED_SET_SIZE: u32 = 1_000_000;

/// The kernel takes any 255 bytes, but `nft` can only name a table with an identifier.
fn check_table(table: &str) -> Result<(), NftError> {
    crate::config::build::nftables_table_name(table)
        .map_err(|why| NftError::BadSettings(format!("table name {table:?}: {why}")))
}

impl NftSettings {
    /// What `KILL_NFTABLES` asks for, `None` when it is off: table `NFTABLES_TABLE`, forward
    /// hook with `NFTABLES_FORWARD`, sets as large as `MAX_ACTIVE_BLOCKS` (each family's
    /// set alone can then hold every block; "0", no limit, gives [`UNLIMITED_SET_SIZE`]).
    pub fn from_config(config: &crate::config::Config) -> Option<NftSettings> {
        let set_size = match config.max_active_blocks {
            0 => UNLIMITED_SET_SIZE,
            n => u32::try_from(n).unwrap_or(u32::MAX),
        };
        config.kill_nftables.then(|| NftSettings {
            table: config.nftables_table.clone(),
            set_size,
            forward: config.nftables_forward,
        })
    }

    /// Names, size: what the kernel would refuse, or `nft` could not name.
    fn check(&self) -> Result<(), NftError> {
        check_table(&self.table)?;
        if self.set_size == 0 {
            return Err(NftError::BadSettings(
                "set size 0: the sets must hold at least one host".into(),
            ));
        }
        Ok(())
    }
}

/// Why the kernel side of blocking failed; the text is meant for the log as it stands.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// Settings that cannot name nftables objects.
    #[error("nftables: {0}")]
    BadSettings(String),
    /// The kernel has no nf_tables (module missing, or a sandbox without netfilter netlink).
    #[error("nftables cannot be used: the kernel has no nf_tables support ({0})")]
    Unsupported(String),
    /// The process lacks CAP_NET_ADMIN in its network namespace.
    #[error(
        "nftables cannot be used: the kernel refused access (EPERM); changing the firewall \
         needs CAP_NET_ADMIN (run as root, or grant the capability)"
    )]
    NoPermission,
    /// A network where a host was expected ([`host_of`]): networks go to the interval
    /// sets ([`Room`]).
    #[error("{0} is a network; the host sets hold single hosts only")]
    Network(IpNet),
    /// The set holds `set_size` hosts already; the whole batch was refused.
    #[error(
        "nftables: set inet {table} {set} is full (size {size}); raise the set size (the table \
         must then be deleted once: nft delete table inet {table})"
    )]
    SetFull {
        /// Table name.
        table: String,
        /// Set name.
        set: &'static str,
        /// Size asked for in the settings.
        size: u32,
    },
    /// Our table holds an object of our name that we cannot use (made by hand, or by
    /// another program).
    #[error(
        "nftables: table inet {table}: {object} {why}; delete the table (nft delete table inet \
         {table}) so that portsentry can make it again"
    )]
    Incompatible {
        /// Table name.
        table: String,
        /// `set ipv4_addr`, `chain input`, …
        object: String,
        /// What is wrong with it.
        why: String,
    },
    /// The kernel refused an operation, for the reason its errno gives.
    #[error("nftables: {what}: {source}")]
    Kernel {
        /// What was being done.
        what: String,
        /// The errno, as an I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel's answer was missing or made no sense.
    #[error("nftables: {0}")]
    Protocol(String),
    /// The daemon holds no open backend: `KILL_NFTABLES` is off, or could not be opened.
    #[error("nftables: not in use (KILL_NFTABLES is off or could not be set up)")]
    Closed,
}

/// Turns an errno from the kernel into the error a person can act on: capability and
/// kernel-support errors read the same wherever they happen.
fn errno_error(errno: Errno, what: impl Into<String>) -> NftError {
    match errno {
        Errno::EPERM | Errno::EACCES => NftError::NoPermission,
        Errno::EOPNOTSUPP | Errno::EPROTONOSUPPORT | Errno::EAFNOSUPPORT => {
            NftError::Unsupported(errno.desc().to_string())
        }
        _ => NftError::Kernel {
            what: what.into(),
            source: std::io::Error::from_raw_os_error(errno as i32),
        },
    }
}

/// The host address of a network target: a /32 or /128 is a host; anything wider is
/// [`NftError::Network`], which the caller skips or blocks another way.
pub fn host_of(net: IpNet) -> Result<IpAddr, NftError> {
    if net.prefix_len() == net.max_prefix_len() {
        Ok(net.addr())
    } else {
        Err(NftError::Network(net))
    }
}

/// The set a host goes to: [`SET_V4`] for IPv4 (IPv4-mapped IPv6 included), else
/// [`SET_V6`].
pub fn set_of(addr: IpAddr) -> &'static str {
    Key::new(addr).family().set
}

/// One address family's set and rule.
struct Family {
    set: &'static str,
    /// nft's datatype number (`ipv4_addr` 7, `ipv6_addr` 8), so that `nft` prints the
    /// elements as addresses.
    key_type: u32,
    key_len: u32,
    /// `meta nfproto` value the rule checks first (the table is inet).
    nfproto: u8,
    /// Offset of the source address in the network header.
    saddr_offset: u32,
    /// Transaction-local id of the set, required when creating it.
    set_id: u32,
    /// The set's flags: `timeout` for the host sets, `interval, timeout` for the fleet's.
    flags: u32,
    /// Whether the set has a `size` (the host sets, sized by `MAX_ACTIVE_BLOCKS`); the
    /// fleet's sets are bounded by `CROWDSEC_MAX_DECISIONS` in the daemon instead.
    sized: bool,
}

const FAMILIES: [Family; 2] = [
    Family {
        set: SET_V4,
        key_type: 7,
        key_len: 4,
        nfproto: wire::NFPROTO_IPV4,
        saddr_offset: 12,
        set_id: 1,
        flags: wire::NFT_SET_TIMEOUT,
        sized: true,
    },
    Family {
        set: SET_V6,
        key_type: 8,
        key_len: 16,
        nfproto: wire::NFPROTO_IPV6,
        saddr_offset: 8,
        set_id: 2,
        flags: wire::NFT_SET_TIMEOUT,
        sized: true,
    },
];

/// The network sets of the blocks made here: interval sets beside the host sets, so that
/// a host block and a block of a prefix around it are both elements (the kernel refuses
/// only overlapping intervals of one set), and host blocks keep the hash set's cost.
const NET_FAMILIES: [Family; 2] = [
    Family {
        set: SET_NET_V4,
        set_id: 7,
        flags: wire::NFT_SET_INTERVAL | wire::NFT_SET_TIMEOUT,
        sized: false,
        ..FAMILIES[0]
    },
    Family {
        set: SET_NET_V6,
        set_id: 8,
        flags: wire::NFT_SET_INTERVAL | wire::NFT_SET_TIMEOUT,
        sized: false,
        ..FAMILIES[1]
    },
];

/// The fleet's host sets: decisions pulled from CrowdSec, in a room of their own so that a
/// local block's undo never removes a fleet element and the other way round. Hosts are
/// hash-set elements: adding 100 to a set of 100,000 costs the kernel well under a
/// millisecond, where an interval set (a red-black tree the kernel walks at each commit)
/// takes some 30 ms.
const FLEET_FAMILIES: [Family; 2] = [
    Family {
        set: FLEET_SET_V4,
        set_id: 3,
        sized: false,
        ..FAMILIES[0]
    },
    Family {
        set: FLEET_SET_V6,
        set_id: 4,
        sized: false,
        ..FAMILIES[1]
    },
];

/// The fleet's network sets (`Range` decisions), interval sets.
const FLEET_NET_FAMILIES: [Family; 2] = [
    Family {
        set: FLEET_NET_SET_V4,
        set_id: 5,
        flags: wire::NFT_SET_INTERVAL | wire::NFT_SET_TIMEOUT,
        sized: false,
        ..FAMILIES[0]
    },
    Family {
        set: FLEET_NET_SET_V6,
        set_id: 6,
        flags: wire::NFT_SET_INTERVAL | wire::NFT_SET_TIMEOUT,
        sized: false,
        ..FAMILIES[1]
    },
];

/// Every set of our layout, in the order their drop rules stand in each chain.
const ALL_SETS: [&Family; 8] = [
    &FAMILIES[0],
    &FAMILIES[1],
    &NET_FAMILIES[0],
    &NET_FAMILIES[1],
    &FLEET_FAMILIES[0],
    &FLEET_FAMILIES[1],
    &FLEET_NET_FAMILIES[0],
    &FLEET_NET_FAMILIES[1],
];

/// A base chain of ours.
struct Hook {
    chain: &'static str,
    hooknum: u32,
}

const INPUT: Hook = Hook {
    chain: "input",
    hooknum: wire::NF_INET_LOCAL_IN,
};
const FORWARD: Hook = Hook {
    chain: "forward",
    hooknum: wire::NF_INET_FORWARD,
};

/// A set of ours as the kernel has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SetInfo {
    flags: u32,
    key_type: u32,
    key_len: u32,
    size: Option<u32>,
}

/// A chain of ours as the kernel has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChainInfo {
    hooknum: Option<u32>,
    /// Whether a rule drops sources found in each set of [`ALL_SETS`].
    drops: [bool; 8],
}

/// What of our layout the kernel already has; read from our table only.
#[derive(Debug, Default)]
struct Survey {
    table: bool,
    /// Each set of [`ALL_SETS`].
    sets: [Option<SetInfo>; 8],
    input: Option<ChainInfo>,
    forward: Option<ChainInfo>,
}

impl Survey {
    /// Errors for objects of ours we cannot use as they are; a size other than the
    /// settings' is only a warning (the kernel cannot resize a set).
    fn check(&self, settings: &NftSettings) -> Result<(), NftError> {
        let incompatible = |object: String, why: String| NftError::Incompatible {
            table: settings.table.clone(),
            object,
            why,
        };
        for (fam, info) in ALL_SETS.iter().zip(&self.sets) {
            let Some(info) = info else { continue };
            let object = format!("set {}", fam.set);
            if info.key_type != fam.key_type || info.key_len != fam.key_len {
                return Err(incompatible(object, "holds another type of key".into()));
            }
            if info.flags & wire::NFT_SET_TIMEOUT == 0 {
                return Err(incompatible(object, "has no `flags timeout`".into()));
            }
            if fam.flags & wire::NFT_SET_INTERVAL != 0 && info.flags & wire::NFT_SET_INTERVAL == 0 {
                return Err(incompatible(object, "has no `flags interval`".into()));
            }
            if info.flags & FOREIGN_SET_FLAGS & !fam.flags != 0 {
                return Err(incompatible(
                    object,
                    if fam.flags & wire::NFT_SET_INTERVAL != 0 {
                        "is not a plain interval set (map or constant)".into()
                    } else {
                        "is not a plain set (interval, map or constant)".into()
                    },
                ));
            }
            if fam.sized && info.size.is_some_and(|s| s != settings.set_size) {
                log::warn!(
                    "nftables: set inet {} {} keeps its size {} (the settings ask for {}): \
                     the kernel cannot resize a set; delete the table to apply the new size",
                    settings.table,
                    fam.set,
                    info.size.unwrap_or(0),
                    settings.set_size
                );
            }
        }
        for (hook, info) in [(&INPUT, &self.input), (&FORWARD, &self.forward)] {
            if let Some(info) = info
                && info.hooknum != Some(hook.hooknum)
            {
                return Err(incompatible(
                    format!("chain {}", hook.chain),
                    format!("is not a base chain on the {} hook", hook.chain),
                ));
            }
        }
        Ok(())
    }
}

/// The kernel side of blocking: adds and removes hosts in the sets of our table.
///
/// Holds one netlink socket, which belongs to the network namespace of the thread that
/// called [`NftBackend::open`]. Dropping it leaves the table and its elements in place.
pub struct NftBackend {
    sock: Socket,
    settings: NftSettings,
}

/// What a command of a transaction was doing, to name it when the kernel refuses it.
struct Label {
    seq: u32,
    what: String,
    /// The set it fills, for [`NftError::SetFull`].
    set: Option<&'static str>,
}

impl Label {
    fn new(seq: u32, what: impl Into<String>) -> Label {
        Label {
            seq,
            what: what.into(),
            set: None,
        }
    }

    fn set(seq: u32, what: &str, fam: &Family) -> Label {
        Label {
            set: Some(fam.set),
            ..Label::new(seq, what)
        }
    }
}

impl NftBackend {
    /// Creates (or finds, unchanged) `table inet <table>` with both sets and the `input`
    /// chain (and `forward` with [`NftSettings::forward`]), in one transaction. Only what is
    /// missing is created, so opening again adds no duplicate rule; a `forward` chain left by
    /// an earlier run is removed when forwarding is now off. Objects of our names that cannot
    /// work (a set of another type, a chain on another hook) are an error that says how to
    /// start over.
    pub fn open(settings: &NftSettings) -> Result<NftBackend, NftError> {
        settings.check()?;
        let backend = NftBackend {
            sock: Socket::open()?,
            settings: settings.clone(),
        };
        let survey = backend.survey()?;
        survey.check(settings)?;
        let mut batch = backend.sock.batch();
        let mut labels = Vec::new();
        backend.plan(&survey, &mut batch, &mut labels);
        backend
            .sock
            .commit(batch)
            .map_err(|r| backend.rejected(r, &labels, "setting up the table"))?;
        Ok(backend)
    }

    /// A backend on an existing table, for deleting and listing only: nothing is created
    /// or checked (expiry of blocks made in a table that a reload has since replaced, and
    /// tools that watch the sets). Deleting from a table that does not exist succeeds (the
    /// hosts are not there); listing it is an error.
    pub fn attach(table: &str) -> Result<NftBackend, NftError> {
        check_table(table)?;
        Ok(NftBackend {
            sock: Socket::open()?,
            settings: NftSettings {
                table: table.to_string(),
                ..NftSettings::default()
            },
        })
    }

    /// What this backend was opened with.
    pub fn settings(&self) -> &NftSettings {
        &self.settings
    }

    /// Adds hosts in one netlink transaction, each with its own kernel timeout (`None`: it
    /// stays until deleted). A host already in the set is replaced, so its timeout becomes
    /// the new one (this works on every kernel: the batch makes sure each element exists,
    /// deletes it and adds it again, atomically). IPv4-mapped IPv6 addresses go to the IPv4
    /// set. A timeout below 1 ms counts as 1 ms: zero would mean "never" to the kernel.
    pub fn add(&mut self, elements: &[(IpAddr, Option<Duration>)]) -> Result<(), NftError> {
        let keys = keys(elements.iter().map(|&(a, t)| (a, t.map(timeout_ms))));
        if keys.is_empty() {
            return Ok(());
        }
        let mut batch = self.sock.batch();
        let mut labels = Vec::new();
        let table = self.settings.table.as_str();
        for (fam, keys) in by_family(&keys) {
            let what = format!(
                "adding {} hosts to set inet {table} {}",
                keys.len(),
                fam.set
            );
            for (cmd, timeouts) in [
                (Cmd::NewSetElem, false),
                (Cmd::DelSetElem, false),
                (Cmd::NewSetElem, true),
            ] {
                for chunk in keys.chunks(ELEMENTS_PER_MESSAGE) {
                    let seq = element_command(&mut batch, cmd, table, fam, chunk, timeouts);
                    labels.push(Label::set(seq, &what, fam));
                }
            }
        }
        self.sock
            .commit(batch)
            .map_err(|r| self.rejected(r, &labels, "adding hosts"))
    }

    /// Deletes hosts in one transaction; a host that is not in its set (expired in the
    /// kernel, deleted by hand) is no error. Each host is its own command, so the kernel's
    /// report names the absent ones; the transaction is then sent again without them.
    pub fn delete(&mut self, addrs: &[IpAddr]) -> Result<(), NftError> {
        let mut keys = keys(addrs.iter().map(|&a| (a, None)));
        let table = self.settings.table.as_str();
        for _ in 0..DELETE_ROUNDS {
            if keys.is_empty() {
                return Ok(());
            }
            let mut batch = self.sock.batch();
            let seqs: Vec<u32> = keys
                .iter()
                .map(|e| {
                    let one = std::slice::from_ref(e);
                    element_command(&mut batch, Cmd::DelSetElem, table, e.0.family(), one, false)
                })
                .collect();
            let failures = match self.sock.commit(batch) {
                Ok(()) => return Ok(()),
                Err(Rejected::Commands(f)) => f,
                Err(Rejected::Overrun) => {
                    // Too many absent hosts to hear about each: keep those still listed.
                    let present: HashSet<Key> =
                        self.list()?.into_iter().map(|(a, _)| Key::new(a)).collect();
                    keys.retain(|(k, _)| present.contains(k));
                    continue;
                }
                Err(Rejected::Other(e)) => return Err(e),
            };
            if let Some(f) = failures.iter().find(|f| f.errno != Errno::ENOENT) {
                return Err(errno_error(
                    f.errno,
                    format!("deleting hosts from table inet {table}"),
                ));
            }
            let absent: HashSet<u32> = failures.iter().map(|f| f.seq).collect();
            let before = keys.len();
            let mut seq = seqs.iter();
            keys.retain(|_| seq.next().is_some_and(|s| !absent.contains(s)));
            if keys.len() == before {
                return Err(NftError::Protocol(
                    "the kernel refused the deletion without naming an element".into(),
                ));
            }
        }
        Err(NftError::Protocol(format!(
            "hosts kept vanishing from table inet {table} while being deleted"
        )))
    }

    /// The hosts in the sets now, with the time each has left when it has a timeout.
    /// Elements the kernel holds but has already expired are not listed.
    pub fn list(&self) -> Result<Vec<(IpAddr, Option<Duration>)>, NftError> {
        let mut out = Vec::new();
        for fam in &FAMILIES {
            self.dump_set(fam, |e| out.extend(parse_element(e)))?;
        }
        Ok(out)
    }

    /// Hands every element of one set of ours, as the kernel dumps it, to `each`.
    fn dump_set(&self, fam: &Family, mut each: impl FnMut(Attrs<'_>)) -> Result<(), NftError> {
        let table = self.settings.table.as_str();
        let answer = self.sock.request(
            Cmd::GetSetElem,
            true,
            |w| {
                w.str(wire::NFTA_SET_ELEM_LIST_TABLE, table);
                w.str(wire::NFTA_SET_ELEM_LIST_SET, fam.set);
            },
            |reply| {
                if let Some(elements) = reply.attrs().nested(wire::NFTA_SET_ELEM_LIST_ELEMENTS) {
                    for (_, e) in elements {
                        each(Attrs(e));
                    }
                }
                Ok(())
            },
        )?;
        answer.map_err(|e| errno_error(e, format!("listing set inet {table} {}", fam.set)))
    }

    /// Reads what exists of our layout: gets by name, and the rules of our own chains.
    fn survey(&self) -> Result<Survey, NftError> {
        let table = self.settings.table.as_str();
        let exists = self.get(
            Cmd::GetTable,
            |w| w.str(wire::NFTA_TABLE_NAME, table),
            |_| {},
            || format!("looking up table inet {table}"),
        )?;
        if !exists {
            return Ok(Survey::default());
        }
        Ok(Survey {
            table: true,
            sets: [
                self.get_set(SET_V4)?,
                self.get_set(SET_V6)?,
                self.get_set(SET_NET_V4)?,
                self.get_set(SET_NET_V6)?,
                self.get_set(FLEET_SET_V4)?,
                self.get_set(FLEET_SET_V6)?,
                self.get_set(FLEET_NET_SET_V4)?,
                self.get_set(FLEET_NET_SET_V6)?,
            ],
            input: self.get_chain(INPUT.chain)?,
            forward: self.get_chain(FORWARD.chain)?,
        })
    }

    /// Asks for one object of our table by name; `Ok(false)` when the kernel has none.
    fn get(
        &self,
        cmd: Cmd,
        name: impl FnOnce(&mut Writer),
        mut found: impl FnMut(Attrs<'_>),
        what: impl FnOnce() -> String,
    ) -> Result<bool, NftError> {
        match self.sock.request(cmd, false, name, |reply| {
            found(reply.attrs());
            Ok(())
        })? {
            Ok(()) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(errno_error(e, what())),
        }
    }

    fn get_set(&self, name: &str) -> Result<Option<SetInfo>, NftError> {
        let table = self.settings.table.as_str();
        let mut info = None;
        self.get(
            Cmd::GetSet,
            |w| {
                w.str(wire::NFTA_SET_TABLE, table);
                w.str(wire::NFTA_SET_NAME, name);
            },
            |a| {
                info = Some(SetInfo {
                    flags: a.be32(wire::NFTA_SET_FLAGS).unwrap_or(0),
                    key_type: a.be32(wire::NFTA_SET_KEY_TYPE).unwrap_or(0),
                    key_len: a.be32(wire::NFTA_SET_KEY_LEN).unwrap_or(0),
                    size: a
                        .nested(wire::NFTA_SET_DESC)
                        .and_then(|d| d.be32(wire::NFTA_SET_DESC_SIZE)),
                });
            },
            || format!("looking up set inet {table} {name}"),
        )?;
        Ok(info)
    }

    /// A chain of ours: its hook, and which of our drop rules it holds.
    fn get_chain(&self, name: &str) -> Result<Option<ChainInfo>, NftError> {
        let table = self.settings.table.as_str();
        let mut hooknum = None;
        let exists = self.get(
            Cmd::GetChain,
            |w| {
                w.str(wire::NFTA_CHAIN_TABLE, table);
                w.str(wire::NFTA_CHAIN_NAME, name);
            },
            |a| {
                hooknum = a
                    .nested(wire::NFTA_CHAIN_HOOK)
                    .and_then(|h| h.be32(wire::NFTA_HOOK_HOOKNUM));
            },
            || format!("looking up chain {name}"),
        )?;
        if !exists {
            return Ok(None);
        }
        let mut drops = [false; 8];
        let answer = self.sock.request(
            Cmd::GetRule,
            true,
            |w| {
                w.str(wire::NFTA_RULE_TABLE, table);
                w.str(wire::NFTA_RULE_CHAIN, name);
            },
            |reply| {
                for (fam, seen) in ALL_SETS.iter().zip(&mut drops) {
                    *seen |= rule_drops_set(reply.attrs(), fam.set);
                }
                Ok(())
            },
        )?;
        answer.map_err(|e| errno_error(e, format!("listing the rules of chain {name}")))?;
        Ok(Some(ChainInfo { hooknum, drops }))
    }

    /// Writes the commands that complete our layout: nothing when it is complete.
    fn plan(&self, survey: &Survey, batch: &mut Batch, labels: &mut Vec<Label>) {
        let s = &self.settings;
        let table = s.table.as_str();
        if !survey.table {
            let seq = batch.command(Cmd::NewTable, wire::NLM_F_CREATE, |w| {
                w.str(wire::NFTA_TABLE_NAME, table);
            });
            labels.push(Label::new(seq, format!("creating table inet {table}")));
        }
        for (fam, info) in ALL_SETS.iter().zip(&survey.sets) {
            if info.is_none() {
                let seq = batch.command(Cmd::NewSet, wire::NLM_F_CREATE, |w| {
                    write_set(w, table, fam, s.set_size);
                });
                labels.push(Label::new(seq, format!("creating set {}", fam.set)));
            }
        }
        let mut hooks = vec![(&INPUT, survey.input)];
        if s.forward {
            hooks.push((&FORWARD, survey.forward));
        } else if survey.forward.is_some() {
            // Forwarding was on in an earlier run: flush the chain, then delete it.
            let seq = batch.command(Cmd::DelRule, 0, |w| {
                w.str(wire::NFTA_RULE_TABLE, table);
                w.str(wire::NFTA_RULE_CHAIN, FORWARD.chain);
            });
            labels.push(Label::new(seq, "flushing chain forward"));
            let seq = batch.command(Cmd::DelChain, 0, |w| {
                w.str(wire::NFTA_CHAIN_TABLE, table);
                w.str(wire::NFTA_CHAIN_NAME, FORWARD.chain);
            });
            labels.push(Label::new(seq, "deleting chain forward"));
        }
        for (hook, info) in hooks {
            if info.is_none() {
                let seq = batch.command(Cmd::NewChain, wire::NLM_F_CREATE, |w| {
                    write_chain(w, table, hook);
                });
                labels.push(Label::new(seq, format!("creating chain {}", hook.chain)));
            }
            let drops = info.map_or([false; 8], |i| i.drops);
            for (fam, present) in ALL_SETS.iter().zip(drops) {
                if !present {
                    let seq =
                        batch.command(Cmd::NewRule, wire::NLM_F_CREATE | wire::NLM_F_APPEND, |w| {
                            write_drop_rule(w, table, hook.chain, fam)
                        });
                    labels.push(Label::new(
                        seq,
                        format!("adding the {} rule to chain {}", fam.set, hook.chain),
                    ));
                }
            }
        }
    }

    /// The error for a refused transaction, named after the first command the kernel
    /// refused.
    fn rejected(&self, r: Rejected, labels: &[Label], doing: &str) -> NftError {
        let table = &self.settings.table;
        match r {
            Rejected::Other(e) => e,
            Rejected::Overrun => NftError::Protocol(format!(
                "{doing} in table inet {table} failed; the kernel's reports were lost"
            )),
            Rejected::Commands(failures) => {
                let Some(first) = failures.first() else {
                    return NftError::Protocol(format!("{doing}: refused without a reason"));
                };
                let label = labels.iter().find(|l| l.seq == first.seq);
                if let (Errno::ENFILE, Some(set)) = (first.errno, label.and_then(|l| l.set)) {
                    return NftError::SetFull {
                        table: table.clone(),
                        set,
                        size: self.settings.set_size,
                    };
                }
                let what = label.map_or_else(
                    || format!("{doing} in table inet {table}"),
                    |l| l.what.clone(),
                );
                errno_error(first.errno, what)
            }
        }
    }
}

/// Checks, without changing anything, that nftables can be used here: netfilter netlink
/// exists, nf_tables answers, the process may change the firewall, and our table (if it
/// exists already) holds nothing we cannot use. The error says why not, in one sentence
/// (for start-up and `--check-config`).
pub fn probe(settings: &NftSettings) -> Result<(), NftError> {
    settings.check()?;
    let sock = Socket::open()?;
    match sock.request(Cmd::GetGen, false, |_| {}, |_| Ok(()))? {
        Ok(()) => {}
        // nfnetlink answers EINVAL for a subsystem it does not have (nor can load).
        Err(Errno::EINVAL) => {
            return Err(NftError::Unsupported(
                "nf_tables is not loaded and cannot be loaded".into(),
            ));
        }
        Err(e) => return Err(errno_error(e, "asking nf_tables for its generation")),
    }
    let backend = NftBackend {
        sock,
        settings: settings.clone(),
    };
    backend.survey()?.check(settings)
}

/// Rounds up to whole milliseconds (the kernel's unit), at least 1, at most
/// [`MAX_TIMEOUT_MS`].
fn timeout_ms(d: Duration) -> u64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms)
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_TIMEOUT_MS)
}

/// A host as a set element: which family's set, and the address bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    /// Index into [`FAMILIES`].
    fam: usize,
    /// The address; an IPv4 one in the first four bytes.
    bytes: [u8; 16],
}

impl Key {
    /// IPv4-mapped IPv6 addresses count as IPv4.
    fn new(addr: IpAddr) -> Key {
        match addr.to_canonical() {
            IpAddr::V4(a) => {
                let mut bytes = [0; 16];
                bytes[..4].copy_from_slice(&a.octets());
                Key { fam: 0, bytes }
            }
            IpAddr::V6(a) => Key {
                fam: 1,
                bytes: a.octets(),
            },
        }
    }

    fn family(&self) -> &'static Family {
        &FAMILIES[self.fam]
    }

    fn data(&self) -> &[u8] {
        &self.bytes[..self.family().key_len as usize]
    }
}

/// A set element to write: the host and its timeout in milliseconds (`None`: none).
type Element = (Key, Option<u64>);

/// The hosts as set elements with their timeouts, IPv4 first; a host named twice keeps
/// the last timeout given.
fn keys(elements: impl Iterator<Item = (IpAddr, Option<u64>)>) -> Vec<Element> {
    let mut last: HashMap<Key, Option<u64>> = HashMap::new();
    for (addr, timeout) in elements {
        last.insert(Key::new(addr), timeout);
    }
    let mut keys: Vec<_> = last.into_iter().collect();
    keys.sort_unstable_by_key(|(k, _)| k.fam);
    keys
}

/// The runs of [`keys`]'s output that belong to each family (empty ones left out).
fn by_family(keys: &[Element]) -> Vec<(&'static Family, &[Element])> {
    let v6 = keys.partition_point(|(k, _)| k.fam == 0);
    let (a, b) = keys.split_at(v6);
    [(&FAMILIES[0], a), (&FAMILIES[1], b)]
        .into_iter()
        .filter(|(_, k)| !k.is_empty())
        .collect()
}

/// One element command (`NEWSETELEM` or `DELSETELEM`) for these elements; timeouts are
/// written only when `timeouts` is set. Returns its sequence number.
fn element_command(
    batch: &mut Batch,
    cmd: Cmd,
    table: &str,
    fam: &Family,
    elements: &[Element],
    timeouts: bool,
) -> u32 {
    element_list_command(batch, cmd, table, fam, |w| {
        for (key, timeout) in elements {
            w.nested(wire::NFTA_LIST_ELEM, |w| {
                w.nested(wire::NFTA_SET_ELEM_KEY, |w| {
                    w.bytes(wire::NFTA_DATA_VALUE, key.data());
                });
                if let (true, Some(ms)) = (timeouts, timeout) {
                    w.be64(wire::NFTA_SET_ELEM_TIMEOUT, *ms);
                }
            });
        }
    })
}

/// One element list command (`NEWSETELEM`, which creates, or `DELSETELEM`) for a set of
/// ours, `elements` writing the list's entries. Returns its sequence number.
fn element_list_command(
    batch: &mut Batch,
    cmd: Cmd,
    table: &str,
    fam: &Family,
    elements: impl FnOnce(&mut Writer),
) -> u32 {
    let flags = if cmd == Cmd::NewSetElem {
        wire::NLM_F_CREATE
    } else {
        0
    };
    batch.command(cmd, flags, |w| {
        w.str(wire::NFTA_SET_ELEM_LIST_TABLE, table);
        w.str(wire::NFTA_SET_ELEM_LIST_SET, fam.set);
        w.nested(wire::NFTA_SET_ELEM_LIST_ELEMENTS, elements);
    })
}

/// An element of a set dump: its address and the time it has left.
fn parse_element(e: Attrs<'_>) -> Option<(IpAddr, Option<Duration>)> {
    let key = e
        .nested(wire::NFTA_SET_ELEM_KEY)?
        .get(wire::NFTA_DATA_VALUE)?;
    let addr = match key.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(key).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(key).ok()?),
        _ => return None,
    };
    let left = e
        .be64(wire::NFTA_SET_ELEM_EXPIRATION)
        .or_else(|| e.be64(wire::NFTA_SET_ELEM_TIMEOUT))
        .map(Duration::from_millis);
    Some((addr, left))
}

fn write_set(w: &mut Writer, table: &str, fam: &Family, size: u32) {
    w.str(wire::NFTA_SET_TABLE, table);
    w.str(wire::NFTA_SET_NAME, fam.set);
    w.be32(wire::NFTA_SET_FLAGS, fam.flags);
    w.be32(wire::NFTA_SET_KEY_TYPE, fam.key_type);
    w.be32(wire::NFTA_SET_KEY_LEN, fam.key_len);
    w.be32(wire::NFTA_SET_ID, fam.set_id);
    if fam.sized {
        w.nested(wire::NFTA_SET_DESC, |w| {
            w.be32(wire::NFTA_SET_DESC_SIZE, size)
        });
    }
}

fn write_chain(w: &mut Writer, table: &str, hook: &Hook) {
    w.str(wire::NFTA_CHAIN_TABLE, table);
    w.str(wire::NFTA_CHAIN_NAME, hook.chain);
    w.nested(wire::NFTA_CHAIN_HOOK, |w| {
        w.be32(wire::NFTA_HOOK_HOOKNUM, hook.hooknum);
        w.be32(wire::NFTA_HOOK_PRIORITY, CHAIN_PRIORITY as u32);
    });
    w.be32(wire::NFTA_CHAIN_POLICY, wire::NF_ACCEPT);
    w.str(wire::NFTA_CHAIN_TYPE, "filter");
}

/// `ip saddr @ipv4_addr drop` (or the IPv6 one): in an inet table `ip saddr` means "the
/// packet is IPv4, and its source address".
fn write_drop_rule(w: &mut Writer, table: &str, chain: &str, fam: &Family) {
    w.str(wire::NFTA_RULE_TABLE, table);
    w.str(wire::NFTA_RULE_CHAIN, chain);
    w.nested(wire::NFTA_RULE_EXPRESSIONS, |w| {
        expression(w, "meta", |w| {
            w.be32(wire::NFTA_META_KEY, wire::NFT_META_NFPROTO);
            w.be32(wire::NFTA_META_DREG, wire::NFT_REG_1);
        });
        expression(w, "cmp", |w| {
            w.be32(wire::NFTA_CMP_SREG, wire::NFT_REG_1);
            w.be32(wire::NFTA_CMP_OP, wire::NFT_CMP_EQ);
            w.nested(wire::NFTA_CMP_DATA, |w| {
                w.bytes(wire::NFTA_DATA_VALUE, &[fam.nfproto]);
            });
        });
        expression(w, "payload", |w| {
            w.be32(wire::NFTA_PAYLOAD_DREG, wire::NFT_REG_1);
            w.be32(wire::NFTA_PAYLOAD_BASE, wire::NFT_PAYLOAD_NETWORK_HEADER);
            w.be32(wire::NFTA_PAYLOAD_OFFSET, fam.saddr_offset);
            w.be32(wire::NFTA_PAYLOAD_LEN, fam.key_len);
        });
        expression(w, "lookup", |w| {
            w.str(wire::NFTA_LOOKUP_SET, fam.set);
            w.be32(wire::NFTA_LOOKUP_SREG, wire::NFT_REG_1);
            w.be32(wire::NFTA_LOOKUP_SET_ID, fam.set_id);
        });
        expression(w, "immediate", |w| {
            w.be32(wire::NFTA_IMMEDIATE_DREG, wire::NFT_REG_VERDICT);
            w.nested(wire::NFTA_IMMEDIATE_DATA, |w| {
                w.nested(wire::NFTA_DATA_VERDICT, |w| {
                    w.be32(wire::NFTA_VERDICT_CODE, wire::NF_DROP);
                });
            });
        });
    });
}

fn expression(w: &mut Writer, name: &str, data: impl FnOnce(&mut Writer)) {
    w.nested(wire::NFTA_LIST_ELEM, |w| {
        w.str(wire::NFTA_EXPR_NAME, name);
        w.nested(wire::NFTA_EXPR_DATA, data);
    });
}

/// Whether a rule (as dumped) drops packets whose address is in `set`: it looks the set up
/// (not inverted) and has a drop verdict. That is how our rules are recognised on a later
/// start, whatever else the kernel reports about them.
fn rule_drops_set(rule: Attrs<'_>, set: &str) -> bool {
    let Some(exprs) = rule.nested(wire::NFTA_RULE_EXPRESSIONS) else {
        return false;
    };
    let (mut looks_up, mut drops) = (false, false);
    for (_, e) in exprs {
        let e = Attrs(e);
        let Some(data) = e.nested(wire::NFTA_EXPR_DATA) else {
            continue;
        };
        match e.str(wire::NFTA_EXPR_NAME) {
            Some("lookup") => {
                let inverted =
                    data.be32(wire::NFTA_LOOKUP_FLAGS).unwrap_or(0) & wire::NFT_LOOKUP_F_INV != 0;
                looks_up |= data.str(wire::NFTA_LOOKUP_SET) == Some(set) && !inverted;
            }
            Some("immediate") => {
                drops |= data
                    .nested(wire::NFTA_IMMEDIATE_DATA)
                    .and_then(|d| d.nested(wire::NFTA_DATA_VERDICT))
                    .and_then(|v| v.be32(wire::NFTA_VERDICT_CODE))
                    == Some(wire::NF_DROP);
            }
            _ => {}
        }
    }
    looks_up && drops
}
