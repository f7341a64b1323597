//! xz streams: pending the implementation choice.
