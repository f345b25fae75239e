//! Pictures of results: SVG charts drawn from metrics (pure Rust, no plotting dependency), PNG
//! copies (feature `png`), the HTML page of a run, and a page comparing runs.
//!
//! | file         | what it does                                                           |
//! |--------------|------------------------------------------------------------------------|
//! | `svg.rs`     | line charts: ticks, axes, legend                                       |
//! | `plots.rs`   | a run's plots from its metrics                                         |
//! | `html.rs`    | a run's page; numbers as people read them; escaping                    |
//! | `runs.rs`    | which run directories a path names (a run, an experiment, a sweep)     |
//! | `compare.rs` | the page comparing runs: a chart per metric, what differs, results     |
//! | `completions.rs` | what a run page shows of its held-out completions, first and last  |
//! | `stages.rs`  | an experiment's summary: a row per stage with its headline result      |
//! | `sweep.rs`   | a sweep's summary: its points, the best, loss against each swept value |

pub mod bars;
pub mod compare;
pub mod completions;
pub mod html;
pub mod plots;
pub mod runs;
pub mod stages;
pub mod svg;
pub mod sweep;
