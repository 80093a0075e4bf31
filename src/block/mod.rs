//! Blocks as a first-class, owned thing: one [`manager`] thread owns every block (reserve,
//! confirm, fail, expire, undo, list); a [`journal`] makes them survive crashes and reboots;
//! filters read the [`view`] the manager publishes and never change it.
//!
//! A block is about a [`Target`]: one address (`/32`, `/128`) or, for blocks made by hand or
//! imported from a list, a network.

pub mod blocked_writer;
pub mod core;
pub mod journal;
pub mod manager;
pub mod policy;
pub mod refusal;
pub mod stored;
pub mod syncer;
pub mod view;

pub use crate::record::*;
