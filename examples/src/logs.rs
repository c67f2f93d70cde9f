//! The human log on stderr that every example binary writes: plain text for
//! a terminal, or JSON lines for a log aggregator (`CLOISTER_LOG_FORMAT`).
//!
//! The topology events on stdout are JSON lines either way; this module is
//! only about what goes through `tracing`.

use std::ffi::OsString;
use std::fmt;
use std::str::FromStr;

/// The variable that chooses the format of the human log.
pub const LOG_FORMAT_VARIABLE: &str = "CLOISTER_LOG_FORMAT";

/// The format of the human log on stderr, chosen by `CLOISTER_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// `text` (the default): one readable line per event, coloured only on a
    /// terminal.
    #[default]
    Text,
    /// `json`: one JSON object per line, for log aggregators. The event's
    /// fields are at the top level (`timestamp`, `level`, `message`,
    /// `target` and the event's own fields), its span (which carries the
    /// node's name) in `span`, and the spans it runs in, outermost first, in
    /// `spans`.
    Json,
}

impl LogFormat {
    /// The format `CLOISTER_LOG_FORMAT` asks for: [`LogFormat::Text`] when
    /// it is not set; an error when it is set to anything but `text` or
    /// `json` (empty and non-Unicode values included: a template whose value
    /// is missing should not silently give another format).
    pub fn from_env() -> Result<LogFormat, BadLogFormat> {
        Self::from_value(std::env::var_os(LOG_FORMAT_VARIABLE))
    }

    /// The format for the variable's value (`None`: not set).
    fn from_value(value: Option<OsString>) -> Result<LogFormat, BadLogFormat> {
        match value {
            None => Ok(LogFormat::Text),
            Some(value) => match value.into_string() {
                Ok(text) => text.parse(),
                Err(raw) => Err(BadLogFormat {
                    value: raw.to_string_lossy().into_owned(),
                }),
            },
        }
    }
}

impl FromStr for LogFormat {
    type Err = BadLogFormat;

    /// `text` or `json`, surrounding blanks ignored, case-sensitive like
    /// every other value of the `CLOISTER_*` variables.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(BadLogFormat {
                value: text.to_string(),
            }),
        }
    }
}

/// `CLOISTER_LOG_FORMAT` is set to something other than `text` or `json`.
/// Nothing was installed: the program has no log yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLogFormat {
    /// The value as set (lossily decoded if it was not Unicode).
    pub value: String,
}

impl fmt::Display for BadLogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid `{LOG_FORMAT_VARIABLE}` = {:?}: must be `text` (the default) or `json`",
            self.value
        )
    }
}

impl std::error::Error for BadLogFormat {}

/// Logs to stderr in the format `CLOISTER_LOG_FORMAT` asks for, filtered
/// by `RUST_LOG` when set, else by [`cloister_ractor::LOG_FILTER`] (`info`,
/// ractor at `warn`, ractor_cluster at `error`: it writes a warning for
/// every connection that fails its handshake, which cloister counts
/// instead). Text is coloured only on a terminal (a harness's log files
/// stay plain); JSON never is.
///
/// A bad `CLOISTER_LOG_FORMAT` is an error and installs nothing.
pub fn try_init_logs() -> Result<LogFormat, BadLogFormat> {
    use std::io::IsTerminal;
    let format = LogFormat::from_env()?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| cloister_ractor::LOG_FILTER.into());
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(format)
}

/// [`try_init_logs`], as every example binary starts: a bad
/// `CLOISTER_LOG_FORMAT` ends the program with the error on stderr and
/// exit status 2, as the demo node ends on a bad configuration.
pub fn init_logs() {
    if let Err(error) = try_init_logs() {
        let program = std::env::args_os()
            .next()
            .map(std::path::PathBuf::from)
            .and_then(|path| {
                path.file_name()
                    .map(|name| name.to_string_lossy().into_owned())
            })
            .unwrap_or_else(|| "cloister".to_string());
        eprintln!("{program}: bad configuration: {error}");
        std::process::exit(2);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn unset_is_text_and_both_names_parse() {
        assert_eq!(LogFormat::from_value(None), Ok(LogFormat::Text));
        assert_eq!("text".parse(), Ok(LogFormat::Text));
        assert_eq!(" json\n".parse(), Ok(LogFormat::Json));
    }

    #[test]
    fn anything_else_is_refused_with_the_variable_value_and_choices() {
        for value in ["", "JSON", "yaml", "json,text"] {
            let error = value.parse::<LogFormat>().unwrap_err();
            assert_eq!(error.value, value);
            assert_eq!(
                error.to_string(),
                format!(
                    "invalid `CLOISTER_LOG_FORMAT` = {value:?}: must be `text` (the default) \
                     or `json`"
                )
            );
        }
    }

    #[test]
    fn a_value_that_is_not_unicode_is_refused() {
        use std::os::unix::ffi::OsStringExt;
        let value = OsString::from_vec(vec![b'j', 0xff]);
        let error = LogFormat::from_value(Some(value)).unwrap_err();
        assert_eq!(error.value, "j\u{fffd}");
    }
}
