//! Logs: `tracing` events from the library, rendered by the CLI as plain lines (a `warning:`
//! prefix where it matters), or as JSON lines for machines (`--log-format json`); `--quiet` keeps
//! only warnings and errors and hides the progress bar. `RUST_LOG` refines the level.

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
