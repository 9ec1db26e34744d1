//! stemflow actors (placeholder while the crate is written).
