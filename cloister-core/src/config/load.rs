//! Loading: the environment provider and readable load errors.

use figment::error::Kind;
use figment::providers::Env;
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::{quoted, ENV_SOURCE, FIELDS, TEXT_FIELDS};

/// The `CLOISTER_<FIELD>` variables of known fields, as a figment provider.
/// Text fields are taken as written (trimmed); other values are parsed as
/// figment's `Env` parses them, so `[a, b]` is a list.
pub(super) struct EnvVars;

impl Provider for EnvVars {
    fn metadata(&self) -> Metadata {
        let var =
            |_: &Profile, keys: &[&str]| format!("CLOISTER_{}", keys.join("_").to_uppercase());
        Metadata::named(ENV_SOURCE).interpolater(var)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let names = FIELDS.map(|(name, _)| name);
        let dict = Env::prefixed("CLOISTER_")
            .only(&names)
            .iter()
            .filter(|(_, raw)| !raw.trim().is_empty())
            .map(|(key, raw)| {
                let value = if TEXT_FIELDS.contains(&key.as_str()) {
                    Value::from(raw.trim().to_string())
                } else {
                    let Ok(value) = raw.parse::<Value>();
                    value
                };
                (key.to_string(), value)
            })
            .collect();
        Ok(Profile::Default.collect(dict))
    }
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
    match (&error.kind, field) {
        (Kind::UnknownField(key, _), _) => {
            let known: Vec<String> = FIELDS.iter().map(|(name, _)| format!("`{name}`")).collect();
            let known = known.join(", ");
            format!("unknown key `{key}` in {origin}: the keys are {known}")
        }
        (kind, Some((name, allowed))) => {
            let value = figment.find_value(name).map_or("?".into(), |v| render(&v));
            let why = match kind {
                Kind::Message(reason) => reason.clone(),
                _ => format!("expected {allowed}"),
            };
            format!("invalid `{name}` = {value} in {origin}: {why}")
        }
        (kind, None) => format!("cannot load {origin}: {}", kind.to_string().trim_end()),
    }
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
