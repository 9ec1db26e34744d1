//! stemflow config (placeholder while the crate is written).
