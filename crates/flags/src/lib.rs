//! Flywheel flag engine (work in progress).
