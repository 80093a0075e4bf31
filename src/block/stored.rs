//! How the core keeps a block in force: a few dozen bytes a block instead of the full
//! [`BlockRecord`] (its actions alone are some ten strings, about 1.5 KB with their
//! allocations), so that 100,000 blocks cost the daemon little beyond the kernel's own.
//!
//! Blocks made by the same responders look alike: the texts of their actions differ only
//! in the target's address and a few numbers (an nftables timeout, a port). So each
//! record's actions are split into a *chain* — every text with the target's text and each
//! number taken out — shared by every block whose chain is the same, and the block's own
//! numbers, shared too when equal. Trigger description, reason and members (rarely more
//! than a handful of distinct values) are shared the same way, and times are kept as
//! milliseconds, the journal's precision. A [`Stored`] gives back exactly the record it
//! was made from ([`Stored::record`]), times apart, which are then cut to the millisecond
//! as the journal writes them.

use std::collections::HashSet;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{BlockRecord, Origin, Target, Trigger, target_text};
use crate::event::{Mode, Proto};
use crate::respond::{Action, Undo};

/// Stands for the target's text in a chain's texts.
const TARGET: char = '\0';
/// Stands for the block's next number in a chain's texts.
const NUMBER: char = '\u{1}';
/// A sweep of unused shared parts is due once there are this many more than after the
/// last one (and at least twice as many).
const SWEEP_SLACK: usize = 64;

/// Actions with the target and the numbers taken out of their texts.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Chain {
    actions: Box<[Action]>,
    /// A text held one of the stand-in characters itself: the texts are kept as they were
    /// and nothing is put back into them.
    verbatim: bool,
}

/// A block's actions: its chain and the numbers that go back into the chain's texts (often
/// the same for many blocks too: blocks restored together have the same timeout).
#[derive(Debug)]
struct Actions {
    chain: Arc<Chain>,
    numbers: Box<[u32]>,
}

impl PartialEq for Actions {
    fn eq(&self, other: &Actions) -> bool {
        // Chains are shared: one chain, one allocation.
        Arc::ptr_eq(&self.chain, &other.chain) && self.numbers == other.numbers
    }
}

impl Eq for Actions {}

impl Hash for Actions {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.chain).hash(state);
        self.numbers.hash(state);
    }
}

/// What a block shares with many others besides its actions.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Shared {
    /// Protocol, mode and description of the trigger; `None`: no trigger.
    trigger: Option<(Proto, Mode, Box<str>)>,
    reason: Box<str>,
    members: Box<[IpAddr]>,
}

/// A block in force as the core keeps it; the target is the key it is kept under.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Milliseconds since 1970.
    since: u64,
    /// Milliseconds since 1970; `None`: permanent.
    until: Option<NonZeroU64>,
    actions: Arc<Actions>,
    shared: Arc<Shared>,
    offences: u32,
    /// The trigger's port (0 without one).
    port: u16,
    origin: Origin,
}

impl Stored {
    /// The full record of the block on `target`.
    pub fn record(&self, target: Target) -> BlockRecord {
        let text = target_text(&target);
        let Actions { chain, numbers } = &*self.actions;
        let mut numbers = numbers.iter();
        let actions = if chain.verbatim {
            chain.actions.to_vec()
        } else {
            map_all(&chain.actions, |t| fill(t, &text, &mut numbers))
        };
        BlockRecord {
            target,
            since: self.since(),
            until: self.until(),
            offences: self.offences,
            origin: self.origin,
            trigger: self.trigger(),
            reason: self.shared.reason.to_string(),
            actions,
            members: self.shared.members.to_vec(),
        }
    }

    /// When the block was applied.
    pub fn since(&self) -> SystemTime {
        from_ms(self.since)
    }

    /// When it ends; `None`: permanent.
    pub fn until(&self) -> Option<SystemTime> {
        self.until.map(|u| from_ms(u.get()))
    }

    /// Gives it another end (cut to the millisecond: read it back with [`Stored::until`]).
    pub fn set_until(&mut self, until: Option<SystemTime>) {
        self.until = until.map(until_ms);
    }

    /// Whether it has run out at `now`.
    pub fn expired(&self, now: SystemTime) -> bool {
        self.until().is_some_and(|u| u <= now)
    }

    /// Scan, manual, import or fleet.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The trigger's protocol; `None` for a block without one.
    pub fn proto(&self) -> Option<Proto> {
        self.shared.trigger.as_ref().map(|(proto, _, _)| *proto)
    }

    /// Port and protocol for the 1.2 line of `BLOCKED_FILE`, as
    /// [`BlockRecord::port_proto`] gives them.
    pub fn port_proto(&self) -> (u16, Proto) {
        (self.port, self.proto().unwrap_or(Proto::Tcp))
    }

    /// The trigger, rebuilt (its description is shared).
    pub fn trigger(&self) -> Option<Trigger> {
        let (proto, mode, kind) = self.shared.trigger.as_ref()?;
        Some(Trigger {
            port: self.port,
            proto: *proto,
            mode: *mode,
            kind: kind.to_string(),
        })
    }

    /// An escalated prefix's members (empty for every other block).
    pub fn members(&self) -> &[IpAddr] {
        &self.shared.members
    }
}

/// Makes [`Stored`] blocks, sharing what blocks have in common. Parts no block uses any
/// more are dropped now and then, as blocks come and go.
#[derive(Debug, Default)]
pub struct Interner {
    chains: HashSet<Arc<Chain>>,
    actions: HashSet<Arc<Actions>>,
    shared: HashSet<Arc<Shared>>,
    /// Parts kept after the last sweep.
    kept: usize,
}

impl Interner {
    /// The compact form of `record` (its target is the key it is kept under).
    pub fn store(&mut self, record: BlockRecord) -> Stored {
        self.sweep_if_due();
        let text = target_text(&record.target);
        let mut numbers = Vec::new();
        let verbatim = record
            .actions
            .iter()
            .flat_map(texts)
            .any(|t| t.contains([TARGET, NUMBER]));
        let actions: Box<[Action]> = if verbatim {
            record.actions.into()
        } else {
            map_all(&record.actions, |t| template(t, &text, &mut numbers))
        };
        let chain = intern(&mut self.chains, Chain { actions, verbatim });
        let (port, trigger) = match record.trigger {
            Some(t) => (t.port, Some((t.proto, t.mode, t.kind.into_boxed_str()))),
            None => (0, None),
        };
        let shared = intern(
            &mut self.shared,
            Shared {
                trigger,
                reason: record.reason.into_boxed_str(),
                members: record.members.into(),
            },
        );
        let actions = intern(
            &mut self.actions,
            Actions {
                chain,
                numbers: numbers.into(),
            },
        );
        Stored {
            since: ms(record.since),
            until: record.until.map(until_ms),
            actions,
            shared,
            offences: record.offences,
            port,
            origin: record.origin,
        }
    }

    /// Drops the shared parts no block uses any more, once they may have piled up.
    fn sweep_if_due(&mut self) {
        if self.parts() < (self.kept * 2).max(self.kept + SWEEP_SLACK) {
            return;
        }
        // Actions first: they hold the chains.
        self.actions.retain(|a| Arc::strong_count(a) > 1);
        self.chains.retain(|c| Arc::strong_count(c) > 1);
        self.shared.retain(|s| Arc::strong_count(s) > 1);
        self.kept = self.parts();
    }

    /// Shared parts kept.
    fn parts(&self) -> usize {
        self.chains.len() + self.actions.len() + self.shared.len()
    }
}

/// The shared copy of `value`, kept in `set` if it is new.
fn intern<T: Eq + Hash>(set: &mut HashSet<Arc<T>>, value: T) -> Arc<T> {
    if let Some(found) = set.get(&value) {
        return Arc::clone(found);
    }
    let new = Arc::new(value);
    set.insert(Arc::clone(&new));
    new
}

/// The texts of `action` that [`map_texts`] maps, in its order.
fn texts(action: &Action) -> [&str; 3] {
    let undo = match &action.undo {
        Undo::Impossible { why: t }
        | Undo::Command { command: t }
        | Undo::RemoveLine { line: t, .. }
        | Undo::Lua { plugin: t }
        | Undo::Nftables { table: t } => t,
    };
    [&action.responder, &action.detail, undo]
}

/// `actions` with `f` applied to each of their texts, in order.
fn map_all<C: FromIterator<Action>>(actions: &[Action], mut f: impl FnMut(&str) -> String) -> C {
    actions.iter().map(|a| map_texts(a, &mut f)).collect()
}

/// `action` with `f` applied to each of its texts, in a fixed order (file paths are left
/// as they are: they hold neither the target nor anything that differs between blocks).
fn map_texts(action: &Action, mut f: impl FnMut(&str) -> String) -> Action {
    let responder = f(&action.responder);
    let detail = f(&action.detail);
    let undo = match &action.undo {
        Undo::Impossible { why } => Undo::Impossible { why: f(why) },
        Undo::Command { command } => Undo::Command {
            command: f(command),
        },
        Undo::RemoveLine { file, line } => Undo::RemoveLine {
            file: file.clone(),
            line: f(line),
        },
        Undo::Lua { plugin } => Undo::Lua { plugin: f(plugin) },
        Undo::Nftables { table } => Undo::Nftables { table: f(table) },
    };
    Action {
        responder,
        detail,
        undo,
    }
}

/// `text` with each copy of `target` replaced by [`TARGET`] and each number (digits
/// without a leading zero that fit a `u32`) by [`NUMBER`], the number pushed on `numbers`.
fn template(text: &str, target: &str, numbers: &mut Vec<u32>) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, piece) in text.split(target).enumerate() {
        if i > 0 {
            out.push(TARGET);
        }
        let mut rest = piece;
        while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
            out.push_str(&rest[..start]);
            let digits = &rest[start..];
            let end = digits
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(digits.len());
            let run = &digits[..end];
            match run.parse::<u32>() {
                Ok(n) if run == "0" || !run.starts_with('0') => {
                    out.push(NUMBER);
                    numbers.push(n);
                }
                _ => out.push_str(run),
            }
            rest = &digits[end..];
        }
        out.push_str(rest);
    }
    out
}

/// [`template`] undone: the target and the next numbers put back.
fn fill<'a>(template: &str, target: &str, numbers: &mut impl Iterator<Item = &'a u32>) -> String {
    let mut out = String::with_capacity(template.len() + target.len());
    for c in template.chars() {
        match c {
            TARGET => out.push_str(target),
            NUMBER => {
                if let Some(n) = numbers.next() {
                    out.push_str(&n.to_string());
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Milliseconds since 1970 (0 before it).
fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// An end in milliseconds, never 0 (1970 itself is kept as its first millisecond).
fn until_ms(t: SystemTime) -> NonZeroU64 {
    NonZeroU64::new(ms(t)).unwrap_or(NonZeroU64::MIN)
}

fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests;
