//! Logs: `tracing` events from the library, rendered by the CLI as plain lines (a `warning:`
//! prefix where it matters), or as JSON lines for machines (`--log-format json`); `--quiet` keeps
//! only warnings and errors and hides the progress bar. `RUST_LOG` refines the level.

use std::io::IsTerminal;
use std::sync::OnceLock;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mode {
    pub quiet: bool,
    pub json: bool,
}

static MODE: OnceLock<Mode> = OnceLock::new();

/// How logs are shown (the default before `init`: plain text, not quiet).
pub fn mode() -> Mode {
    MODE.get().copied().unwrap_or_default()
}

/// Install the subscriber once, for the process. `verbose` adds debug events.
pub fn init(quiet: bool, json: bool, verbose: bool) {
    let _ = MODE.set(Mode { quiet, json });
    let level = if quiet {
        "warn"
    } else if verbose {
        "debug"
    } else {
        "info"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(format!("roux={level}")));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().with_current_span(false).try_init() } else { builder.event_format(Plain).try_init() };
}

/// The message alone, as roux always printed, with `warning:` / `error:` where it matters.
struct Plain;

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> std::fmt::Result {
        match *event.metadata().level() {
            Level::WARN => write!(w, "warning: ")?,
            Level::ERROR => write!(w, "error: ")?,
            _ => {}
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// One progress report of a loop.
pub struct ProgressLine<'a> {
    pub label: &'a str,
    pub step: u64,
    pub total: u64,
    pub eta: String,
    pub body: &'a str,
}

/// Draw a progress line on stderr: on a terminal a bar redrawn in place every step (kept when
/// `persist`); in a log file only the `periodic` ones, one per line; in JSON mode an event per
/// periodic report rather than a bar.
pub fn progress(p: &ProgressLine, periodic: bool, persist: bool) {
    static TTY: OnceLock<bool> = OnceLock::new();
    if mode().json {
        if periodic {
            tracing::info!(target: "roux::progress", stage = %p.label, step = p.step, total = p.total, eta = %p.eta, "{}", p.body);
        }
        return;
    }
    let bar_w = 24;
    let filled = (((p.step as f64 / p.total.max(1) as f64) * bar_w as f64) as usize).min(bar_w);
    let bar = format!("{}{}", "█".repeat(filled), "░".repeat(bar_w - filled));
    let line = format!("{} {bar} {}/{} {} ETA {}", p.label, p.step, p.total, p.body, p.eta);
    if *TTY.get_or_init(|| std::io::stderr().is_terminal()) {
        eprint!("\r\x1b[2K{line}");
        if persist {
            eprintln!();
        }
    } else if periodic {
        eprintln!("{line}");
    }
}
