//! PortSentry, rebuilt: detects port scans and blocks the scanner.
//!
//! The pipeline reads top to bottom: [`sensor`]s produce [`event::Hit`]s, [`pipeline`] runs
//! them through the [`filter`]s and hands the [`event::Candidate`]s that crossed the trigger to
//! the [`announce`] thread, which logs them and asks the [`block`] manager to block; the
//! manager runs the [`respond`]ers on its worker pool. The [`config`] arrives from the side as
//! a whole new [`generation::Generation`].
#![deny(missing_docs)]

pub mod announce;
pub mod block;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod distinct;
pub mod docs;
pub mod event;
pub mod event_log;
pub mod filter;
pub mod fleet;
#[doc(hidden)]
pub mod fuzz;
pub mod generation;
pub mod heartbeat;
pub mod history;
pub mod local_addrs;
pub mod log_lines;
pub mod logging;
pub mod memory;
pub mod netlink;
pub mod pipeline;
pub mod protected;
pub mod record;
pub mod replay;
pub mod respond;
pub mod sensor;
pub mod storage;
pub mod sync;
pub mod token_bucket;
