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
use std::hash::{BuildHasher, Hash, Hasher};
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

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

/// One virtual node: where it sits on the ring and whose it is. Its
/// position is computed once (see the module docs) and travels with it:
/// `hashring` reads it back through [`Positioned`] instead of hashing again,
/// and a ring rebuilt with [`Ring::with_members`] copies the positions of
/// the members it keeps.
///
/// Indexes are `u32`, so an entry is 16 bytes; 2^32 virtual nodes would
/// need far more memory than any host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct VirtualNode {
    /// Its place on the ring: `SipHash(name ‖ u32_le(replica))`.
    point: u64,
    /// Index of the member in `Ring::members`.
    member: u32,
    /// Which of the member's virtual nodes this is, `0..vnodes`.
    replica: u32,
}

impl VirtualNode {
    /// Virtual node `replica` of `name`, the member at `member`.
    fn of(name: &NodeName, member: u32, replica: u32) -> VirtualNode {
        let mut hasher = SipHasher::new();
        hasher.write(name.as_str().as_bytes());
        hasher.write(&replica.to_le_bytes());
        VirtualNode {
            point: hasher.finish(),
            member,
            replica,
        }
    }
}

impl Hash for VirtualNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.point);
    }
}

/// A key as raw bytes. Its position is SipHash over the bytes with nothing
/// added (std's `[u8]` impl would prefix the length, `str`'s would append
/// `0xff`), handed to `hashring` as one `u64` as a [`VirtualNode`]'s is.
struct KeyBytes<'a>(&'a [u8]);

impl Hash for KeyBytes<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut hasher = SipHasher::new();
        hasher.write(self.0);
        state.write_u64(hasher.finish());
    }
}

/// `hashring`'s hasher here: the positions are SipHash values computed
/// before they reach it ([`VirtualNode::point`], [`KeyBytes`]), and it
/// passes them through unchanged.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Positioned;

impl BuildHasher for Positioned {
    type Hasher = Position;

    fn build_hasher(&self) -> Position {
        Position(0)
    }
}

/// The one `u64` written to it.
struct Position(u64);

impl Hasher for Position {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is ever called; anything else still hashes.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Consistent-hash placement of keys on a membership.
///
/// A ring knows its members and digest at once; its virtual nodes are laid
/// out at the first lookup ([`Ring::node_for`], [`Ring::nodes_for`],
/// [`Ring::shares`]), from any thread. A node rebuilds its ring each time
/// the members change, and while a cluster forms they change by the dozen
/// before anything is routed: laying out 25,600 virtual nodes (100 members
/// of 256) at each of those rebuilds was a fifth of a forming node's CPU.
/// So a ring nobody asks costs its member list, and the first lookup after
/// a change pays the layout once (about 0.15 ms at 100 members when the
/// ring before it was laid out, 1.2 ms when none was; BENCHMARKS.md).
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
pub struct Ring {
    /// Sorted and distinct; `VirtualNode::member` indexes into it.
    members: Vec<NodeName>,
    /// Virtual nodes per member: at least 1, or 0 for a members-only ring.
    vnodes: u32,
    /// Computed once, since peers compare digests on every heartbeat.
    digest: Digest,
    /// The virtual nodes, laid out at the first lookup.
    placement: OnceLock<Arc<Placement>>,
    /// The last laid-out ring this one was rebuilt from, while this one is
    /// not laid out: its members keep their virtual nodes when it is. Let
    /// go of then, so a node holds one layout, not a chain of them.
    base: Mutex<Option<Base>>,
}

impl Clone for Ring {
    fn clone(&self) -> Ring {
        Ring {
            members: self.members.clone(),
            vnodes: self.vnodes,
            digest: self.digest,
            placement: self.placement.clone(),
            base: Mutex::new(self.base()),
        }
    }
}

/// A ring's virtual nodes, laid out.
struct Placement {
    /// Owns the placement: every lookup goes through `HashRing::get`.
    hashring: HashRing<VirtualNode, Positioned>,
    /// Every virtual node in ring order, which `hashring` keeps private:
    /// `nodes_for` walks it from the owner, and a rebuilt ring copies it.
    clockwise: Vec<VirtualNode>,
}

/// A laid-out placement and the members its `VirtualNode::member` indexes.
#[derive(Clone)]
struct Base {
    members: Arc<[NodeName]>,
    placement: Arc<Placement>,
}

impl Ring {
    /// A ring of the given members, each with `vnodes` virtual nodes (0 is
    /// taken as 1). Members are sorted and repeats dropped, so the input
    /// order never affects placement.
    pub fn new(members: impl IntoIterator<Item = NodeName>, vnodes: u32) -> Ring {
        Ring::of(sorted(members), vnodes.max(1), None)
    }

    /// The ring of `members` with this ring's virtual nodes per member (a
    /// [members-only](Ring::members_only) ring gives another one). It places
    /// every key as [`Ring::new`] would, but when laid out, the members it
    /// shares with the last laid-out ring it was rebuilt from keep their
    /// virtual nodes, which are not hashed or sorted again: a ring of 100
    /// members of 256 vnodes that gains or loses one is laid out in about an
    /// eighth of the time (0.15 ms against 1.2 ms on a 2-core machine;
    /// BENCHMARKS.md).
    ///
    /// ```
    /// use cloister_core::{NodeName, Ring};
    /// let names: Vec<NodeName> = (1..=4).map(|i| format!("app@10.0.0.{i}").parse().unwrap()).collect();
    /// let three = Ring::new(names[..3].to_vec(), 256);
    /// let four = three.with_members(names.clone());
    /// assert_eq!(four.node_for("user:42"), Ring::new(names, 256).node_for("user:42"));
    /// ```
    pub fn with_members(&self, members: impl IntoIterator<Item = NodeName>) -> Ring {
        if self.vnodes == 0 {
            return Ring::members_only(members);
        }
        let base = match self.placement.get() {
            Some(placement) => Some(Base {
                members: self.members.as_slice().into(),
                placement: Arc::clone(placement),
            }),
            None => self.base(),
        };
        Ring::of(sorted(members), self.vnodes, base)
    }

    fn of(members: Vec<NodeName>, vnodes: u32, base: Option<Base>) -> Ring {
        let digest = Digest::of(&members);
        Ring {
            members,
            vnodes,
            digest,
            placement: OnceLock::new(),
            base: Mutex::new(base),
        }
    }

    /// The base to lay out from, if this ring is not laid out yet.
    fn base(&self) -> Option<Base> {
        self.base_slot().clone()
    }

    /// The lock is held only to copy or clear the base, never while laying
    /// out; nothing can panic under it, but a poisoned one is still whole.
    fn base_slot(&self) -> std::sync::MutexGuard<'_, Option<Base>> {
        (self.base.lock()).unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The virtual nodes, laid out now if they were not yet.
    fn placement(&self) -> &Placement {
        self.placement.get_or_init(|| {
            let placement = Arc::new(match self.vnodes {
                0 => Placement::empty(),
                vnodes => Placement::lay_out(&self.members, vnodes, self.base().as_ref()),
            });
            *self.base_slot() = None;
            placement
        })
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
        Ring::of(sorted(members), 0, None)
    }

    /// The member that owns `key`, or `None` when the ring is empty (or
    /// [members only](Ring::members_only)).
    pub fn node_for(&self, key: impl AsRef<[u8]>) -> Option<&NodeName> {
        (self.placement().hashring)
            .get(&KeyBytes(key.as_ref()))
            .map(|vnode| &self.members[vnode.member as usize])
    }

    /// Up to `n` distinct members for `key`: its owner first, then the next
    /// members met clockwise. Fewer when the ring has fewer than `n` members;
    /// empty when the ring is.
    pub fn nodes_for(&self, key: impl AsRef<[u8]>, n: usize) -> Vec<&NodeName> {
        let wanted = n.min(self.members.len());
        let mut found = Vec::with_capacity(wanted);
        let placement = self.placement();
        let Some(owner) = placement.hashring.get(&KeyBytes(key.as_ref())) else {
            return found;
        };
        let mut listed = vec![false; self.members.len()];
        let position = (placement.clockwise).partition_point(|vnode| vnode < owner);
        let (before, from_owner) = placement.clockwise.split_at(position);
        for vnode in from_owner.iter().chain(before) {
            if found.len() == wanted {
                break;
            }
            let member = vnode.member as usize;
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
        let placement = self.placement();
        for key in 0..Self::SHARE_SAMPLES {
            if let Some(vnode) = placement.hashring.get(&KeyBytes(&key.to_le_bytes())) {
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

impl Placement {
    fn empty() -> Placement {
        Placement {
            hashring: HashRing::with_hasher(Positioned),
            clockwise: Vec::new(),
        }
    }

    /// The virtual nodes of `members` (sorted and distinct), `vnodes` each;
    /// those of members `base` has are copied from it, not hashed again.
    fn lay_out(members: &[NodeName], vnodes: u32, base: Option<&Base>) -> Placement {
        // Where each member of `base` sits in `members`, if it stayed. Both
        // lists are sorted, so the kept members keep their order and the
        // base's ring order stays sorted under the new indexes.
        let kept: Vec<Option<u32>> = base.map_or_else(Vec::new, |base| {
            (base.members.iter())
                .map(|name| members.binary_search(name).ok().map(|i| i as u32))
                .collect()
        });
        let reused = (base
            .map(|b| b.placement.clockwise.iter())
            .into_iter()
            .flatten())
        .filter_map(|vnode| {
            let member = kept.get(vnode.member as usize).copied().flatten()?;
            Some(VirtualNode { member, ..*vnode })
        });
        // The members new to this ring, hashed and sorted.
        let mut arrived: Vec<VirtualNode> = (members.iter().enumerate())
            .filter(|(_, name)| base.is_none_or(|base| base.members.binary_search(name).is_err()))
            .flat_map(|(member, name)| {
                (0..vnodes).map(move |replica| VirtualNode::of(name, member as u32, replica))
            })
            .collect();
        arrived.sort_unstable();
        // Ring order: by position, then (on a tie) by member name and
        // replica, which is what the member index and replica sort by.
        let clockwise = merge_sorted(reused, arrived, members.len() * vnodes as usize);

        // `hashring` sorts what it is given, stably by position; given it
        // in ring order, that sort finds nothing to move.
        let mut hashring = HashRing::with_hasher(Positioned);
        hashring.batch_add(clockwise.clone());
        Placement {
            hashring,
            clockwise,
        }
    }
}

/// Sorted and distinct.
fn sorted(members: impl IntoIterator<Item = NodeName>) -> Vec<NodeName> {
    let mut members: Vec<NodeName> = members.into_iter().collect();
    members.sort_unstable();
    members.dedup();
    members
}

/// `a` and `b`, each sorted, as one sorted list of `len` entries.
fn merge_sorted(
    a: impl Iterator<Item = VirtualNode>,
    b: Vec<VirtualNode>,
    len: usize,
) -> Vec<VirtualNode> {
    let mut merged = Vec::with_capacity(len);
    let mut b = b.into_iter().peekable();
    for vnode in a {
        while let Some(next) = b.next_if(|next| *next < vnode) {
            merged.push(next);
        }
        merged.push(vnode);
    }
    merged.extend(b);
    merged
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
    fn a_ring_is_laid_out_at_its_first_lookup_and_lets_its_base_go() {
        let members = five();
        let first = Ring::new(members[..3].to_vec(), 64);
        assert!(first.placement.get().is_none(), "no lookup yet");
        // Rebuilt before any lookup: nothing to reuse, and nothing laid out.
        let second = first.with_members(members[..4].to_vec());
        assert!(second.placement.get().is_none() && second.base().is_none());
        assert!(second.node_for("user:42").is_some());
        // Rebuilt from a laid-out ring, then again: the last layout is the
        // base of both, until the newest is laid out and lets it go.
        let third = second.with_members(members.clone());
        let fourth = third.with_members(members[1..].to_vec());
        let base = fourth.base().expect("the second ring's layout");
        assert_eq!(&base.members[..], &members[..4]);
        assert_eq!(
            fourth.nodes_for("user:42", 4),
            Ring::new(members[1..].to_vec(), 64).nodes_for("user:42", 4)
        );
        assert!(fourth.base().is_none());
        // Three holders of the second ring's layout: itself, the third
        // ring (still unlaid) and `base` here; the fourth gave it up.
        assert_eq!(Arc::strong_count(&base.placement), 3);
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
