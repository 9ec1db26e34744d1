//! stemflow simulators (placeholder while the crate is written).
