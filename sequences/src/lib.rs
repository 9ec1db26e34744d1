//! stemflow sequences (placeholder while the crate is written).
