//! Loading: the environment provider and readable load errors.
//!
//! `CLOISTER_` is cloister's namespace: every variable in it is a config
//! field (`CLOISTER_<FIELD>`) or one of the [`TOOL_VARIABLES`]; any other is
//! refused like an unknown key in a file, so a misspelt variable is not
//! silently ignored. A variable set but empty is refused too: it is most often
//! a template whose value is missing, and taking the default instead would
//! run the node with, say, the well-known default cookie.

use figment::error::Kind;
use figment::providers::Env;
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use std::path::Path;

use figment::providers::{Format, Serialized, Toml};

use super::{listen, quorum, quoted, tls, Config, ConfigError, DURATION, NAME_PART, SENTRY};

/// The `CLOISTER_*` variables that are not config fields but belong to the
/// project's own tools; loading ignores them. `CLOISTER_DOCKER_TESTS` (the
/// Docker tests), `CLOISTER_PROFILE` and `CLOISTER_IMAGE` (`docker/build.sh`),
/// `CLOISTER_BENCH_BUILD`, `CLOISTER_BENCH_SCENARIOS` and `CLOISTER_BENCH_OUT`
/// (`docker/bench.sh`), `CLOISTER_UNDER_HARNESS` and `CLOISTER_HARNESS_VERBOSE`
/// (the `LocalCluster` test harness), `CLOISTER_METRICS_PARSER` (the
/// management test), `CLOISTER_HEALTH_ADDR` (`cloister-node health`),
/// `CLOISTER_K8S_VALIDATE` (the Kubernetes manifests' test),
/// `CLOISTER_LOG_FORMAT` (the example binaries' log on stderr: `text` or
/// `json`) and `CLOISTER_BROWSER_TESTS` (the status page's headless-browser
/// test).
pub const TOOL_VARIABLES: [&str; 13] = [
    "CLOISTER_DOCKER_TESTS",
    "CLOISTER_PROFILE",
    "CLOISTER_IMAGE",
    "CLOISTER_BENCH_BUILD",
    "CLOISTER_BENCH_SCENARIOS",
    "CLOISTER_BENCH_OUT",
    "CLOISTER_UNDER_HARNESS",
    "CLOISTER_HARNESS_VERBOSE",
    "CLOISTER_METRICS_PARSER",
    "CLOISTER_HEALTH_ADDR",
    "CLOISTER_K8S_VALIDATE",
    "CLOISTER_LOG_FORMAT",
    "CLOISTER_BROWSER_TESTS",
];

/// The reason given for a variable set to nothing but blanks.
const SET_BUT_EMPTY: &str = "set but empty";

/// The `CLOISTER_<FIELD>` variables, as a figment provider. Text fields are
/// taken as written (trimmed); other values are parsed as figment's `Env`
/// parses them, so `[a, b]` is a list. An empty or unknown variable is an
/// error naming it (every one found, in name order).
pub(super) struct EnvVars;

/// An error about variable `CLOISTER_<key>`, described by [`describe`].
/// figment keeps the metadata of the first error of a chain only, so
/// `describe` knows these by their kind: an unknown field with no list of
/// expected ones (serde always gives one), or [`SET_BUT_EMPTY`].
fn env_error(key: &str, kind: Kind) -> figment::Error {
    let mut error = figment::Error::from(kind);
    error.path = vec![key.to_string()];
    error
}

impl Provider for EnvVars {
    fn metadata(&self) -> Metadata {
        let var =
            |_: &Profile, keys: &[&str]| format!("CLOISTER_{}", keys.join("_").to_uppercase());
        Metadata::named(ENV_SOURCE).interpolater(var)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut vars: Vec<(String, String)> = Env::prefixed("CLOISTER_")
            .iter()
            .map(|(key, raw)| (key.as_str().to_ascii_lowercase(), raw))
            .collect();
        // Last name first: figment lists a chain of errors newest first, so
        // they read in name order.
        vars.sort_by(|a, b| b.cmp(a));
        let mut dict = Dict::new();
        let mut errors: Option<figment::Error> = None;
        for (key, raw) in vars {
            let error = if !FIELDS.iter().any(|(name, _)| *name == key) {
                let var = format!("CLOISTER_{}", key.to_ascii_uppercase());
                if TOOL_VARIABLES.contains(&var.as_str()) {
                    continue;
                }
                env_error(&key, Kind::UnknownField(key.clone(), &[]))
            } else if raw.trim().is_empty() {
                env_error(&key, Kind::Message(SET_BUT_EMPTY.into()))
            } else {
                let value = if TEXT_FIELDS.contains(&key.as_str()) {
                    Value::from(raw.trim().to_string())
                } else {
                    let Ok(value) = raw.parse::<Value>();
                    value
                };
                dict.insert(key, value);
                continue;
            };
            errors = Some(match errors {
                Some(previous) => previous.chain(error),
                None => error,
            });
        }
        match errors {
            Some(errors) => Err(errors),
            None => Ok(Profile::Default.collect(dict)),
        }
    }
}

/// The candidate closest to `typed`, if any is close enough to be what was
/// meant. strsim's Jaro similarity above 0.7, the measure and threshold clap
/// uses to suggest a misspelt flag, rather than a hand-written distance.
fn nearest<'a>(typed: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let typed = typed.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|candidate| {
            (
                strsim::jaro(&typed, &candidate.to_ascii_lowercase()),
                candidate,
            )
        })
        .filter(|(similarity, _)| *similarity > 0.7)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}

/// `` (did you mean `x`?)``, or nothing.
fn did_you_mean(suggestion: Option<&str>) -> String {
    suggestion.map_or_else(String::new, |name| format!(" (did you mean `{name}`?)"))
}

/// One figment error as a sentence naming the key, the value and the source.
pub(super) fn describe(error: &figment::Error, figment: &Figment) -> String {
    let origin = match &error.metadata {
        Some(md) if md.name == ENV_SOURCE => {
            let var = md.interpolate(&Profile::Default, error.path.get(..1).unwrap_or_default());
            format!("{ENV_SOURCE} `{var}`")
        }
        Some(md) => match md.source.as_ref().and_then(|source| source.file_path()) {
            Some(path) => format!("{} `{}`", md.name, path.display()),
            None => md.name.to_string(),
        },
        None => "the configuration".to_string(),
    };
    let key = error.path.first();
    let field = key.and_then(|key| FIELDS.iter().find(|(name, _)| name == key));
    let names = FIELDS.iter().map(|(name, _)| *name);
    match (&error.kind, field) {
        (Kind::UnknownField(key, []), _) => unknown_variable(key),
        (Kind::UnknownField(key, _), _) => {
            let hint = did_you_mean(nearest(key, names.clone()));
            let known: Vec<String> = names.map(|name| format!("`{name}`")).collect();
            let known = known.join(", ");
            format!("unknown key `{key}` in {origin}{hint}: the keys are {known}")
        }
        (Kind::Message(reason), Some((name, allowed))) if reason == SET_BUT_EMPTY => {
            let var = format!("CLOISTER_{}", name.to_ascii_uppercase());
            format!(
                "{ENV_SOURCE} `{var}` is set but empty (a template whose value is missing?): unset it \
                 to take the default, or give `{name}` {allowed}"
            )
        }
        (kind, Some((name, allowed))) => {
            let value = figment.find_value(name).map_or("?".into(), |v| render(&v));
            let why = match kind {
                // A parser's own words ("invalid socket address syntax")
                // do not say what would do; the allowed form does.
                Kind::Message(reason) if !reason.contains(allowed) => {
                    format!("{reason}; expected {allowed}")
                }
                Kind::Message(reason) => reason.clone(),
                _ => format!("expected {allowed}"),
            };
            format!("invalid `{name}` = {value} in {origin}: {why}")
        }
        (kind, None) => format!("cannot load {origin}: {}", kind.to_string().trim_end()),
    }
}

/// An unknown `CLOISTER_*` variable, with the nearest valid one and the list.
fn unknown_variable(key: &str) -> String {
    let var = |name: &str| format!("CLOISTER_{}", name.to_ascii_uppercase());
    let fields = FIELDS.map(|(name, _)| var(name));
    // Compared without the prefix, which every candidate shares.
    let tools = TOOL_VARIABLES.map(|tool| &tool["CLOISTER_".len()..]);
    let names = FIELDS.iter().map(|(name, _)| *name).chain(tools);
    let hint = did_you_mean(nearest(key, names).map(var).as_deref());
    let list = |vars: &[&str]| {
        let vars: Vec<String> = vars.iter().map(|var| format!("`{var}`")).collect();
        vars.join(", ")
    };
    let fields = list(&fields.each_ref().map(String::as_str));
    format!(
        "unknown variable `{}` in the environment{hint}: the `CLOISTER_` variables are \
         the config keys {fields}, and the project's own {}",
        var(key),
        list(&TOOL_VARIABLES)
    )
}

/// A value as it would be written in TOML.
fn render(value: &Value) -> String {
    use figment::error::Actual;
    match value {
        Value::String(_, text) => quoted(text),
        Value::Array(_, items) => {
            let items: Vec<String> = items.iter().map(render).collect();
            format!("[{}]", items.join(", "))
        }
        other => match other.to_actual() {
            Actual::Unsigned(n) => n.to_string(),
            Actual::Signed(n) => n.to_string(),
            Actual::Float(n) => n.to_string(),
            Actual::Bool(b) => b.to_string(),
            actual => actual.to_string(),
        },
    }
}

/// Every field with what it accepts: the keys read from `CLOISTER_*` and the
/// explanation in load errors. A unit test keeps it in step with `Config`.
const FIELDS: [(&str, &str); 32] = [
    ("app", NAME_PART),
    ("node_name", NAME_PART),
    ("sentry", SENTRY),
    ("consensus", "a whole number, at least 1 (this node counts)"),
    ("quorum", quorum::QUORUM),
    ("expected_size", "a whole number, at least 1"),
    ("tie_breaker", quorum::TIE_BREAKER),
    ("stable_after", DURATION),
    ("listen_port", "a TCP port from 0 to 65535 (0 picks one)"),
    ("listen_addr", listen::LISTEN_ADDR),
    ("advertised_host", "an IP address or a DNS name"),
    ("cookie", "a non-empty string"),
    ("discovery_tick", DURATION),
    ("dial_backoff_min", DURATION),
    ("dial_backoff_max", DURATION),
    ("dial_backoff_jitter", "a number from 0.0 to 1.0"),
    ("dial_timeout", DURATION),
    ("session_grace", DURATION),
    ("heartbeat_interval", DURATION),
    ("heartbeat_timeout", DURATION),
    ("monitors", "a whole number, at least 1"),
    ("startup_deadline", DURATION),
    ("drain_timeout", DURATION),
    ("ring_vnodes", "a whole number from 1 to 4096"),
    (
        "ring",
        "`builtin` (cloister keeps the ring) or `external` (the application keeps its own)",
    ),
    (
        "sessions",
        "`full` (a session with every node) or `bounded` (with a bounded number of them)",
    ),
    (
        "management_addr",
        "an IP address and port such as `0.0.0.0:9100` or `[::1]:9100`",
    ),
    (tls::TLS_FIELDS[0], tls::TLS_PATH),
    (tls::TLS_FIELDS[1], tls::TLS_PATH),
    (tls::TLS_FIELDS[2], tls::TLS_PATH),
    ("tls_reload_interval", tls::RELOAD_INTERVAL),
    (
        "tls_check_names",
        "`true` or `false` (needs `tls_cert`, `tls_key` and `tls_ca`)",
    ),
];

/// Fields whose environment values are text whatever they look like: figment's
/// `Env` would read a cookie `0123` as the number 123.
const TEXT_FIELDS: [&str; 9] = [
    "app",
    "listen_addr",
    "node_name",
    "cookie",
    "advertised_host",
    "management_addr",
    "tls_cert",
    "tls_key",
    "tls_ca",
];
const ENV_SOURCE: &str = "environment variable";

impl Config {
    /// The layers a loaded config comes from, lowest first: the defaults, the
    /// TOML `file` if given (it must exist), then the `CLOISTER_<FIELD>`
    /// environment variables (`CLOISTER_SENTRY`, `CLOISTER_HEARTBEAT_INTERVAL`,
    /// ...). `CLOISTER_` is cloister's namespace: any other variable in it is
    /// an error naming the nearest valid one, except the project's own
    /// [`TOOL_VARIABLES`]; a variable set but empty is an error too, never
    /// the default. Merge more providers on top, then call
    /// [`Config::from_figment`]. The environment is read at extraction.
    ///
    /// ```
    /// use cloister_core::config::{figment::providers::Serialized, Config};
    /// // Flags parsed from the command line outrank the environment.
    /// let figment = Config::figment(None)
    ///     .merge(Serialized::default("sentry", "cloister_test.local"))
    ///     .merge(Serialized::default("consensus", 3));
    /// let config = Config::from_figment(&figment)?;
    /// assert_eq!(config.consensus, 3);
    /// # Ok::<(), cloister_core::ConfigError>(())
    /// ```
    pub fn figment(file: Option<&Path>) -> Figment {
        Config::figment_over(Config::default(), file)
    }

    /// [`Config::figment`] with `base` in place of the defaults, for example
    /// [`Config::for_tests`].
    pub fn figment_over(base: Config, file: Option<&Path>) -> Figment {
        let mut figment = Figment::from(Serialized::defaults(base));
        if let Some(path) = file {
            figment = figment.merge(Toml::file_exact(path));
        }
        figment.merge(EnvVars)
    }

    /// Extracts and validates a config from `figment`. Unknown keys, values
    /// of the wrong type and broken rules are errors naming key and source.
    pub fn from_figment(figment: &Figment) -> Result<Config, ConfigError> {
        let config: Config = figment.extract().map_err(|error| {
            let lines: Vec<String> = error.into_iter().map(|e| describe(&e, figment)).collect();
            let message = lines.join("\n");
            ConfigError::Load { message }
        })?;
        config.validated()
    }

    /// Loads defaults < TOML `file` < environment (see [`Config::figment`]) and
    /// validates the result.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Config::from_figment(&Config::figment(file))
    }

    /// Loads defaults < environment: `CLOISTER_SENTRY`, `CLOISTER_CONSENSUS`, ...
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::load(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_field_table_lists_every_field() {
        let json = serde_json::to_value(Config::default()).expect("serialize");
        let mut keys: Vec<&str> = json
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut names = FIELDS.map(|(name, _)| name).to_vec();
        keys.sort_unstable();
        names.sort_unstable();
        assert_eq!(keys, names);
    }
}
