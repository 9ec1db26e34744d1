//! stemflow drivers (placeholder while the crate is written).
