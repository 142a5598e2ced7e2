//! Flywheel's experiment statistics.
pub mod special;
