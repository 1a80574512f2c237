//! `gymforge bench`: benchmarks that measure against bounds taken in the same run and print
//! the ratios.

pub mod llm;
