//! Telemetry: structured logs to stderr (stdout is the log action's and `dlq inspect`'s
//! output), as text for people or JSON for machines, filtered by `INPUTBOT_LOG` (default
//! `info`). Metrics are in [`crate::metrics`].

/// How log lines are written.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    /// Compact text, coloured on a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber.
pub fn init(format: LogFormat) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_env("INPUTBOT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr; stdout is the log action's (and `dlq inspect`'s) output.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    match format {
        LogFormat::Text => fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .with_target(false)
            .compact()
            .init(),
        LogFormat::Json => fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .json()
            .flatten_event(true)
            .init(),
    }
}
