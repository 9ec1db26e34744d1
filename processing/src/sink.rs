//! Where decoded tiles go besides the UDFs. The trait lives in `stemflow_core::sink` (the
//! recorder implements it without depending on the engine); re-exported here.

pub use stemflow_core::sink::*;
