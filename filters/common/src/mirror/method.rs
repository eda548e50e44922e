//! Which request methods may be mirrored. Copies must not cause side effects by surprise, so
//! only safe methods are mirrored unless the policy says otherwise.

/// Methods mirrored when a policy lists none.
pub const SAFE_METHODS: [&str; 3] = ["GET", "HEAD", "OPTIONS"];

/// The method filter of one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MethodFilter {
    /// Only these (uppercase) methods.
    Only(Vec<String>),
    /// Every method (`allowUnsafeMethods: true`) except those that cannot be copied.
    Any,
}

impl MethodFilter {
    /// Whether a request with `method` (and, if present, an `upgrade` header) may be
    /// mirrored. `CONNECT` and upgrades (WebSocket) are tunnels, never copied.
    pub fn allows(&self, method: &[u8], is_upgrade: bool) -> bool {
        if is_upgrade || method == b"CONNECT" {
            return false;
        }
        match self {
            MethodFilter::Any => !method.is_empty(),
            MethodFilter::Only(list) => list.iter().any(|m| m.as_bytes() == method),
        }
    }
}

/// Checks a method name as written in a policy: an uppercase token.
pub fn validate_method(m: &str) -> Result<(), String> {
    if m.is_empty() {
        return Err("method must not be empty".into());
    }
    if !m
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "method {m:?} must be an uppercase name such as GET or POST"
        ));
    }
    if m == "CONNECT" {
        return Err("CONNECT requests are tunnels and cannot be mirrored".into());
    }
    Ok(())
}

/// Whether `m` is one of the safe methods.
pub fn is_safe(m: &str) -> bool {
    SAFE_METHODS.contains(&m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_filter_allows_only_safe_methods() {
        let f = MethodFilter::Only(SAFE_METHODS.iter().map(|s| s.to_string()).collect());
        assert!(f.allows(b"GET", false));
        assert!(f.allows(b"HEAD", false));
        assert!(f.allows(b"OPTIONS", false));
        for m in [&b"POST"[..], b"PUT", b"DELETE", b"PATCH", b"get", b""] {
            assert!(!f.allows(m, false), "{m:?}");
        }
        assert!(!f.allows(b"GET", true), "upgrades are never mirrored");
    }

    #[test]
    fn any_allows_everything_but_tunnels() {
        assert!(MethodFilter::Any.allows(b"POST", false));
        assert!(MethodFilter::Any.allows(b"DELETE", false));
        assert!(!MethodFilter::Any.allows(b"CONNECT", false));
        assert!(!MethodFilter::Any.allows(b"POST", true));
    }

    #[test]
    fn method_names_are_checked() {
        assert!(validate_method("POST").is_ok());
        assert!(validate_method("post").is_err());
        assert!(validate_method("").is_err());
        assert!(validate_method("CONNECT").is_err());
        assert!(is_safe("HEAD") && !is_safe("POST"));
    }
}
