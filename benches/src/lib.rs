//! Shared frame and table builders for the engine benchmarks.
