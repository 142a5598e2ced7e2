//! Event engine (work in progress).
