//! Request ids as a head carried them (`X-Request-Id`): inline up to 40 bytes, so the ids the
//! proxies make (nginx's `$request_id`, 32 hex digits; Caddy's `{http.request.uuid}`, 36
//! characters) cost a keep-alive request no heap allocation. Longer ids go on the heap.
use std::{
    borrow::Borrow,
    cmp::Ordering,
    fmt,
    hash::{Hash, Hasher},
    ops::Deref,
};

use arrayvec::ArrayString;
use serde::{Serialize, Serializer};

/// Bytes kept inline.
pub const INLINE: usize = 40;

/// A request id: a string, stored inline when it fits (see the module's doc).
#[derive(Clone)]
pub struct RequestId(Repr);

#[derive(Clone)]
enum Repr {
    Inline(ArrayString<INLINE>),
    Heap(Box<str>),
}

impl RequestId {
    pub fn new(id: &str) -> Self {
        Self(match ArrayString::from(id) {
            Ok(inline) => Repr::Inline(inline),
            Err(_) => Repr::Heap(id.into()),
        })
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Inline(s) => s.as_str(),
            Repr::Heap(s) => s,
        }
    }

    /// Whether it is kept without a heap allocation.
    pub fn is_inline(&self) -> bool {
        matches!(self.0, Repr::Inline(_))
    }
}

impl Deref for RequestId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for RequestId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for RequestId {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for RequestId {
    fn from(id: &str) -> Self {
        Self::new(id)
    }
}

impl From<String> for RequestId {
    fn from(id: String) -> Self {
        Self::new(&id)
    }
}

// Equality, order and hash are the text's (as `Borrow<str>` requires), whichever the storage.
impl PartialEq for RequestId {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RequestId {}

impl PartialEq<str> for RequestId {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for RequestId {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialOrd for RequestId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for RequestId {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for RequestId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for RequestId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn the_proxies_ids_are_inline_and_longer_ones_are_kept_whole() {
        let nginx = "0123456789abcdef0123456789abcdef";
        let caddy = "3f6a1c2e-9b7d-4e8f-a1b2-c3d4e5f60718";
        let at_limit = "x".repeat(INLINE);
        let long = "y".repeat(INLINE + 1);
        for (id, inline) in [
            (nginx, true),
            (caddy, true),
            (at_limit.as_str(), true),
            (long.as_str(), false),
            ("", true),
            ("é-ünïcode", true),
        ] {
            let r = RequestId::new(id);
            assert_eq!(r.is_inline(), inline, "{id}");
            assert_eq!(r.as_str(), id);
            assert_eq!(r.to_string(), id);
            assert_eq!(format!("{r:?}"), format!("{id:?}"));
            assert_eq!(
                serde_json::to_string(&r).expect("json"),
                serde_json::to_string(id).expect("json")
            );
        }
    }

    #[test]
    fn equality_and_hash_are_the_texts() {
        let a = RequestId::new("abc");
        let b = RequestId::from(String::from("abc"));
        assert_eq!(a, b);
        assert_eq!(a, "abc");
        assert!(RequestId::new("abc") < RequestId::new("abd"));
        let set: HashSet<RequestId> = [a].into_iter().collect();
        assert!(set.contains("abc"));
        assert!(!set.contains("abd"));
    }
}
