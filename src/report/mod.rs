//! Pictures of results: SVG charts drawn from metrics (pure Rust, no plotting dependency), PNG
//! copies (feature `png`), and the HTML page of a run.

pub mod html;
pub mod plots;
pub mod svg;
