//! What spotcheck did for a team, from its own ledger: `spotcheck report`.
//!
//! A deployed stack writes write-once JSON records to its ledger bucket (see
//! `spotcheck_aws::ledger`). This crate turns them into a report per lineage and in total — jobs,
//! interruptions, SageMaker restarts, control-plane relaunches and give-ups, lost steps, training
//! and billable seconds, on-demand and spot cost, savings, checkpoint validation failures, and the
//! counterfactual — as text, JSON and a self-contained HTML page with charts.
//!
//! Modules, from the pure core out:
//!
//! - [`record`] — one ledger object (key and bytes) → a typed [`record::LedgerRecord`], or the
//!   reason it is skipped. Pure.
//! - [`counterfactual`] — what a lineage would have ended with without spotcheck, and fully
//!   on-demand. Pure; the demo uses it too.
//! - [`aggregate`] — the streaming [`aggregate::Aggregator`]: records in, one at a time, a
//!   [`aggregate::LedgerReport`] out. Pure; holds one small entry per job and lineage, never the
//!   records.
//! - [`store`] — the [`store::LedgerStore`] trait (list a page of keys, read one object), its S3
//!   implementation, and [`store::read_ledger`], which pages through the ledger with a bounded
//!   number of reads in flight.
//! - [`charts`] — the SVG charts (timeline, cost bars, line over time) shared with the demo.
//! - [`render`] — the report as text and as HTML.
//!
//! Definitions of every figure: `docs/report.md`.

#![warn(missing_docs)]

pub mod aggregate;
pub mod charts;
pub mod counterfactual;
pub mod record;
pub mod render;
pub mod store;

pub use aggregate::{Aggregator, Filter, LedgerReport};
pub use store::{read_ledger, LedgerStore, ReadOptions, S3LedgerStore};
