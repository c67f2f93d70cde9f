//! `Quorum` and `TieBreaker`: how many members a node must see to stay
//! `Ready` through a partition, and who wins an even split.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::{invalid, ConfigError, Sentry};

/// What `quorum` allows, for errors and the field table.
pub(super) const QUORUM: &str =
    "`off`, `majority`, or a whole number of members (at least 1, this node counts)";
pub(super) const TIE_BREAKER: &str =
    "`none` (an even split leaves neither side ready) or `oldest` (the side with the sentry of the last quorum stays ready)";

/// How many members, this node included, a node must see to be `Ready`
/// (config `quorum`). Below it, a node that was ready goes `NoQuorum`: it
/// refuses routing by key and names no sentry, so the minority side of a
/// partition never serves keys the majority also serves.
///
/// In files and the environment: `quorum = "off"`, `quorum = "majority"` or
/// `quorum = 3`.
///
/// ```
/// use cloister_core::config::Quorum;
/// assert_eq!("majority".parse::<Quorum>()?, Quorum::Majority);
/// assert_eq!("3".parse::<Quorum>()?, Quorum::AtLeast(3));
/// # Ok::<(), cloister_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Quorum {
    /// No quorum (the default): every side of a partition stays ready, each
    /// with its own ring and sentry. Only `consensus` holds the boot.
    #[default]
    Off,
    /// More than half of the cluster's size: the static list (this node
    /// added if it is not listed), or `expected_size`, or in service mode
    /// the most members this node has seen at once, less those that left
    /// gracefully since.
    Majority,
    /// At least this many members. With a static list or `expected_size`,
    /// more than half of it, so two sides can never both hold quorum.
    AtLeast(usize),
}

impl std::str::FromStr for Quorum {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Quorum, ConfigError> {
        let text = text.trim();
        match text {
            "off" => Ok(Quorum::Off),
            "majority" => Ok(Quorum::Majority),
            _ => match text.parse::<usize>() {
                Ok(0) | Err(_) => Err(invalid("quorum", format!("{text:?}"), QUORUM)),
                Ok(count) => Ok(Quorum::AtLeast(count)),
            },
        }
    }
}

impl fmt::Display for Quorum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Quorum::Off => f.write_str("off"),
            Quorum::Majority => f.write_str("majority"),
            Quorum::AtLeast(count) => write!(f, "{count}"),
        }
    }
}

impl Serialize for Quorum {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Quorum::AtLeast(count) => serializer.serialize_u64(*count as u64),
            other => serializer.collect_str(other),
        }
    }
}

impl<'de> Deserialize<'de> for Quorum {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Quorum, D::Error> {
        struct QuorumVisitor;
        impl Visitor<'_> for QuorumVisitor {
            type Value = Quorum;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(QUORUM)
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Quorum, E> {
                text.parse().map_err(|_| E::custom(QUORUM))
            }
            fn visit_u64<E: de::Error>(self, count: u64) -> Result<Quorum, E> {
                match usize::try_from(count) {
                    Ok(count) if count > 0 => Ok(Quorum::AtLeast(count)),
                    _ => Err(E::custom(QUORUM)),
                }
            }
            fn visit_i64<E: de::Error>(self, count: i64) -> Result<Quorum, E> {
                match u64::try_from(count) {
                    Ok(count) => self.visit_u64(count),
                    Err(_) => Err(E::custom(QUORUM)),
                }
            }
        }
        deserializer.deserialize_any(QuorumVisitor)
    }
}

/// Who keeps quorum when a partition splits the cluster exactly in half
/// (config `tie_breaker`, with `quorum = "majority"` only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TieBreaker {
    /// Neither half is ready (the default): safe, and nothing is served
    /// until the partition heals or a node comes back.
    #[default]
    None,
    /// The half that holds the sentry this node last knew while it had
    /// quorum (the member up longest) stays ready. If that very node is
    /// the one that failed, neither half is.
    Oldest,
}

/// The cluster size a majority is of, when it is fixed by the config: the
/// static list (this node added when unlisted, so `listed` tells) or
/// `expected_size`.
pub(crate) fn fixed_size(sentry: &Sentry, expected: Option<usize>, listed: bool) -> Option<usize> {
    expected.or_else(|| {
        sentry
            .nodes()
            .map(|nodes| nodes.len() + usize::from(!listed))
    })
}

/// Checks `quorum`, `expected_size` and `tie_breaker` against each other and
/// the sentry.
pub(super) fn check(
    quorum: Quorum,
    expected: Option<usize>,
    tie: TieBreaker,
    sentry: &Sentry,
) -> Result<(), ConfigError> {
    if expected == Some(0) {
        return Err(invalid("expected_size", "0", "must be at least 1"));
    }
    if tie == TieBreaker::Oldest && quorum != Quorum::Majority {
        let why = "needs `quorum = \"majority\"`: only a majority can tie";
        return Err(invalid("tie_breaker", "\"oldest\"", why));
    }
    let Quorum::AtLeast(count) = quorum else {
        return Ok(());
    };
    // As if this node were listed; an unlisted one adds itself, below.
    let Some(size) = fixed_size(sentry, expected, true) else {
        return Ok(()); // service mode: the size is only known at run time
    };
    if count * 2 <= size {
        let why = format!(
            "must be more than half of the cluster's {size} node(s) (`expected_size`, else \
             the sentry list), or both sides of a partition could hold quorum; \
             `majority` computes it"
        );
        return Err(invalid("quorum", count.to_string(), why));
    }
    let most = size + usize::from(expected.is_none());
    if count > most {
        let why = format!("can never be met: the cluster has at most {most} node(s)");
        return Err(invalid("quorum", count.to_string(), why));
    }
    Ok(())
}
