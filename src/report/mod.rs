//! Pictures of results: SVG charts drawn from metrics (pure Rust, no plotting dependency).

pub mod plots;
pub mod svg;
