//! Integration tests of the pure control-plane core over the fixture corpus in the repository's
//! `tests/fixtures/{events,jobs}` (loaded with `include_str!`). One binary: helpers in `util`,
//! parsing in `parsing`, the decision table in `decision_table`, end-to-end sequences and outputs
//! in `sequences`, property tests in `fuzz`. No network, no clock, no sleeps.

mod decision_table;
mod fuzz;
mod parsing;
mod sequences;
mod util;
