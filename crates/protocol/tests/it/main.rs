//! Integration tests for the checkpoint protocol: one binary, small helpers in `util`.

mod fuzz;
mod job;
mod retention;
mod scan;
mod util;
mod writer;
