//! Pictures of results: SVG charts drawn from metrics (pure Rust, no plotting dependency), PNG
//! copies (feature `png`), the HTML page of a run, and a page comparing runs.

pub mod compare;
pub mod html;
pub mod plots;
pub mod runs;
pub mod stages;
pub mod svg;
pub mod sweep;
