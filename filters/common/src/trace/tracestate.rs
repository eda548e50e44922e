//! The W3C `tracestate` header: vendor entries kept alongside a valid `traceparent`.
//!
//! Grammar and limits as in W3C Trace Context Level 2 (§3.3 "tracestate Header Field
//! Values"):
//!
//! ```abnf
//! list        = list-member 0*31( OWS "," OWS list-member )
//! list-member = (key "=" value) / OWS
//! key         = ( lcalpha / DIGIT ) 0*255 ( keychar )
//! keychar     = lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@"
//! value       = 0*255(chr) nblk-chr
//! nblk-chr    = %x21-2B / %x2D-3C / %x3E-7E
//! chr         = %x20 / nblk-chr
//! ```
//!
//! Level 2 has no separate `tenant@system` rule any more (Level 1 limited the tenant to 241
//! and the system to 14 characters and required a simple key to start with a letter): any
//! key of 1 to 256 of those characters that starts with a letter or digit is valid, `@`
//! anywhere after the first character included. Leading spaces of a value are part of it;
//! trailing ones are optional whitespace.

use super::traceparent::trim_ows;

/// Header name.
pub const TRACESTATE: &str = "tracestate";
/// Most entries propagated; extra entries are dropped from the right.
pub const MAX_ENTRIES: usize = 32;
/// Longest key and longest value.
const MAX_KEY_LEN: usize = 256;
const MAX_VALUE_LEN: usize = 256;

/// The valid entries of a request's `tracestate` headers, in order, without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceState {
    entries: Vec<(String, String)>,
}

/// A cleaned `tracestate` and how many members were dropped on the way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedTraceState {
    pub state: TraceState,
    /// Members dropped as malformed, as duplicate keys, or beyond [`MAX_ENTRIES`].
    pub dropped: usize,
}

impl TraceState {
    /// Combines every `tracestate` header value (in order, as if joined with `,`), drops bad
    /// members one by one, keeps the first of duplicate keys and at most [`MAX_ENTRIES`]
    /// entries. Empty members are ignored.
    pub fn parse<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> ParsedTraceState {
        let mut entries: Vec<(String, String)> = Vec::new();
        let mut dropped = 0;
        for member in values.into_iter().flat_map(|v| v.split(|b| *b == b',')) {
            let member = trim_ows(member);
            if member.is_empty() {
                continue;
            }
            match parse_member(member) {
                Some((k, _)) if entries.iter().any(|(seen, _)| seen == k) => dropped += 1,
                Some(_) if entries.len() == MAX_ENTRIES => dropped += 1,
                Some((k, v)) => entries.push((k.to_string(), v.to_string())),
                None => dropped += 1,
            }
        }
        ParsedTraceState {
            state: Self { entries },
            dropped,
        }
    }

    /// Whether no entry is left.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The header value: `key=value` entries joined with `,`.
    pub fn header_value(&self) -> String {
        let mut out = String::new();
        for (i, (k, v)) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push('=');
            out.push_str(v);
        }
        out
    }
}

/// What to send upstream in place of a request's `tracestate` fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceStateAction {
    /// Leave the incoming fields exactly as they are.
    Untouched,
    /// Replace them with this single value.
    Set(String),
    /// Remove them.
    Remove,
}

impl TraceState {
    /// The `tracestate` to send with a valid incoming `traceparent`, and how many members
    /// were dropped. Level 2 ("Mutating the traceparent Field"): *if the value of the
    /// `traceparent` field wasn't changed before propagation, `tracestate` MUST NOT be
    /// modified as well* — so with `traceparent_unchanged` (a pass-through, e.g. `propagate`
    /// mode) the fields are left exactly as received: no member dropped, de-duplicated,
    /// truncated or re-joined, since none was created here. Otherwise (a new parent id) the
    /// list is cleaned as [`TraceState::parse`] does, which the spec allows ("invalid
    /// `tracestate` entries MAY also be discarded"), and an empty one is removed.
    pub fn outgoing<'a>(
        values: impl IntoIterator<Item = &'a [u8]>,
        traceparent_unchanged: bool,
    ) -> (TraceStateAction, usize) {
        if traceparent_unchanged {
            return (TraceStateAction::Untouched, 0);
        }
        let ParsedTraceState { state, dropped } = Self::parse(values);
        let action = if state.is_empty() {
            TraceStateAction::Remove
        } else {
            TraceStateAction::Set(state.header_value())
        };
        (action, dropped)
    }
}

/// Splits `key=value` and checks both; `None` if either is malformed.
fn parse_member(member: &[u8]) -> Option<(&str, &str)> {
    let eq = member.iter().position(|b| *b == b'=')?;
    let (key, value) = (&member[..eq], &member[eq + 1..]);
    if !valid_key(key) || !valid_value(value) {
        return None;
    }
    // Both parts are ASCII once validated.
    Some((
        std::str::from_utf8(key).ok()?,
        std::str::from_utf8(value).ok()?,
    ))
}

/// `key = ( lcalpha / DIGIT ) 0*255 ( keychar )`.
fn valid_key(key: &[u8]) -> bool {
    match key.split_first() {
        Some((first, rest)) => {
            key.len() <= MAX_KEY_LEN
                && (first.is_ascii_lowercase() || first.is_ascii_digit())
                && rest.iter().all(|c| key_char(*c))
        }
        None => false,
    }
}

/// `keychar`: the characters allowed after the first one of a key.
fn key_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'*' | b'/' | b'@')
}

/// `value`: 1 to 256 printable ASCII characters other than `,` and `=`, not ending in a
/// space.
fn valid_value(value: &[u8]) -> bool {
    let printable = |c: &u8| (0x20..=0x7e).contains(c) && *c != b',' && *c != b'=';
    !value.is_empty()
        && value.len() <= MAX_VALUE_LEN
        && value.iter().all(printable)
        && value.last() != Some(&b' ')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(values: &[&str]) -> ParsedTraceState {
        TraceState::parse(values.iter().map(|v| v.as_bytes()))
    }

    #[test]
    fn combines_headers_and_trims_ows() {
        let p = parse(&["foo=1, bar=2 ", "\tbaz=3,,", " "]);
        assert_eq!(p.state.header_value(), "foo=1,bar=2,baz=3");
        assert_eq!(p.dropped, 0);
        assert_eq!(p.state.get("bar"), Some("2"));
    }

    #[test]
    fn empty_header_is_empty_state() {
        let p = parse(&[""]);
        assert!(p.state.is_empty());
        assert_eq!(p.dropped, 0);
    }

    #[test]
    fn duplicates_keep_the_first() {
        let p = parse(&["foo=1,bar=2", "foo=3"]);
        assert_eq!(p.state.header_value(), "foo=1,bar=2");
        assert_eq!(p.dropped, 1);
    }

    #[test]
    fn at_most_32_entries_dropping_from_the_right() {
        let members: Vec<String> = (0..40).map(|i| format!("k{i}=v{i}")).collect();
        let header = members.join(",");
        let p = parse(&[&header]);
        assert_eq!(p.state.len(), MAX_ENTRIES);
        assert_eq!(p.dropped, 8);
        assert_eq!(p.state.get("k31"), Some("v31"));
        assert_eq!(p.state.get("k32"), None);
        // Exactly 32 is fine.
        let p = parse(&[&members[..32].join(",")]);
        assert_eq!((p.state.len(), p.dropped), (32, 0));
    }

    #[test]
    fn bad_members_are_dropped_one_by_one() {
        let long_key = format!("a{}", "b".repeat(256));
        let long_value = "v".repeat(257);
        let bad = [
            "Foo=1",      // uppercase key
            "_foo=1",     // key starting with neither a letter nor a digit
            "*foo=1",     // ...
            "foo",        // no '='
            "=1",         // empty key
            "foo=",       // empty value
            "foo=a=b",    // '=' in value
            "foo=a,b",    // (',' splits members: "b" has no '=')
            "foo=bar ",   // trailing space inside the member is trimmed as OWS...
            "fo o=1",     // space in key
            "@sys=1",     // key starting with '@'
            "foo@Sys=1",  // uppercase after '@'
            "foo.bar=1",  // '.' is no keychar
            "foo=\u{7f}", // DEL
            "foo=\ttab",  // tab inside a value
            "foo=é",      // non-ASCII
            &long_key,
            &format!("k={long_value}"),
        ];
        for b in bad {
            let p = parse(&[&format!("ok=1,{b},ok2=2")]);
            if b == "foo=a,b" {
                // "foo=a" is fine, "b" is not.
                assert_eq!(p.state.header_value(), "ok=1,foo=a,ok2=2");
                assert_eq!(p.dropped, 1);
                continue;
            }
            if b == "foo=bar " {
                // ...so this one is actually fine.
                assert_eq!(p.dropped, 0);
                continue;
            }
            assert_eq!(p.dropped, 1, "{b:?}");
            assert_eq!(p.state.header_value(), "ok=1,ok2=2", "{b:?}");
        }
    }

    #[test]
    fn grammar_edges_that_are_valid() {
        let key256 = format!("a{}", "b".repeat(255));
        let value256 = format!("{}x", " ".repeat(255));
        for good in [
            "a=1",
            "a1_-*/=1",
            "1tenant@sys=1",
            "t@s_-*/123456789=x",
            "foo=a b",
            "foo=!\"#$%&'()*+-./:;<>?@[\\]^_`{|}~",
            &format!("{key256}=1"),
            &format!("k={value256}"),
            // Level 2: a key may start with a digit...
            "1foo=1",
            "0=1",
            // ...and has no tenant/system split: '@' is a keychar, with no length rules
            // for either side and possibly more than once or at the end.
            "foo@=1",
            "a@b@c=1",
            "t@s12345678901234=1",
            "tenant@9system=1",
            &format!("t{}@s=1", "a".repeat(250)),
            &format!("t@{}=1", "s".repeat(200)),
        ] {
            let p = parse(&[good]);
            assert_eq!((p.state.len(), p.dropped), (1, 0), "{good:?}");
        }
        // 257 characters is one too many, wherever the '@' is.
        let key257 = format!("t{}@s=1", "a".repeat(254));
        assert_eq!(parse(&[&key257]).dropped, 1);
        let value257 = format!("k={}", "v".repeat(257));
        assert_eq!(parse(&[&value257]).dropped, 1);
    }

    #[test]
    fn entries_are_kept_verbatim_with_leading_spaces_of_values() {
        // Leading spaces of a value are part of it; trailing ones are optional whitespace.
        let p = parse(&["a=  x y  ,b= 1"]);
        assert_eq!(p.state.get("a"), Some("  x y"));
        assert_eq!(p.state.header_value(), "a=  x y,b= 1");
        assert_eq!(p.dropped, 0);
    }

    #[test]
    fn a_passed_through_traceparent_leaves_tracestate_untouched() {
        // Bad, duplicate, odd-looking and more than 32 members: none was created here, so
        // none is altered or dropped while traceparent passes through unchanged.
        let mut members: Vec<String> = (0..40).map(|i| format!("k{i}=v{i}")).collect();
        members.extend(["BAD=1".into(), "k0=dup".into(), "x=  spaced".into()]);
        let header = members.join(" ,  ");
        let values = [header.as_bytes(), &b"a=1"[..], &b""[..]];
        assert_eq!(
            TraceState::outgoing(values, true),
            (TraceStateAction::Untouched, 0)
        );
        // With a new parent id the list may be (and is) cleaned.
        let (action, dropped) = TraceState::outgoing(values, false);
        let TraceStateAction::Set(v) = action else {
            panic!("cleaned list expected")
        };
        assert!(v.starts_with("k0=v0,k1=v1,") && !v.contains("BAD"), "{v}");
        assert_eq!(dropped, 40 + 3 + 1 - 32);
        assert_eq!(
            TraceState::outgoing([&b"BAD=1"[..]], false),
            (TraceStateAction::Remove, 1)
        );
        assert_eq!(
            TraceState::outgoing([&b"BAD=1"[..]], true),
            (TraceStateAction::Untouched, 0)
        );
    }

    #[test]
    fn non_utf8_member_is_dropped() {
        let p = TraceState::parse([&b"a=1,b=\xff\xfe,c=3"[..]]);
        assert_eq!(p.state.header_value(), "a=1,c=3");
        assert_eq!(p.dropped, 1);
    }
}
