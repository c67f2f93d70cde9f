//! Fields of messages that cross nodes, decoded by cloister instead of by
//! ractor.
//!
//! A `#[derive(RactorClusterMessage)]` type decodes each field with
//! `ractor::BytesConvertable::from_bytes`, and ractor's own impls panic on
//! bytes that do not fit (read on ractor 0.16.5, `serialization.rs`):
//! `String` unwraps `from_utf8`, the numbers copy their first bytes out of
//! a slice that may be shorter, `bool` reads byte 0 of what may be empty.
//! The derive catches the panic and ractor drops the message, but the panic
//! hook has already printed it (lines on stderr, outside the node's log
//! format, one report per message), and in a binary built with
//! `panic = "abort"` the process ends. Anyone holding the cookie can send
//! any variant of a group's message type with any bytes in it.
//!
//! [`Wire<T>`] carries any serde type as JSON and always decodes: a payload
//! that does not parse arrives as a [`WireError`] that the handler sees and
//! can report, naming the type it expected. Only `Vec<u8>` and `()` among
//! ractor's own impls cannot fail; every other field and reply type of a
//! message from a peer should be a `Wire`.
//!
//! ```
//! use cloister_ractor::Wire;
//! use ractor::RpcReplyPort;
//!
//! #[derive(ractor_cluster::RactorClusterMessage)]
//! enum KvMsg {
//!     Put(Wire<String>, Wire<String>),
//!     #[rpc]
//!     Get(Wire<String>, RpcReplyPort<Wire<Option<String>>>),
//! }
//!
//! fn handle(message: KvMsg) {
//!     match message {
//!         KvMsg::Put(key, value) => match (key.into_inner(), value.into_inner()) {
//!             (Ok(key), Ok(value)) => { /* keep it */ }
//!             (Err(error), _) | (_, Err(error)) => eprintln!("dropped a put: {error}"),
//!         },
//!         KvMsg::Get(key, reply) => {
//!             let _ = reply.send(Wire::new(None));
//!         }
//!     }
//! }
//! ```

use std::fmt;

use ractor::BytesConvertable;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A field of a message from another node: the value, or why the bytes
/// that came were not one. Build it with [`Wire::new`] (or `.into()`), read
/// it with [`Wire::into_inner`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wire<T>(Result<T, WireError>);

impl<T> Wire<T> {
    /// A value to send.
    pub fn new(value: T) -> Self {
        Wire(Ok(value))
    }

    /// The value, or why the bytes a peer sent were not one.
    pub fn into_inner(self) -> Result<T, WireError> {
        self.0
    }

    /// The value by reference, or why the bytes a peer sent were not one.
    pub fn get(&self) -> Result<&T, &WireError> {
        self.0.as_ref()
    }
}

impl<T> From<T> for Wire<T> {
    fn from(value: T) -> Self {
        Wire::new(value)
    }
}

/// Bytes from a peer that are not the JSON of the field's type. Nothing
/// was decoded; the bytes are kept, and sent on as they came if the field
/// is forwarded.
#[derive(Clone, PartialEq, Eq)]
pub struct WireError {
    expected: &'static str,
    reason: String,
    bytes: Vec<u8>,
}

impl WireError {
    /// The bytes as they came.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a peer sent {} byte(s) that are not the JSON of a `{}` ({}): the peer runs other \
             code for this message type, or is not a node of this application",
            self.bytes.len(),
            short_type_name(self.expected),
            self.reason
        )
    }
}

/// A type as an operator reads it: `core::option::Option<alloc::string::String>`
/// as `Option<String>`.
fn short_type_name(full: &str) -> String {
    let mut out = String::with_capacity(full.len());
    let mut path = String::new();
    let flush = |path: &mut String, out: &mut String| {
        out.push_str(path.rsplit("::").next().unwrap_or_default());
        path.clear();
    };
    for c in full.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            path.push(c);
        } else {
            flush(&mut path, &mut out);
            out.push(c);
        }
    }
    flush(&mut path, &mut out);
    out
}

impl fmt::Debug for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for WireError {}

impl<T: Serialize + DeserializeOwned> BytesConvertable for Wire<T> {
    /// JSON. A value whose `Serialize` fails (a map with keys that are not
    /// strings) goes out as no bytes, which its receiver reads as a
    /// [`WireError`].
    fn into_bytes(self) -> Vec<u8> {
        match self.0 {
            Ok(value) => serde_json::to_vec(&value).unwrap_or_default(),
            Err(error) => error.bytes,
        }
    }

    /// Never panics: bytes that are not the JSON of a `T` become a
    /// [`WireError`].
    fn from_bytes(bytes: Vec<u8>) -> Self {
        match serde_json::from_slice(&bytes) {
            Ok(value) => Wire(Ok(value)),
            Err(error) => Wire(Err(WireError {
                expected: std::any::type_name::<T>(),
                reason: error.to_string(),
                bytes,
            })),
        }
    }
}

/// What ractor_cluster hands a message type's decoder, built from raw
/// fields, and what becomes of it: for property tests that feed a
/// `RactorClusterMessage` type arbitrary bytes from a peer.
#[cfg(any(test, feature = "testing"))]
pub mod frames {
    use ractor::message::SerializedMessage;
    use ractor::{Message, RpcReplyPort};

    /// The arguments of a message as the derive packs them: each field's
    /// length (u64, big-endian), then its bytes.
    pub fn packed<F: AsRef<[u8]>>(fields: &[F]) -> Vec<u8> {
        let mut args = Vec::new();
        for field in fields {
            let field = field.as_ref();
            args.extend_from_slice(&(field.len() as u64).to_be_bytes());
            args.extend_from_slice(field);
        }
        args
    }

    /// A cast of `variant` with these raw arguments.
    pub fn cast(variant: &str, args: Vec<u8>) -> SerializedMessage {
        SerializedMessage::Cast {
            variant: variant.into(),
            args,
            metadata: None,
        }
    }

    /// A call of `variant` with these raw arguments (its reply goes
    /// nowhere).
    pub fn call(variant: &str, args: Vec<u8>) -> SerializedMessage {
        let (reply, _) = ractor::concurrency::oneshot();
        SerializedMessage::Call {
            variant: variant.into(),
            args,
            reply: RpcReplyPort::from(reply),
            metadata: None,
        }
    }

    /// Decodes `message` as an `M` from a peer: whether it decoded. The
    /// decoder of a call spawns its reply's bridge task, so this runs in a
    /// runtime of its own.
    pub fn decodes<M: Message>(message: SerializedMessage) -> bool {
        in_runtime(async { M::deserialize(message).is_ok() })
    }

    /// Sends the call that `build` makes with the caller's reply port, as
    /// to a peer, answers it with `bytes` as that peer would, and tells
    /// whether the caller got a reply (false: the reply's type could not
    /// decode those bytes, and the caller sees the call fail).
    pub fn reply_arrives<M: Message, R: Send + 'static>(
        build: impl FnOnce(RpcReplyPort<R>) -> M,
        bytes: Vec<u8>,
    ) -> bool {
        in_runtime(async {
            let (caller, answer) = ractor::concurrency::oneshot();
            let Ok(SerializedMessage::Call { reply, .. }) =
                build(RpcReplyPort::from(caller)).serialize()
            else {
                return false;
            };
            let _ = reply.send(bytes);
            answer.await.is_ok()
        })
    }

    fn in_runtime<T>(work: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a test runtime")
            .block_on(work)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_value_crosses_as_it_was_sent() {
        let sent = Wire::new(("key".to_string(), 7u64, true));
        let back = Wire::<(String, u64, bool)>::from_bytes(sent.clone().into_bytes());
        assert_eq!(back, sent);
    }

    #[test]
    fn bytes_that_do_not_parse_are_an_error_naming_the_type() {
        let back = Wire::<u64>::from_bytes(vec![0xff, 0, 1]);
        let error = back.into_inner().unwrap_err();
        assert_eq!(error.bytes(), [0xff, 0, 1]);
        let text = error.to_string();
        assert!(
            text.contains("3 byte(s)") && text.contains("`u64`"),
            "{text}"
        );
        // Named as in the source, not by its full path.
        let text = Wire::<Option<(String, Vec<u8>)>>::from_bytes(vec![b'{'])
            .into_inner()
            .unwrap_err()
            .to_string();
        assert!(text.contains("`Option<(String, Vec<u8>)>`"), "{text}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any bytes decode, as a value or as an error, and an error sends
        /// the same bytes on.
        #[test]
        fn any_bytes_decode_without_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let string = Wire::<String>::from_bytes(bytes.clone());
            let number = Wire::<u64>::from_bytes(bytes.clone());
            let flag = Wire::<bool>::from_bytes(bytes.clone());
            if string.get().is_err() {
                prop_assert_eq!(string.into_bytes(), bytes.clone());
            }
            let _ = (number, flag);
        }
    }
}
