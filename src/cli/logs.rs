//! One logging setup for every long-running command (operator, standalone,
//! agent run, sender run): the same flags, the same environment variables and
//! the same output, so a log collector reads every mailfleet process alike.
//!
//! Lines go to stderr, as text for people or as tracing-subscriber's JSON (one
//! object per line, the event's fields at the top level) for collectors, behind
//! a filter that `PUT /log-level` can change while the process runs.

use std::io::IsTerminal;

use clap::{Args, ValueEnum};
use tracing_subscriber::prelude::*;
use tracing_subscriber::{reload, EnvFilter};

use crate::serve::LogLevelHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line: timestamp, level, target, message, the
    /// event's fields and the list of open spans.
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// How this process writes its own log lines (to stderr)
    /// [default: json for the operator, text elsewhere].
    #[arg(
        long,
        value_name = "FORMAT",
        env = "MAILFLEET_LOG_FORMAT",
        value_parser = parse_log_format
    )]
    pub log_format: Option<LogFormat>,

    /// Log filter: a level (`info`, `debug`) or directives
    /// (`info,mailfleet::serve=debug`); PUT /log-level changes it while running.
    #[arg(
        long,
        value_name = "FILTER",
        env = "MAILFLEET_LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,

    /// Never colour log lines. Colour is used only when stderr is a terminal;
    /// any non-empty NO_COLOR (https://no-color.org) turns it off too.
    #[arg(
        long,
        env = "NO_COLOR",
        value_name = "ANY",
        num_args = 0..=1,
        default_missing_value = "1",
        value_parser = non_empty_means_yes,
        hide_env_values = true
    )]
    pub no_color: Option<bool>,
}

/// Why logging could not start.
#[derive(Debug, thiserror::Error)]
pub enum LogSetupError {
    #[error("--log-level `{filter}` is not a log filter ({reason}); use a level such as `info` or directives such as `info,mailfleet=debug`")]
    BadFilter { filter: String, reason: String },
    #[error("cannot install the logger: {0}")]
    AlreadyInstalled(String),
}

impl LogArgs {
    /// Installs the process' subscriber and returns the handle that changes
    /// its filter. `default_format` applies when neither the flag nor
    /// MAILFLEET_LOG_FORMAT chose one.
    pub fn init(&self, default_format: LogFormat) -> Result<LogLevelHandle, LogSetupError> {
        let filter = EnvFilter::try_new(&self.log_level).map_err(|e| LogSetupError::BadFilter {
            filter: self.log_level.clone(),
            reason: e.to_string(),
        })?;
        let (filter, handle) = reload::Layer::new(filter);
        let registry = tracing_subscriber::registry().with(filter);
        let installed = match self.log_format.unwrap_or(default_format) {
            LogFormat::Json => registry.with(json_layer(std::io::stderr)).try_init(),
            LogFormat::Text => registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_ansi(self.colour(std::io::stderr().is_terminal()))
                        .with_writer(std::io::stderr),
                )
                .try_init(),
        };
        installed.map_err(|e| LogSetupError::AlreadyInstalled(e.to_string()))?;
        Ok(LogLevelHandle::new(handle, &self.log_level))
    }

    fn colour(&self, on_terminal: bool) -> bool {
        on_terminal && self.no_color != Some(true)
    }
}

/// The JSON line layer: fields flattened beside `message`, spans listed by name.
fn json_layer<S, W>(writer: W) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(true)
        .with_writer(writer)
}

fn parse_log_format(value: &str) -> Result<LogFormat, LogFormatError> {
    match value {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        "postfix" | "json-lines" | "jsonl" => Err(LogFormatError::DeliveryLogFormat {
            value: value.to_string(),
        }),
        other => Err(LogFormatError::Unknown {
            value: other.to_string(),
        }),
    }
}

/// A `--log-format` that is not one of this process' own formats.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LogFormatError {
    #[error("`{value}` is a delivery log's format: the agent reads it with --maillog-format {value}; --log-format is this process' own output (text or json)")]
    DeliveryLogFormat { value: String },
    #[error("`{value}` is not a log format: use text or json")]
    Unknown { value: String },
}

/// NO_COLOR's convention: set to anything but the empty string means no colour.
fn non_empty_means_yes(value: &str) -> Result<bool, std::convert::Infallible> {
    Ok(!value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::Value;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        logs: LogArgs,
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_fields_at_the_top_and_the_spans_by_name() {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(json_layer(move || sink.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("reconcile");
            let _entered = span.enter();
            tracing::info!(pool = "mail/bulk", ips = 8u64, "reconciled");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "reconciled");
        assert_eq!(line["pool"], "mail/bulk");
        assert_eq!(line["ips"], 8);
        assert_eq!(line["spans"][0]["name"], "reconcile");
        assert!(line["timestamp"].is_string(), "{line}");
    }

    #[test]
    fn colour_only_on_a_terminal_and_never_with_no_color() {
        let plain = Cmd::parse_from(["x"]).logs;
        assert!(plain.colour(true));
        assert!(!plain.colour(false));
        let flag = Cmd::parse_from(["x", "--no-color"]).logs;
        assert!(!flag.colour(true));
        let empty = Cmd::parse_from(["x", "--no-color="]).logs;
        assert!(empty.colour(true), "an empty NO_COLOR leaves colour on");
    }

    #[test]
    fn a_delivery_log_format_given_to_log_format_names_the_right_flag() {
        let err = match Cmd::try_parse_from(["x", "--log-format", "json-lines"]) {
            Ok(_) => panic!("json-lines is not an output format"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("--maillog-format json-lines"), "{err}");
        let json = Cmd::parse_from(["x", "--log-format", "json"]).logs;
        assert_eq!(json.log_format, Some(LogFormat::Json));
    }

    #[test]
    fn a_filter_that_does_not_parse_is_refused_with_the_fix() {
        let args = Cmd::parse_from(["x", "--log-level", "info,=[bad"]).logs;
        let err = args.init(LogFormat::Text).unwrap_err().to_string();
        assert!(err.contains("--log-level"), "{err}");
        assert!(err.contains("such as `info`"), "{err}");
    }
}
