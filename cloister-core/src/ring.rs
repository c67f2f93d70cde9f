//! The consistent-hash ring: which member owns a key, and which members follow
//! it clockwise, for a given membership.
//!
//! A [`Ring`] is an immutable snapshot of one membership; build a new one when
//! the membership changes. Placement is done by the `hashring` crate over
//! virtual nodes: each member appears `vnodes` times on the ring, which evens
//! out the share of keys each member owns (at the default 256 virtual nodes
//! and 10 members, the busiest member typically owns 1.05 to 1.15 times the
//! mean; see BENCHMARKS.md).
//! [`Digest`] names a membership in one `u64`, so two nodes can tell cheaply
//! whether their rings agree.
//!
//! # Placement is a compatibility promise
//!
//! Every node of a cluster must place a key on the same member, whatever its
//! Rust release, platform or endianness, and so must every later version of
//! cloister: changing placement moves every key of every deployed cluster.
//! std's `Hash` impls are not fixed by any spec (`str` appends `0xff`,
//! integers use native endianness), so the bytes hashed are spelled out here:
//!
//! - The hash is SipHash-2-4 with an all-zero key and 64-bit output
//!   (`siphasher::sip::SipHasher::new()`, `hashring`'s default hasher).
//! - Virtual node `i` (for `i` in `0..vnodes`) of member `name` sits at
//!   `SipHash(name ‖ u32_le(i))`, where `name` is the UTF-8 text `node@host`.
//! - A key sits at `SipHash(key)`, over the key's bytes only.
//! - A key's owner is the member of the first virtual node at or after the
//!   key's position, wrapping past `u64::MAX` to the lowest one. Virtual nodes
//!   at the same position are ordered by member name (byte-wise), then `i`.
//! - [`Ring::nodes_for`] continues clockwise from the owner's virtual node,
//!   skipping members already listed.
//!
//! The golden vectors in this module's tests pin these rules down.
//!
//! # Digest
//!
//! [`Digest::of`] is SipHash-2-4 (zero key) over each distinct member name's
//! UTF-8 bytes followed by one `0x00` byte, in ascending byte-wise order. It is
//! written as 16 lower-case hex digits, in text and in serde.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::Arc;

use hashring::HashRing;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use siphasher::sip::SipHasher;

use crate::names::NodeName;

/// Why text could not be parsed as a [`Digest`]. Parsing changes no state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The text is not exactly 16 hexadecimal digits.
    #[error("`{0}` is not a ring digest: expected 16 hex digits, for example `00c0ffee00c0ffee`")]
    NotHex(String),
}

/// A fingerprint of a membership: equal member sets give equal digests on
/// every node and platform (see the module docs for the exact hash).
///
/// ```
/// use cloister_core::{Digest, NodeName, Ring};
/// let a: NodeName = "app@10.0.0.1".parse().unwrap();
/// let b: NodeName = "app@10.0.0.2".parse().unwrap();
/// let ring = Ring::new([b.clone(), a.clone()], 256);
/// assert_eq!(ring.digest(), Digest::of([&a, &b]));
/// assert_eq!(ring.digest().to_string().parse::<Digest>().unwrap(), ring.digest());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Digest(pub u64);

impl Digest {
    /// The digest of a set of members. Order and repeats in the input do not
    /// matter: the names are sorted and deduplicated before hashing.
    pub fn of<'a>(members: impl IntoIterator<Item = &'a NodeName>) -> Digest {
        let mut names: Vec<&NodeName> = members.into_iter().collect();
        names.sort_unstable();
        names.dedup();
        let mut hasher = SipHasher::new();
        for name in names {
            hasher.write(name.as_str().as_bytes());
            hasher.write(&[0]);
        }
        Digest(hasher.finish())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // `from_str_radix` alone would also take a sign or fewer digits.
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DigestError::NotHex(s.to_string()));
        }
        u64::from_str_radix(s, 16)
            .map(Digest)
            .map_err(|_| DigestError::NotHex(s.to_string()))
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One virtual node as stored in the `hashring`. Only `name` and `replica`
/// are hashed (see the module docs); `member` rides along so a lookup lands
/// straight on the owner (and, through `Ring::positions`, on its place in
/// clockwise order).
///
/// Indexes are `u32` to keep an entry as small as raw hashring's
/// `(String, u32)`, which keeps lookups as fast; 2^32 virtual nodes would
/// need far more memory than any host has.
#[derive(Debug, Clone)]
struct VirtualNode {
    /// The member's name, shared by all its virtual nodes.
    name: Arc<str>,
    /// Which of the member's virtual nodes this is, `0..vnodes`.
    replica: u32,
    /// Index of the member in `Ring::members`.
    member: u32,
}

impl Hash for VirtualNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.name.as_bytes());
        state.write(&self.replica.to_le_bytes());
    }
}

/// A key as raw bytes, hashed with nothing added (std's `[u8]` impl would
/// prefix the length, `str`'s would append `0xff`).
struct KeyBytes<'a>(&'a [u8]);

impl Hash for KeyBytes<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0);
    }
}

/// Consistent-hash placement of keys on a membership.
///
/// ```
/// use cloister_core::{NodeName, Ring};
/// let members: Vec<NodeName> = ["app@10.0.0.1", "app@10.0.0.2", "app@10.0.0.3"]
///     .iter()
///     .map(|name| name.parse().unwrap())
///     .collect();
/// let ring = Ring::new(members, 256);
/// let owner = ring.node_for("user:42").unwrap();
/// let replicas = ring.nodes_for("user:42", 2);
/// assert_eq!(replicas[0], owner);
/// assert_ne!(replicas[1], owner);
/// ```
#[derive(Clone)]
pub struct Ring {
    /// Sorted and distinct; `VirtualNode::member` indexes into it.
    members: Vec<NodeName>,
    /// Virtual nodes per member: at least 1, or 0 for a members-only ring.
    vnodes: u32,
    /// Owns the placement: every lookup goes through `HashRing::get`.
    placement: HashRing<VirtualNode>,
    /// The member index of every virtual node in ring order, which `hashring`
    /// keeps private; `nodes_for` walks it from the owner's position.
    clockwise: Vec<u32>,
    /// Where in `clockwise` each virtual node sits, by
    /// `member * vnodes + replica`.
    positions: Vec<u32>,
    /// Computed once, since peers compare digests on every heartbeat.
    digest: Digest,
}

impl Ring {
    /// A ring of the given members, each with `vnodes` virtual nodes (0 is
    /// taken as 1). Members are sorted and repeats dropped, so the input
    /// order never affects placement.
    pub fn new(members: impl IntoIterator<Item = NodeName>, vnodes: u32) -> Ring {
        let mut members: Vec<NodeName> = members.into_iter().collect();
        members.sort_unstable();
        members.dedup();
        let vnodes = vnodes.max(1);

        let unplaced: Vec<VirtualNode> = members
            .iter()
            .enumerate()
            .flat_map(|(member, name)| {
                let name: Arc<str> = Arc::from(name.as_str());
                (0..vnodes).map(move |replica| VirtualNode {
                    name: Arc::clone(&name),
                    replica,
                    member: member as u32,
                })
            })
            .collect();

        // A `HashRing` iterates in ring order (consuming itself) but does
        // not say where a node sits: a copy of it, consumed, gives the
        // order, which `nodes_for` walks from the owner's place. Copying
        // costs less than hashing and sorting every virtual node again.
        let mut placement = HashRing::new();
        placement.batch_add(unplaced);
        let mut positions = vec![0u32; members.len() * vnodes as usize];
        let clockwise: Vec<u32> = placement
            .clone()
            .into_iter()
            .enumerate()
            .map(|(position, vnode)| {
                let index = vnode.member as usize * vnodes as usize + vnode.replica as usize;
                if let Some(slot) = positions.get_mut(index) {
                    *slot = position as u32;
                }
                vnode.member
            })
            .collect();

        let digest = Digest::of(&members);
        Ring {
            members,
            vnodes,
            placement,
            clockwise,
            positions,
            digest,
        }
    }

    /// A ring that only lists its members (for `ring = "external"`): the
    /// same members and digest as [`Ring::new`] would have, no virtual
    /// nodes, and `None` from every lookup.
    ///
    /// ```
    /// use cloister_core::{NodeName, Ring};
    /// let members: Vec<NodeName> = vec!["a@h".parse().unwrap(), "b@h".parse().unwrap()];
    /// let ring = Ring::members_only(members.clone());
    /// assert_eq!(ring.digest(), Ring::new(members, 256).digest());
    /// assert_eq!(ring.node_for("user:42"), None);
    /// ```
    pub fn members_only(members: impl IntoIterator<Item = NodeName>) -> Ring {
        let mut members: Vec<NodeName> = members.into_iter().collect();
        members.sort_unstable();
        members.dedup();
        let digest = Digest::of(&members);
        Ring {
            members,
            vnodes: 0,
            placement: HashRing::new(),
            clockwise: Vec::new(),
            positions: Vec::new(),
            digest,
        }
    }

    /// The member that owns `key`, or `None` when the ring is empty (or
    /// [members only](Ring::members_only)).
    pub fn node_for(&self, key: impl AsRef<[u8]>) -> Option<&NodeName> {
        self.placement
            .get(&KeyBytes(key.as_ref()))
            .map(|vnode| &self.members[vnode.member as usize])
    }

    /// Up to `n` distinct members for `key`: its owner first, then the next
    /// members met clockwise. Fewer when the ring has fewer than `n` members;
    /// empty when the ring is.
    pub fn nodes_for(&self, key: impl AsRef<[u8]>, n: usize) -> Vec<&NodeName> {
        let wanted = n.min(self.members.len());
        let mut found = Vec::with_capacity(wanted);
        let Some(owner) = self.placement.get(&KeyBytes(key.as_ref())) else {
            return found;
        };
        let mut listed = vec![false; self.members.len()];
        let index = owner.member as usize * self.vnodes as usize + owner.replica as usize;
        let position = self.positions.get(index).copied().unwrap_or_default();
        let (before, from_owner) = self.clockwise.split_at(position as usize);
        for &member in from_owner.iter().chain(before) {
            if found.len() == wanted {
                break;
            }
            let member = member as usize;
            if !listed[member] {
                listed[member] = true;
                found.push(&self.members[member]);
            }
        }
        found
    }

    /// The members, sorted and distinct.
    pub fn members(&self) -> &[NodeName] {
        &self.members
    }

    /// The digest of [`Ring::members`], equal to `Digest::of(ring.members())`.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Virtual nodes per member; 0 for a [members-only](Ring::members_only) ring.
    pub fn vnodes(&self) -> u32 {
        self.vnodes
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the ring has no members, so every lookup answers `None`.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Whether `node` is a member.
    pub fn contains(&self, node: &NodeName) -> bool {
        self.members.binary_search(node).is_ok()
    }

    /// Each member's share of the keys, 0.0 to 1.0, measured over
    /// [`Ring::SHARE_SAMPLES`] fixed keys (so every node measures the same
    /// shares for the same ring); empty for a [members-only](Ring::members_only)
    /// ring. For operators: how evenly the ring spreads keys.
    pub fn shares(&self) -> Vec<(NodeName, f64)> {
        let mut owned = vec![0u32; self.members.len()];
        for key in 0..Self::SHARE_SAMPLES {
            if let Some(vnode) = self.placement.get(&KeyBytes(&key.to_le_bytes())) {
                owned[vnode.member as usize] += 1;
            }
        }
        if owned.iter().all(|n| *n == 0) {
            return Vec::new();
        }
        let samples = f64::from(Self::SHARE_SAMPLES);
        (self.members.iter().cloned())
            .zip(owned.into_iter().map(|n| f64::from(n) / samples))
            .collect()
    }

    /// How many keys [`Ring::shares`] places.
    pub const SHARE_SAMPLES: u32 = 4096;
}

impl fmt::Debug for Ring {
    // The virtual nodes are left out: thousands of entries, all derived.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("members", &self.members)
            .field("vnodes", &self.vnodes)
            .field("digest", &self.digest)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(texts: &[&str]) -> Vec<NodeName> {
        texts.iter().map(|t| t.parse().expect(t)).collect()
    }

    fn five() -> Vec<NodeName> {
        names(&[
            "app@10.0.0.1",
            "app@10.0.0.2",
            "app@10.0.0.3",
            "app@10.0.0.4",
            "app@10.0.0.5",
        ])
    }

    /// Key, then `nodes_for(key, 3)` (whose first entry is the owner) on the
    /// ring of `five()` at 256 virtual nodes.
    ///
    /// THESE MUST NEVER CHANGE. Every deployed cluster places its keys by these
    /// rules; a change here moves keys between members on upgrade and splits a
    /// cluster running two versions. They were checked against an independent
    /// SipHash-2-4 implementation of the module-doc rules (not this code).
    const GOLDEN: &[(&[u8], [&str; 3])] = &[
        (b"", ["app@10.0.0.2", "app@10.0.0.4", "app@10.0.0.3"]),
        (b"a", ["app@10.0.0.3", "app@10.0.0.5", "app@10.0.0.2"]),
        (b"user:42", ["app@10.0.0.1", "app@10.0.0.3", "app@10.0.0.2"]),
        (
            b"session/9f8e",
            ["app@10.0.0.2", "app@10.0.0.4", "app@10.0.0.5"],
        ),
        (
            "日本語".as_bytes(),
            ["app@10.0.0.4", "app@10.0.0.3", "app@10.0.0.5"],
        ),
        (
            b"\x00\xff\x10",
            ["app@10.0.0.4", "app@10.0.0.2", "app@10.0.0.1"],
        ),
        (b"key-0", ["app@10.0.0.3", "app@10.0.0.4", "app@10.0.0.1"]),
        (b"key-1", ["app@10.0.0.1", "app@10.0.0.4", "app@10.0.0.5"]),
        (b"key-2", ["app@10.0.0.5", "app@10.0.0.1", "app@10.0.0.4"]),
        (b"key-3", ["app@10.0.0.3", "app@10.0.0.1", "app@10.0.0.5"]),
        (b"key-4", ["app@10.0.0.5", "app@10.0.0.1", "app@10.0.0.4"]),
        (b"key-5", ["app@10.0.0.2", "app@10.0.0.5", "app@10.0.0.1"]),
        (b"key-6", ["app@10.0.0.1", "app@10.0.0.2", "app@10.0.0.5"]),
        (b"key-7", ["app@10.0.0.2", "app@10.0.0.3", "app@10.0.0.5"]),
        (b"key-8", ["app@10.0.0.1", "app@10.0.0.2", "app@10.0.0.3"]),
        (b"key-9", ["app@10.0.0.3", "app@10.0.0.1", "app@10.0.0.4"]),
        (b"key-10", ["app@10.0.0.1", "app@10.0.0.3", "app@10.0.0.2"]),
        (b"key-11", ["app@10.0.0.2", "app@10.0.0.3", "app@10.0.0.1"]),
        (b"key-12", ["app@10.0.0.5", "app@10.0.0.4", "app@10.0.0.3"]),
        (b"key-13", ["app@10.0.0.1", "app@10.0.0.2", "app@10.0.0.5"]),
    ];

    /// The digest of `five()`. MUST NEVER CHANGE either: peers of different
    /// versions compare it to decide whether they agree on the membership.
    const GOLDEN_DIGEST: &str = "a3dd6e44aa004a54";

    #[test]
    fn golden_placement_never_changes() {
        let ring = Ring::new(five(), 256);
        for (key, expected) in GOLDEN {
            let got: Vec<&str> = ring.nodes_for(key, 3).iter().map(|n| n.as_str()).collect();
            assert_eq!(got, expected, "nodes_for({key:?}, 3)");
            let owner = ring.node_for(key).map(NodeName::as_str);
            assert_eq!(owner, Some(expected[0]), "node_for({key:?})");
        }
        assert_eq!(ring.digest().to_string(), GOLDEN_DIGEST);
    }

    #[test]
    fn an_empty_ring_places_nothing() {
        let ring = Ring::new(Vec::new(), 256);
        assert!(ring.is_empty());
        assert_eq!(ring.node_for("key"), None);
        assert!(ring.nodes_for("key", 3).is_empty());
        assert_eq!(ring.digest(), Digest::of([]));
    }

    #[test]
    fn nodes_for_lists_each_member_once_when_asked_for_more() {
        let ring = Ring::new(five(), 256);
        for key in ["a", "b", "c"] {
            let mut all = ring.nodes_for(key, 100);
            assert_eq!(all[0], ring.node_for(key).expect("owner"));
            all.sort();
            let members: Vec<&NodeName> = ring.members().iter().collect();
            assert_eq!(all, members);
        }
        assert!(ring.nodes_for("a", 0).is_empty());
        assert_eq!(ring.nodes_for("a", 1), [ring.node_for("a").expect("owner")]);
    }

    #[test]
    fn duplicate_members_are_dropped_and_members_are_sorted() {
        let mut input = five();
        input.reverse();
        input.extend(five());
        let ring = Ring::new(input, 0);
        assert_eq!(ring.members(), five().as_slice());
        assert_eq!(ring.len(), 5);
        assert_eq!(ring.vnodes(), 1, "0 virtual nodes is taken as 1");
        assert_eq!(ring.digest(), Ring::new(five(), 256).digest());
        assert!(ring.contains(&five()[2]));
        assert!(!ring.contains(&"app@10.0.0.6".parse().expect("name")));
    }

    #[test]
    fn digest_ignores_order_and_repeats() {
        let members = five();
        let shuffled = [3, 0, 4, 0, 1, 2].map(|i| &members[i]);
        assert_eq!(Digest::of(shuffled), Digest::of(&members));
        assert_ne!(Digest::of(&members[..4]), Digest::of(&members));
    }

    #[test]
    fn digest_round_trips_through_text_and_serde() {
        let digest = Digest(0x00c0_ffee_0000_0042);
        assert_eq!(digest.to_string(), "00c0ffee00000042");
        assert_eq!("00c0ffee00000042".parse::<Digest>(), Ok(digest));
        assert_eq!("00C0FFEE00000042".parse::<Digest>(), Ok(digest));
        let json = serde_json::to_string(&digest).expect("json");
        assert_eq!(json, "\"00c0ffee00000042\"");
        assert_eq!(serde_json::from_str::<Digest>(&json).expect("back"), digest);
        for bad in [
            "",
            "c0ffee",
            "+0c0ffee00000042",
            "00c0ffee000000420",
            "00c0ffee0000004g",
        ] {
            assert_eq!(
                bad.parse::<Digest>(),
                Err(DigestError::NotHex(bad.to_string()))
            );
        }
        assert!(serde_json::from_str::<Digest>("\"nope\"").is_err());
    }

    #[test]
    fn shares_add_up_to_one_and_none_is_far_from_even() {
        let members: Vec<NodeName> = (1..=4)
            .map(|i| format!("n@10.0.0.{i}").parse().expect("a name"))
            .collect();
        let ring = Ring::new(members.clone(), 256);
        let shares = ring.shares();
        assert_eq!(
            shares.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
            members
        );
        let total: f64 = shares.iter().map(|(_, s)| s).sum();
        assert!((total - 1.0).abs() < 1e-9, "{shares:?}");
        assert!(
            shares.iter().all(|(_, s)| (0.15..0.35).contains(s)),
            "{shares:?}"
        );
        assert!(Ring::members_only(members).shares().is_empty());
    }
}
