//! Integration tests for `flywheel-capture`, in one binary.

mod malformed;
mod no_panic;
mod perf;
mod posthog;
mod segment;
mod util;
