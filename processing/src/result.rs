//! Result buffers of UDFs. The types live in `stemflow_core::result` so that the recorder,
//! the live view and the CLI can use them without depending on the processing engine;
//! they are re-exported here.

pub use stemflow_core::result::*;
