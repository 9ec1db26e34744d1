//! stemflow recording (placeholder while the crate is written).
