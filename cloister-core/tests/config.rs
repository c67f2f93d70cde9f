//! Loading and validating `Config`: both configurations of the Elixir original,
//! the layering defaults < file < environment, and an error naming the field and
//! the value for every bad input.
//!
//! figment's `Jail` needs figment's `test` feature, which the workspace does not
//! enable, so tests that touch `CLOISTER_*` variables hold [`EnvGuard`] instead:
//! one at a time, with every `CLOISTER_*` variable cleared and restored after.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use cloister_core::config::figment::providers::{Format, Serialized, Toml};
use cloister_core::config::figment::Figment;
use cloister_core::{Config, ConfigError, Host, Sentry};
use proptest::prelude::*;

const TWO_NODES: &str = r#"sentry = ["node1@127.0.0.1:4001", "node2@127.0.0.1:4002"]"#;

/// Defaults < `text`, without the environment.
fn from_toml(text: &str) -> Result<Config, ConfigError> {
    let figment = Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text));
    Config::from_figment(&figment)
}

fn message(result: Result<Config, ConfigError>) -> String {
    match result {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(error) => error.to_string(),
    }
}

static ENV: Mutex<()> = Mutex::new(());

/// The process environment for one test: exclusive, with only the given
/// `CLOISTER_*` variables set; the previous ones come back on drop.
struct EnvGuard {
    saved: Vec<(OsString, OsString)>,
    _lock: MutexGuard<'static, ()>,
}

fn is_ours(key: &OsString) -> bool {
    key.to_string_lossy()
        .to_ascii_uppercase()
        .starts_with("CLOISTER_")
}

impl EnvGuard {
    fn set(vars: &[(&str, &str)]) -> EnvGuard {
        let lock = ENV.lock().unwrap_or_else(PoisonError::into_inner);
        let saved: Vec<_> = std::env::vars_os()
            .filter(|(key, _)| is_ours(key))
            .collect();
        for (key, _) in &saved {
            std::env::remove_var(key);
        }
        for (key, value) in vars {
            std::env::set_var(key, value);
        }
        EnvGuard { saved, _lock: lock }
    }
}

impl Drop for EnvGuard {
    fn drop(&mut self) {
        for (key, _) in std::env::vars_os().filter(|(key, _)| is_ours(key)) {
            std::env::remove_var(key);
        }
        for (key, value) in &self.saved {
            std::env::set_var(key, value);
        }
    }
}

/// A TOML file under the temp dir, removed on drop.
struct TempToml(PathBuf);

impl TempToml {
    fn new(name: &str, text: &str) -> TempToml {
        let file = format!("cloister-config-{}-{name}.toml", std::process::id());
        let path = std::env::temp_dir().join(file);
        std::fs::write(&path, text).expect("write the temp config");
        TempToml(path)
    }
}

impl Drop for TempToml {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn the_elixir_node_list_configuration_loads() {
    // config :cloister, otp_app: :cloister_test, consensus: 1,
    //   sentry: [:"node1@127.0.0.1", :"node2@127.0.0.1"]
    let config = from_toml(&format!(
        "app = \"cloister_test\"\n{TWO_NODES}\nconsensus = 1"
    ))
    .expect("the node-list configuration");
    assert_eq!(config.app, "cloister_test");
    assert_eq!(config.consensus, 1);
    let nodes = config.sentry.nodes().expect("a list means nodes");
    let names: Vec<String> = nodes.iter().map(|node| node.name.to_string()).collect();
    assert_eq!(names, ["node1@127.0.0.1", "node2@127.0.0.1"]);
    assert_eq!(nodes[1].addr.port(), 4002);
    assert_eq!(config.sentry.service(), None);
}

#[test]
fn the_elixir_service_configuration_loads() {
    // config :cloister, sentry: :"cloister_test.local", consensus: 3
    let config = from_toml("sentry = \"cloister_test.local\"\nconsensus = 3")
        .expect("the service configuration");
    assert_eq!(config.sentry, Sentry::Service("cloister_test.local".into()));
    assert_eq!(config.consensus, 3);
    assert!(!config.sentry.is_srv());
    assert_eq!(config.app, "cloister");
}

#[test]
fn a_service_starting_with_underscore_is_srv() {
    let config = from_toml(r#"sentry = "_node._tcp.cloister.default.svc.cluster.local""#)
        .expect("an SRV name");
    assert!(config.sentry.is_srv());
}

#[test]
fn a_comma_separated_string_with_at_signs_is_a_node_list() {
    let joined = from_toml(r#"sentry = "node1@127.0.0.1:4001, node2@127.0.0.1:4002""#);
    assert_eq!(joined.expect("joined"), from_toml(TWO_NODES).expect("list"));
}

#[test]
fn durations_are_humantime_text() {
    let config = from_toml(&format!(
        "{TWO_NODES}\nheartbeat_interval = \"250ms\"\nheartbeat_timeout = \"1s 500ms\"\n\
         startup_deadline = \"2m\"\ndrain_timeout = \"12s\""
    ))
    .expect("durations");
    assert_eq!(config.drain_timeout, Duration::from_secs(12));
    assert_eq!(config.heartbeat_interval, Duration::from_millis(250));
    assert_eq!(config.heartbeat_timeout, Duration::from_millis(1500));
    assert_eq!(config.startup_deadline, Duration::from_secs(120));
}

#[test]
fn the_environment_outranks_the_file_which_outranks_the_defaults() {
    let file = TempToml::new(
        "layers",
        &format!("{TWO_NODES}\nconsensus = 2\nheartbeat_interval = \"200ms\""),
    );
    let _env = EnvGuard::set(&[("CLOISTER_CONSENSUS", "3")]);
    let config = Config::load(Some(&file.0)).expect("layered config");
    assert_eq!(config.consensus, 3, "from the environment");
    assert_eq!(
        config.heartbeat_interval,
        Duration::from_millis(200),
        "from the file"
    );
    assert_eq!(config.dial_timeout, Duration::from_secs(1), "the default");
    assert_eq!(
        config.sentry.nodes().map(<[_]>::len),
        Some(2),
        "from the file"
    );
}

#[test]
fn the_environment_alone_gives_both_elixir_configurations() {
    let service = [
        ("CLOISTER_SENTRY", "cloister_test.local"),
        ("CLOISTER_CONSENSUS", "3"),
    ];
    let config = {
        let _env = EnvGuard::set(&service);
        Config::from_env().expect("service from env")
    };
    assert_eq!(config.sentry.service(), Some("cloister_test.local"));
    assert_eq!(config.consensus, 3);

    let joined = "node1@127.0.0.1:4001,node2@127.0.0.1:4002";
    let bracketed = "[node1@127.0.0.1:4001, node2@127.0.0.1:4002]";
    for sentry in [joined, bracketed] {
        let vars = [
            ("CLOISTER_APP", "cloister_test"),
            ("CLOISTER_SENTRY", sentry),
        ];
        let _env = EnvGuard::set(&vars);
        let config = Config::from_env().expect(sentry);
        assert_eq!(config.app, "cloister_test");
        assert_eq!(
            config.sentry,
            from_toml(TWO_NODES).expect("list").sentry,
            "{sentry}"
        );
    }
}

#[test]
fn the_projects_own_tool_variables_are_not_config_and_are_ignored() {
    let mut vars = vec![("CLOISTER_SENTRY", "cloister_test.local")];
    vars.extend(cloister_core::config::TOOL_VARIABLES.map(|var| (var, "1")));
    let _env = EnvGuard::set(&vars);
    assert!(Config::from_env().is_ok());
    // Named here as the scripts and tests spell them, so that renaming one
    // there without the list fails here.
    for var in [
        "CLOISTER_DOCKER_TESTS",
        "CLOISTER_PROFILE",
        "CLOISTER_IMAGE",
        "CLOISTER_UNDER_HARNESS",
        "CLOISTER_HARNESS_VERBOSE",
        "CLOISTER_LOG_FORMAT",
        "CLOISTER_K8S_VALIDATE",
        "CLOISTER_BROWSER_TESTS",
    ] {
        assert!(
            cloister_core::config::TOOL_VARIABLES.contains(&var),
            "{var}"
        );
    }
}

#[test]
fn an_unknown_variable_is_refused_with_the_nearest_name() {
    for (var, nearest) in [
        (
            "CLOISTER_HEARTBEAT_TIMOUT",
            Some("CLOISTER_HEARTBEAT_TIMEOUT"),
        ),
        ("CLOISTER_SENTRIES", Some("CLOISTER_SENTRY")),
        ("cloister_cookei", Some("CLOISTER_COOKIE")),
        ("CLOISTER_DOCKER_TEST", Some("CLOISTER_DOCKER_TESTS")),
        ("CLOISTER_LOG", Some("CLOISTER_LOG_FORMAT")),
        ("CLOISTER_VERBOSE", None),
    ] {
        let _env = EnvGuard::set(&[("CLOISTER_SENTRY", "cloister_test.local"), (var, "2s")]);
        let text = message(Config::from_env());
        let upper = var.to_ascii_uppercase();
        assert!(
            text.contains(&format!("unknown variable `{upper}`")),
            "{text}"
        );
        assert!(
            text.contains("CLOISTER_STARTUP_DEADLINE"),
            "lists the variables: {text}"
        );
        match nearest {
            Some(nearest) => assert!(
                text.contains(&format!("did you mean `{nearest}`?")),
                "{var}: {text}"
            ),
            None => assert!(!text.contains("did you mean"), "{var}: {text}"),
        }
    }
}

#[test]
fn an_unknown_file_key_is_refused_with_the_nearest_key() {
    let text = message(from_toml(&format!(
        "{TWO_NODES}\nheartbeat_timout = \"2s\""
    )));
    assert!(text.contains("unknown key `heartbeat_timout`"), "{text}");
    assert!(text.contains("did you mean `heartbeat_timeout`?"), "{text}");
}

#[test]
fn a_variable_set_but_empty_is_an_error_naming_it() {
    // `CLOISTER_COOKIE=${SECRET}` with the secret missing must not fall back
    // to the well-known default cookie.
    for (var, value) in [
        ("CLOISTER_COOKIE", ""),
        ("CLOISTER_APP", ""),
        ("CLOISTER_NODE_NAME", " "),
        ("CLOISTER_CONSENSUS", ""),
        ("CLOISTER_HEARTBEAT_TIMEOUT", "\t"),
    ] {
        let _env = EnvGuard::set(&[("CLOISTER_SENTRY", "cloister_test.local"), (var, value)]);
        let text = message(Config::from_env());
        assert!(
            text.contains(&format!("`{var}` is set but empty")),
            "{var}: {text}"
        );
    }
    let _env = EnvGuard::set(&[("CLOISTER_SENTRY", ""), ("CLOISTER_COOKIE", "")]);
    let text = message(Config::from_env());
    for var in ["`CLOISTER_SENTRY`", "`CLOISTER_COOKIE`"] {
        assert!(text.contains(var), "every empty variable is named: {text}");
    }
}

#[test]
fn a_duration_past_its_maximum_is_refused_not_a_panic_later() {
    // 300000000000 years overflows `Instant + Duration`: on main the node
    // took it and panicked when it began waiting for consensus.
    let _env = EnvGuard::set(&[
        ("CLOISTER_SENTRY", "cloister_test.local"),
        ("CLOISTER_STARTUP_DEADLINE", "300000000000y"),
    ]);
    let text = message(Config::from_env());
    assert!(text.contains("`startup_deadline`"), "{text}");
    assert!(text.contains("at most 1year"), "{text}");
    drop(_env);

    let huge = format!("\"{}s\"", u64::MAX);
    for (field, value, most) in [
        ("heartbeat_timeout", huge.as_str(), "1day"),
        ("heartbeat_interval", "\"25h\"", "1day"),
        ("discovery_tick", huge.as_str(), "1day"),
        ("dial_backoff_min", huge.as_str(), "1day"),
        ("dial_backoff_max", "\"2days\"", "1day"),
        ("dial_timeout", huge.as_str(), "1day"),
        ("session_grace", huge.as_str(), "1day"),
        ("stable_after", huge.as_str(), "1day"),
        ("startup_deadline", "\"366days\"", "1year"),
    ] {
        let figment = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(TWO_NODES))
            .merge(Toml::string(&format!("{field} = {value}")));
        let text = message(Config::from_figment(&figment));
        assert!(
            text.contains(&format!("invalid `{field}`"))
                && text.contains(&format!("at most {most}")),
            "{field} = {value}: {text}"
        );
    }
    let longest = Config::service("app", "cloister_test.local");
    let longest = Config {
        heartbeat_interval: Config::MAX_TIMER / 2,
        heartbeat_timeout: Config::MAX_TIMER,
        dial_backoff_max: Config::MAX_TIMER,
        startup_deadline: Config::MAX_STARTUP_DEADLINE,
        ..longest
    };
    assert!(
        longest.validated().is_ok(),
        "the maxima themselves are allowed"
    );
}

#[test]
fn a_node_name_listed_twice_is_refused() {
    let twice =
        r#"sentry = ["node1@127.0.0.1:4001", "node2@127.0.0.1:4002", "node1@127.0.0.1:4003"]"#;
    let text = message(from_toml(twice));
    assert!(text.contains("`sentry`"), "{text}");
    assert!(text.contains("`node1@127.0.0.1` twice"), "{text}");
    let joined = "node1@127.0.0.1:4001,node1@127.0.0.1:4001".parse::<Sentry>();
    let text = joined.expect_err("listed twice").to_string();
    assert!(text.contains("`node1@127.0.0.1` twice"), "{text}");
    let error = Config::nodes(
        "app",
        ["a@127.0.0.1:4001", "b@127.0.0.1:4002", "a@127.0.0.1:4001"],
    );
    assert!(error.is_err(), "also in code");
}

#[test]
fn a_bad_variable_is_named_with_its_value() {
    for (var, value, field) in [
        ("CLOISTER_LISTEN_PORT", "70000", "listen_port"),
        ("CLOISTER_HEARTBEAT_INTERVAL", "soon", "heartbeat_interval"),
        ("CLOISTER_SENTRY", "node1@", "sentry"),
        ("CLOISTER_CONSENSUS", "-1", "consensus"),
    ] {
        let _env = EnvGuard::set(&[("CLOISTER_SENTRY", "cloister_test.local"), (var, value)]);
        let text = message(Config::from_env());
        for part in [var, value, field] {
            assert!(text.contains(part), "`{part}` missing from: {text}");
        }
    }
}

#[test]
fn file_errors_name_the_key_the_value_and_the_file() {
    let _env = EnvGuard::set(&[]);
    for (name, text, parts) in [
        ("port", "listen_port = 70000", ["listen_port", "70000"]),
        (
            "unknown",
            "sentry_list = []",
            ["sentry_list", "unknown key"],
        ),
        (
            "entry",
            r#"sentry = ["node1@127.0.0.1:4001", "node1@"]"#,
            ["sentry", "\"node1@\""],
        ),
        ("type", "consensus = \"three\"", ["consensus", "\"three\""]),
        ("syntax", "consensus = [", ["cannot load", "TOML"]),
    ] {
        let file = TempToml::new(name, text);
        let error = message(Config::load(Some(&file.0)));
        let path = file.0.display().to_string();
        for part in parts.iter().copied().chain([path.as_str()]) {
            assert!(
                error.contains(part),
                "{name}: `{part}` missing from: {error}"
            );
        }
    }
    let missing = std::env::temp_dir().join("cloister-config-no-such-file.toml");
    let error = message(Config::load(Some(&missing)));
    assert!(
        error.contains("cloister-config-no-such-file.toml"),
        "{error}"
    );
}

#[test]
fn every_broken_rule_names_the_field_and_the_value() {
    let cases: &[(&str, &str, &str)] = &[
        ("consensus = 0", "consensus", "= 0"),
        ("consensus = 4", "consensus", "= 4"),
        ("sentry = []", "sentry", "[]"),
        (r#"sentry = "node1@""#, "sentry", "node1@"),
        (r#"sentry = "not a dns name""#, "sentry", "not a dns name"),
        (r#"sentry = "127.0.0.1""#, "sentry", "127.0.0.1"),
        (
            r#"heartbeat_timeout = "300ms""#,
            "heartbeat_timeout",
            "300ms",
        ),
        (r#"heartbeat_interval = "0s""#, "heartbeat_interval", "0s"),
        (r#"dial_backoff_min = "3s""#, "dial_backoff_max", "2s"),
        (r#"dial_backoff_min = "0s""#, "dial_backoff_min", "0s"),
        ("dial_backoff_jitter = 1.5", "dial_backoff_jitter", "1.5"),
        ("dial_backoff_jitter = -0.1", "dial_backoff_jitter", "-0.1"),
        ("ring_vnodes = 0", "ring_vnodes", "= 0"),
        ("ring_vnodes = 5000", "ring_vnodes", "5000"),
        (r#"cookie = """#, "cookie", r#""""#),
        (r#"app = "my app""#, "app", "my app"),
        (r#"node_name = "a@b""#, "node_name", "a@b"),
        (
            r#"advertised_host = "0.0.0.0""#,
            "advertised_host",
            "0.0.0.0",
        ),
        (
            r#"advertised_host = "bad host""#,
            "advertised_host",
            "bad host",
        ),
        (r#"listen_addr = "224.0.0.1""#, "listen_addr", "224.0.0.1"),
        (r#"listen_addr = "localhost""#, "listen_addr", "localhost"),
        (
            r#"discovery_tick = "3 lightyears""#,
            "discovery_tick",
            "3 lightyears",
        ),
        (r#"sessions = "some""#, "sessions", "some"),
        (
            "sessions = \"bounded\"\nquorum = \"majority\"",
            "sessions",
            "quorum",
        ),
    ];
    for (line, field, value) in cases {
        // TOML refuses a key twice, so the bad line is a layer over the base.
        let figment = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(TWO_NODES))
            .merge(Toml::string(line));
        let text = message(Config::from_figment(&figment));
        assert!(
            text.contains(&format!("`{field}`")),
            "{line}: no field in: {text}"
        );
        assert!(text.contains(value), "{line}: no value in: {text}");
    }
}

#[test]
fn invalid_values_read_as_one_sentence() {
    let config = Config::service("app", "cloister_test.local").with_consensus(0);
    let error = config.validate().expect_err("consensus 0");
    assert_eq!(
        error.to_string(),
        "invalid `consensus` = 0: must be at least 1 (this node counts)"
    );
    assert!(matches!(
        error,
        ConfigError::Invalid {
            field: "consensus",
            ..
        }
    ));
}

#[test]
fn a_static_list_may_omit_this_node_but_consensus_must_be_reachable() {
    let two = Config::nodes("app", ["n1@127.0.0.1:4001", "n2@127.0.0.1:4002"]).expect("two");
    assert!(
        two.clone().with_consensus(3).validated().is_ok(),
        "two listed plus self"
    );
    let error = two
        .with_consensus(4)
        .validated()
        .expect_err("four of three");
    assert!(error.to_string().contains("can never be met"), "{error}");
}

#[test]
fn a_bad_entry_in_code_is_named() {
    let error = Config::nodes("app", ["node1@127.0.0.1:4001", "node1@"]).expect_err("no host");
    let text = error.to_string();
    assert!(
        text.contains("`sentry`") && text.contains("\"node1@\""),
        "{text}"
    );
}

#[test]
fn the_defaults_are_valid_except_for_the_missing_sentry() {
    let error = Config::default().validate().expect_err("no sentry");
    assert!(
        matches!(
            error,
            ConfigError::Invalid {
                field: "sentry",
                ..
            }
        ),
        "{error}"
    );
    let sentry: Sentry = "cloister.local".parse().expect("service");
    assert!(Config::default().with_sentry(sentry).validate().is_ok());
}

#[test]
fn the_test_preset_is_valid_given_a_sentry_and_faster_than_the_defaults() {
    let nodes = Sentry::parse_nodes(["n1@127.0.0.1:4001"]).expect("entry");
    let tests = Config::for_tests()
        .with_sentry(nodes)
        .validated()
        .expect("for_tests");
    let defaults = Config::default();
    assert!(tests.heartbeat_timeout < defaults.heartbeat_timeout);
    assert!(tests.discovery_tick < defaults.discovery_tick);
    assert!(tests.startup_deadline < defaults.startup_deadline);
    assert_eq!(tests.heartbeat_interval, Duration::from_millis(100));
}

#[test]
fn the_node_name_is_node_name_or_app_at_the_host() {
    let host: Host = "10.0.0.5".parse().expect("host");
    let config = Config::service("cloister_test", "cloister_test.local");
    let name = config.node_name_for(&host).expect("app name");
    assert_eq!(name.to_string(), "cloister_test@10.0.0.5");
    let named = config
        .with_node_name("node1")
        .node_name_for(&host)
        .expect("node name");
    assert_eq!(named.to_string(), "node1@10.0.0.5");
}

#[test]
fn a_config_survives_a_serde_round_trip() {
    let config = Config::nodes("app", ["n1@127.0.0.1:4001", "n2@[::1]:4002"])
        .expect("nodes")
        .with_cookie("secret");
    let json = serde_json::to_string(&config).expect("to json");
    assert!(json.contains(r#""heartbeat_interval":"300ms""#), "{json}");
    let back: Config = serde_json::from_str(&json).expect("from json");
    assert_eq!(back, config);
}

proptest! {
    #[test]
    fn a_joined_string_and_a_list_give_the_same_nodes(
        // Unique names: a list naming one node twice, at one address or two,
        // is refused (see `one_name_at_two_addresses_is_refused`).
        entries in prop::collection::btree_map("[a-z][a-z0-9_]{0,8}", 1u16.., 1..6)
    ) {
        let texts: Vec<String> = entries
            .iter()
            .map(|(name, port)| format!("{name}@127.0.0.1:{port}"))
            .collect();
        let joined: Sentry = texts.join(",").parse().expect("joined");
        prop_assert_eq!(joined, Sentry::parse_nodes(&texts).expect("list"));
    }
}

#[test]
fn one_name_at_two_addresses_is_refused() {
    // From a file as from the environment: two nodes would share one name.
    let error = from_toml(r#"sentry = ["shop@10.0.0.1:4001", "shop@10.0.0.1:4002"]"#)
        .expect_err("one name, two ports");
    let text = error.to_string();
    assert!(
        text.contains("`shop@10.0.0.1` twice, at 10.0.0.1:4001 and at 10.0.0.1:4002"),
        "{text}"
    );
    // The same entry twice is refused too; one name on two hosts is fine.
    assert!(from_toml(r#"sentry = ["shop@10.0.0.1:4001", "shop@10.0.0.1:4001"]"#).is_err());
    assert!(from_toml(r#"sentry = ["shop@10.0.0.1:4000", "shop@10.0.0.2:4000"]"#).is_ok());
}

#[test]
fn debug_output_never_shows_the_cookie() {
    let config = Config::default().with_cookie("s3cret-cookie");
    let printed = format!("{config:?}");
    assert!(!printed.contains("s3cret-cookie"), "{printed}");
    assert!(
        printed.contains("cookie") && printed.contains("heartbeat_timeout"),
        "{printed}"
    );
}

#[test]
fn the_ring_is_builtin_unless_the_application_keeps_its_own() {
    use cloister_core::config::RingMode;
    assert_eq!(Config::default().ring, RingMode::Builtin);
    let external =
        from_toml(&format!("{TWO_NODES}\nring = \"external\"")).expect("ring = external loads");
    assert_eq!(external.ring, RingMode::External);
    {
        let _env = EnvGuard::set(&[
            ("CLOISTER_SENTRY", "node1@127.0.0.1:4001"),
            ("CLOISTER_RING", "external"),
        ]);
        assert_eq!(
            Config::from_env().expect("CLOISTER_RING loads").ring,
            RingMode::External
        );
    }
    let error = message(from_toml(&format!("{TWO_NODES}\nring = \"libring\"")));
    assert!(error.contains("`ring`"), "{error}");
    assert!(error.contains("\"libring\""), "{error}");
    assert!(
        error.contains("`builtin`") && error.contains("`external`"),
        "{error}"
    );
}

const FIVE_NODES: &str = r#"sentry = ["n1@127.0.0.1:4001", "n2@127.0.0.1:4002", "n3@127.0.0.1:4003", "n4@127.0.0.1:4004", "n5@127.0.0.1:4005"]"#;

#[test]
fn quorum_is_off_majority_or_a_count_from_files_and_the_environment() {
    use cloister_core::config::{Quorum, TieBreaker};
    assert_eq!(from_toml(FIVE_NODES).expect("five").quorum, Quorum::Off);
    let majority = from_toml(&format!(
        "{FIVE_NODES}\nquorum = \"majority\"\ntie_breaker = \"oldest\""
    ))
    .expect("majority");
    assert_eq!(majority.quorum, Quorum::Majority);
    assert_eq!(majority.tie_breaker, TieBreaker::Oldest);
    let count = from_toml(&format!("{FIVE_NODES}\nquorum = 3")).expect("count");
    assert_eq!(count.quorum, Quorum::AtLeast(3));
    // With a quorum, a partial partition is acted on only after the
    // heartbeat timeout has shown who cannot hear whom.
    let hasty = message(from_toml(&format!(
        "{FIVE_NODES}\nquorum = 3\nstable_after = \"1s\""
    )));
    assert!(
        hasty.contains("invalid `stable_after`") && hasty.contains("`heartbeat_timeout`"),
        "{hasty}"
    );
    let slow = from_toml(&format!("{FIVE_NODES}\nquorum = 3\nstable_after = \"30s\""));
    assert_eq!(
        slow.expect("30s").stable_after,
        std::time::Duration::from_secs(30)
    );

    for (value, expected) in [("majority", Quorum::Majority), ("4", Quorum::AtLeast(4))] {
        let _env = EnvGuard::set(&[
            ("CLOISTER_SENTRY", "cloister_test.local"),
            ("CLOISTER_QUORUM", value),
            ("CLOISTER_EXPECTED_SIZE", "5"),
        ]);
        let config = Config::from_env().expect(value);
        assert_eq!(config.quorum, expected);
        assert_eq!(config.expected_size, Some(5));
    }
}

#[test]
fn a_quorum_that_two_sides_could_both_hold_or_nobody_can_is_refused() {
    // Two of five: both sides of a 2|3 split would hold it.
    let two = message(from_toml(&format!("{FIVE_NODES}\nquorum = 2")));
    assert!(
        two.contains("`quorum` = 2") && two.contains("more than half of the cluster's 5"),
        "{two}"
    );
    let seven = message(from_toml(&format!("{FIVE_NODES}\nquorum = 7")));
    assert!(seven.contains("can never be met"), "{seven}");
    let service = "sentry = \"cloister_test.local\"";
    let expected = message(from_toml(&format!(
        "{service}\nquorum = 3\nexpected_size = 6"
    )));
    assert!(expected.contains("cluster's 6"), "{expected}");
    for bad in ["\"most\"", "0", "-1", "\"\""] {
        let text = message(from_toml(&format!("{FIVE_NODES}\nquorum = {bad}")));
        assert!(
            text.contains("`off`, `majority`, or a whole number"),
            "{bad}: {text}"
        );
    }
    let tie = message(from_toml(&format!(
        "{FIVE_NODES}\ntie_breaker = \"oldest\""
    )));
    assert!(tie.contains("needs `quorum = \"majority\"`"), "{tie}");
    let size = message(from_toml(&format!("{service}\nexpected_size = 0")));
    assert!(size.contains("`expected_size` = 0"), "{size}");
}

#[test]
fn management_addr_is_read_from_the_environment_and_a_bad_one_is_named() {
    let config = {
        let _env = EnvGuard::set(&[
            ("CLOISTER_SENTRY", "a@127.0.0.1:4000"),
            ("CLOISTER_MANAGEMENT_ADDR", "127.0.0.1:9100"),
        ]);
        Config::load(None).expect("a management address")
    };
    assert_eq!(
        config.management_addr,
        Some("127.0.0.1:9100".parse().expect("an address"))
    );
    let _env = EnvGuard::set(&[
        ("CLOISTER_SENTRY", "a@127.0.0.1:4000"),
        ("CLOISTER_MANAGEMENT_ADDR", "localhost:9100"),
    ]);
    let error = Config::load(None)
        .expect_err("a host name is not an address")
        .to_string();
    assert!(error.contains("CLOISTER_MANAGEMENT_ADDR"), "{error}");
    assert!(error.contains("an IP address and port"), "{error}");
}

#[test]
fn listen_addr_is_read_from_the_environment_and_a_bad_one_is_named() {
    let config = {
        let _env = EnvGuard::set(&[
            ("CLOISTER_SENTRY", "a@127.0.0.1:4000"),
            ("CLOISTER_LISTEN_ADDR", "127.0.0.1"),
        ]);
        Config::load(None).expect("a listen address")
    };
    assert_eq!(config.listen_addr, std::net::Ipv4Addr::LOCALHOST);
    assert!(config.listens_on_loopback_only());
    let every = {
        let _env = EnvGuard::set(&[("CLOISTER_SENTRY", "a@127.0.0.1:4000")]);
        Config::load(None).expect("the default")
    };
    assert_eq!(every.listen_addr, std::net::Ipv6Addr::UNSPECIFIED);
    let _env = EnvGuard::set(&[
        ("CLOISTER_SENTRY", "a@127.0.0.1:4000"),
        ("CLOISTER_LISTEN_ADDR", "0.0.0.0:4000"),
    ]);
    let error = Config::load(None)
        .expect_err("a socket address is not an IP")
        .to_string();
    assert!(error.contains("CLOISTER_LISTEN_ADDR"), "{error}");
    assert!(error.contains("0.0.0.0:4000"), "{error}");
    assert!(error.contains("every interface"), "{error}");
}
