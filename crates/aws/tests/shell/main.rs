//! One integration-test binary for the shell: in-memory fakes of the adapter traits
//! ([`fakes`]), real-shaped fixtures, and the handler, relaunch, continuation and validation
//! tests, what the ledger records carry for reports, and the continuation-template parser's
//! property tests.

mod checkpoints;
mod continuation;
mod ec2;
mod fakes;
mod fuzz;
mod invoke;
mod records;
mod relaunch;
mod sagemaker;
