//! Credential redaction for what the hop records keep: query parameters that carry secrets and
//! user info in URLs. Headers that carry credentials (Authorization, Cookie, Set-Cookie,
//! Proxy-Authorization, X-Api-Key) are never kept at all.
use super::Text;

const SECRET_PARAMS: &[&str] = &[
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "auth",
    "authorization",
    "key",
    "api_key",
    "apikey",
    "password",
    "passwd",
    "pass",
    "secret",
    "client_secret",
    "sig",
    "signature",
    "session",
    "sessionid",
    "code",
    "jwt",
];

/// The placeholder written instead of a secret.
pub const REDACTED: &str = "REDACTED";

/// A parameter name of up to 15 bytes as one number: its bytes little-endian, its length in the
/// top byte (so no two names share a number, whatever bytes they hold).
const fn packed(name: &[u8]) -> u128 {
    let mut v = (name.len() as u128) << 120;
    let mut i = 0;
    while i < name.len() {
        v |= (name[i] as u128) << (8 * i);
        i += 1;
    }
    v
}

/// [`SECRET_PARAMS`] packed and sorted (by length first, the top byte): a query parameter's
/// name is looked up as one 16-byte number by a binary search, five comparisons (20
/// case-insensitive slice comparisons cost ~200 instructions a request's path, the 20 packed
/// ones ~60).
const SECRET_PACKED: [u128; SECRET_PARAMS.len()] = {
    let mut all = [0; SECRET_PARAMS.len()];
    let mut i = 0;
    while i < all.len() {
        let name = SECRET_PARAMS[i].as_bytes();
        assert!(name.len() < 16, "a secret parameter name over 15 bytes");
        // Names are compared lower-cased: one written with a capital could never match.
        let mut j = 0;
        while j < name.len() {
            assert!(
                !name[j].is_ascii_uppercase(),
                "a secret parameter name not in lower case"
            );
            j += 1;
        }
        // Inserted in order.
        let v = packed(name);
        let mut at = i;
        while at > 0 && all[at - 1] > v {
            all[at] = all[at - 1];
            at -= 1;
        }
        all[at] = v;
        i += 1;
    }
    all
};

/// The suffixes that make any name a secret one, as [`packed`] without the length: the last
/// bytes of a packed name (shifted down) are compared with them whole.
const SECRET_SUFFIXES: [(u128, usize); 3] = {
    const fn bare(s: &str) -> (u128, usize) {
        (packed(s.as_bytes()) & !(0xff << 120), s.len())
    }
    [bare("token"), bare("secret"), bare("password")]
};

fn is_secret(b: &[u8]) -> bool {
    if b.len() >= 16 {
        // Longer than any listed name: only a suffix can make it secret.
        let ends =
            |suffix: &str| b[b.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes());
        return ends("token") || ends("secret") || ends("password");
    }
    // The lower-cased name as one 16-byte word, its bytes little-endian (no allocation per
    // parameter): the bytes past its end are zero.
    let mut word = [0u8; 16];
    word[..b.len()].copy_from_slice(b);
    word.make_ascii_lowercase();
    let name = u128::from_le_bytes(word);
    let len = b.len();
    SECRET_PACKED
        .binary_search(&(name | (len as u128) << 120))
        .is_ok()
        || SECRET_SUFFIXES
            .iter()
            .any(|&(suffix, n)| len >= n && name >> (8 * (len - n)) == suffix)
}

/// Whether a target holds anything to redact (user info, or a secret query parameter).
fn needs_redaction(target: &str) -> bool {
    // Byte searches for the ASCII delimiters (they are char boundaries): a request's path is
    // looked at on every request, and `str`'s char patterns cost several times more.
    let t = target.as_bytes();
    // No `@`, no user info: one memchr instead of a substring search for most targets.
    let userinfo = memchr::memchr(b'@', t).is_some()
        && memchr::memmem::find(t, b"://").is_some_and(|scheme_end| {
            let rest = &t[scheme_end + 3..];
            let authority_end = memchr::memchr(b'/', rest).unwrap_or(rest.len());
            memchr::memchr(b'@', &rest[..authority_end]).is_some()
        });
    userinfo || memchr::memchr(b'?', t).is_some_and(|at| query_has_secret(&t[at + 1..]))
}

/// Whether a query (what follows the `?`; a `#` ends it) has a parameter with a secret name
/// (the name is what precedes the first `=` of an `&`-separated pair). One pass over its
/// bytes: a query is short, and a search per delimiter (`#`, then `=` in every pair) cost
/// more than the bytes do.
fn query_has_secret(q: &[u8]) -> bool {
    let mut pair = 0;
    let mut eq = None;
    for (i, &b) in q.iter().enumerate() {
        match b {
            b'=' if eq.is_none() => eq = Some(i),
            b'&' | b'#' => {
                if eq.is_some_and(|e| is_secret(&q[pair..e])) {
                    return true;
                }
                if b == b'#' {
                    return false;
                }
                pair = i + 1;
                eq = None;
            }
            _ => {}
        }
    }
    eq.is_some_and(|e| is_secret(&q[pair..e]))
}

/// [`redact_target`] into a [`Text`]: a target with nothing to redact (most) is copied, inline
/// when short.
pub fn redact_target_text(target: &str) -> Text {
    if needs_redaction(target) {
        Text::from(redact_target(target))
    } else {
        Text::from(target)
    }
}

/// Redacts secret query parameter values and URL user info in a request target.
pub fn redact_target(target: &str) -> String {
    // Most targets have no secret in them: one copy, nothing else.
    if !needs_redaction(target) {
        return target.to_owned();
    }
    // Absolute-form targets (`http://user:pass@host/...`).
    let target = match target.find("://") {
        Some(scheme_end) => {
            let rest = &target[scheme_end + 3..];
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!(
                    "{}{}@{}",
                    &target[..scheme_end + 3],
                    REDACTED,
                    &rest[at + 1..]
                ),
                None => target.to_owned(),
            }
        }
        None => target.to_owned(),
    };
    let Some((path, query)) = target.split_once('?') else {
        return target;
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let redacted: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if is_secret(name.as_bytes()) => format!("{name}={REDACTED}"),
            _ => pair.to_owned(),
        })
        .collect();
    let mut out = format!("{path}?{}", redacted.join("&"));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_secrets() {
        assert_eq!(redact_target("/ws?token=abc&x=1"), "/ws?token=REDACTED&x=1");
        assert_eq!(
            redact_target("/a?Access_Token=1&gatewayToken=2&page=3#frag"),
            "/a?Access_Token=REDACTED&gatewayToken=REDACTED&page=3#frag"
        );
        assert_eq!(redact_target("/plain/path"), "/plain/path");
        assert_eq!(redact_target("/?flag"), "/?flag");
        assert_eq!(redact_target("/?password="), "/?password=REDACTED");
        // Case-insensitive, and safe on names that are not ASCII.
        assert_eq!(redact_target("/?API_KEY=k&a=1"), "/?API_KEY=REDACTED&a=1");
        assert_eq!(redact_target("/?ÄccessToken=t"), "/?ÄccessToken=REDACTED");
        assert_eq!(redact_target("/?é=1&ü"), "/?é=1&ü");
        assert_eq!(redact_target("/p?page=2#frag"), "/p?page=2#frag");
    }

    /// What `needs_redaction` was, by `str` patterns: the byte version must agree with it.
    fn needs_redaction_by_str(target: &str) -> bool {
        let userinfo = target.contains('@')
            && target.find("://").is_some_and(|scheme_end| {
                let rest = &target[scheme_end + 3..];
                let authority_end = rest.find('/').unwrap_or(rest.len());
                rest[..authority_end].contains('@')
            });
        userinfo
            || target.split_once('?').is_some_and(|(_, q)| {
                let q = q.split_once('#').map_or(q, |(q, _)| q);
                q.split('&').any(|pair| {
                    pair.split_once('=')
                        .is_some_and(|(n, _)| is_secret(n.as_bytes()))
                })
            })
    }

    #[test]
    fn packed_names_match_as_the_case_insensitive_comparison_does() {
        let reference = |b: &[u8]| {
            let ends = |suffix: &str| {
                b.len() >= suffix.len()
                    && b[b.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
            };
            SECRET_PARAMS
                .iter()
                .any(|p| p.as_bytes().eq_ignore_ascii_case(b))
                || ends("token")
                || ends("secret")
                || ends("password")
        };
        // Every listed name in random case, cut short, lengthened (with a NUL too), and
        // random bytes around the listed lengths.
        let mut next = crate::test_rng::xorshift(0x5EC2_E75E);
        let mut names: Vec<Vec<u8>> = Vec::new();
        for p in SECRET_PARAMS {
            let b = p.as_bytes();
            names.push(b.to_vec());
            names.push(b[..b.len() - 1].to_vec());
            names.push([b, b"\0"].concat());
            names.push([b, b"x"].concat());
            names.push([b"x", b].concat());
        }
        for _ in 0..20_000 {
            let len = (next() % 18) as usize;
            names.push((0..len).map(|_| (next() % 256) as u8).collect());
            let p = SECRET_PARAMS[(next() % SECRET_PARAMS.len() as u64) as usize].as_bytes();
            names.push(
                p.iter()
                    .map(|c| {
                        if next().is_multiple_of(2) {
                            c.to_ascii_uppercase()
                        } else {
                            *c
                        }
                    })
                    .collect(),
            );
        }
        for n in &names {
            assert_eq!(
                is_secret(n),
                reference(n),
                "{:?}",
                String::from_utf8_lossy(n)
            );
        }
        assert!(names.iter().filter(|n| is_secret(n)).count() > 20_000);
    }

    #[test]
    fn byte_search_agrees_with_the_str_patterns() {
        let pieces = [
            "/",
            "?",
            "#",
            "&",
            "=",
            "@",
            "://",
            "http",
            "token",
            "Token",
            "page",
            "x",
            "é",
            "ü=",
            "key",
            "a@b",
            "sessionid",
            "",
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut checked = 0;
        for _ in 0..50_000 {
            let mut t = String::new();
            for _ in 0..(state % 9) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                t.push_str(pieces[(state % pieces.len() as u64) as usize]);
            }
            state = state.wrapping_add(1);
            assert_eq!(needs_redaction(&t), needs_redaction_by_str(&t), "{t:?}");
            // Nothing to redact: kept as it is; something: changed.
            assert_eq!(redact_target(&t) != t, needs_redaction(&t), "{t:?}");
            checked += u32::from(needs_redaction(&t));
        }
        assert!(checked > 1000, "{checked} targets with something to redact");
    }

    #[test]
    fn userinfo() {
        assert_eq!(
            redact_target("http://admin:hunter2@example.test/x?key=1"),
            "http://REDACTED@example.test/x?key=REDACTED"
        );
        assert_eq!(
            redact_target("http://example.test/a@b"),
            "http://example.test/a@b"
        );
    }
}
