//! Examples and the demo node for cloister.

pub mod cluster;
