//! Helpers shared by the integration tests: a Python virtual environment with pinned PyPI
//! packages ([`pyenv`]), child processes that are killed on every path ([`process`]),
//! scratch directories and test data paths ([`scratch`]), and the `stemflow` binary run to
//! completion with its results looked up ([`command`]).
//!
//! Each test file includes this with `mod common;`; not every file uses every helper.
#![allow(dead_code)]

pub mod command;
pub mod instrument;
pub mod process;
pub mod pyenv;
pub mod scratch;
