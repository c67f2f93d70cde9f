//! A peer names itself: in the cluster handshake (the runtime parses the
//! name it gives) and in every heartbeat. Any text must parse or be
//! refused, never panic, and a name that parses means one node: printed and
//! parsed again, or sent as JSON, it is the same name.

use cloister_core::NodeName;
use proptest::prelude::*;

/// Text shaped like a name, `{part}@{host}`, with each part anything: empty,
/// too long, with dots, colons, brackets, non-ASCII.
fn name_like() -> impl Strategy<Value = String> {
    let part = prop_oneof![
        ".{0,70}",
        "[a-z0-9_.-]{0,70}",
        "[0-9.:\\[\\]a-f]{0,45}",
        "([a-z0-9-]{0,64}\\.){0,5}[a-z0-9-]{0,64}",
    ];
    (part.clone(), part, prop::option::of(".{0,8}"))
        .prop_map(|(name, host, tail)| format!("{name}@{host}{}", tail.unwrap_or_default()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_text_parses_or_is_refused_and_a_name_means_one_node(
        text in prop_oneof![".{0,300}", name_like()],
    ) {
        if let Ok(name) = text.parse::<NodeName>() {
            let again: NodeName = name.to_string().parse().expect("a printed name parses");
            prop_assert_eq!(&again, &name);
            prop_assert_eq!(format!("{}@{}", name.node_name(), name.host()), name.to_string());
            let json = serde_json::to_string(&name).expect("a name serializes");
            let back: NodeName = serde_json::from_str(&json).expect("and parses back");
            prop_assert_eq!(back, name);
        }
    }
}
