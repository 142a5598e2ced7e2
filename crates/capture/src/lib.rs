//! Capture decoding (work in progress).
