//! stemflow processing (placeholder while the crate is written).
