//! `MirrorPolicy.spec`.

use super::diff::DiffSpec;
use super::headers::{validate_header_value, HeaderRewrite};
use super::method::{validate_method, MethodFilter, SAFE_METHODS};
use super::plan::{CompiledMirror, CompiledTarget, Sticky};
use super::target::{HostPort, MirrorTarget, ResolvedTarget};
use crate::duration::DurationSpec;
use crate::error::ValidationError;
use crate::names::HeaderName;
use crate::percentage::Percentage;
use crate::spec::KindSpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Default `maxBodyBytes`: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
/// Largest `maxBodyBytes`: 16 MiB.
pub const MAX_MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;
/// Default marker header on copies.
pub const DEFAULT_MARKER_HEADER: &str = "x-meshwarden-mirror";
/// Default call-out timeout for a copy.
pub const DEFAULT_TIMEOUT: DurationSpec = DurationSpec::from_millis(1_000);
/// Longest call-out timeout for a copy.
const MAX_TIMEOUT_MS: u64 = 3_600_000;
/// Most targets per policy.
pub const MAX_TARGETS: usize = 8;
/// Largest `maxPerSecond`.
pub const MAX_PER_SECOND: u32 = 1_000_000;

pub use crate::percentage::PercentSpec;

/// One entry of `mirrors`: where to send copies and which share of requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorEntry {
    pub target: MirrorTarget,
    /// Share of matching requests copied to this target (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<PercentSpec>,
}

/// Sticky sampling: the draw is a hash of this header's value (and the seed), so a given
/// user is always in or always out. Requests without the header are sampled at random.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StickySpec {
    pub header: HeaderName,
    #[serde(default)]
    pub seed: u64,
}

fn yes() -> bool {
    true
}

fn default_max_body() -> u64 {
    DEFAULT_MAX_BODY_BYTES
}

fn default_timeout() -> DurationSpec {
    DEFAULT_TIMEOUT
}

fn default_marker() -> Option<HeaderName> {
    HeaderName::try_from(DEFAULT_MARKER_HEADER.to_string()).ok()
}

/// `spec` of a `MirrorPolicy` (besides `selector` and `match`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorSpec {
    /// Targets, each with its own percentage (Istio `mirrors`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<MirrorEntry>,
    /// Single-target shorthand (Istio `mirror`); excludes `mirrors`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Box<MirrorTarget>>,
    /// Percentage for `mirror` (Istio `mirrorPercentage`; default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percentage: Option<PercentSpec>,
    /// Sticky sampling by a header; random when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Box<StickySpec>>,
    /// Most copies per second across all of the proxy's workers (all targets together).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_second: Option<u32>,
    /// Methods mirrored (default GET, HEAD, OPTIONS). Listing a method allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Mirror every method (except CONNECT and upgrades); excludes `methods`.
    #[serde(default)]
    pub allow_unsafe_methods: bool,
    /// Requests with a larger body are not mirrored (default 1 MiB).
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    /// Call-out timeout for a copy (default `1s`).
    #[serde(default = "default_timeout")]
    pub timeout: DurationSpec,
    /// Append `-shadow` to the copy's host, as Envoy does (default true).
    #[serde(default = "yes")]
    pub host_suffix: bool,
    /// Header set on copies to the policy name (default `x-meshwarden-mirror`; `null` to
    /// omit).
    #[serde(default = "default_marker")]
    pub marker_header: Option<HeaderName>,
    /// Headers set on copies (replacing original values).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add_headers: BTreeMap<HeaderName, String>,
    /// Headers removed from copies (e.g. `x-api-key`). The credential headers
    /// ([`CREDENTIAL_HEADERS`]) are removed anyway unless listed in `keep_headers`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_headers: Vec<HeaderName>,
    /// Credential headers copies keep on purpose (by default they are dropped, so a mirror
    /// target never sees users' credentials).
    /// (Boxed: most policies keep none, and the spec stays small.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_headers: Option<Box<Vec<HeaderName>>>,
    /// Compare each mirror's response with the primary's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diff: Option<Box<DiffSpec>>,
}

/// Headers dropped from copies unless a policy keeps them (`keepHeaders`): a mirror target
/// is often a build under test, and should not receive users' credentials.
pub const CREDENTIAL_HEADERS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

impl Default for MirrorSpec {
    fn default() -> Self {
        Self {
            mirrors: Vec::new(),
            mirror: None,
            mirror_percentage: None,
            sticky: None,
            max_per_second: None,
            methods: None,
            allow_unsafe_methods: false,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            timeout: DEFAULT_TIMEOUT,
            host_suffix: true,
            marker_header: default_marker(),
            add_headers: BTreeMap::new(),
            remove_headers: Vec::new(),
            keep_headers: None,
            diff: None,
        }
    }
}

impl MirrorSpec {
    /// The targets with their percentages, from `mirrors` or the `mirror` shorthand,
    /// with the field path of each target (for errors).
    fn entries(&self) -> Vec<(String, &MirrorTarget, Percentage)> {
        let pct = |p: &Option<PercentSpec>| p.map_or(Percentage::ALL, |p| p.value);
        match &self.mirror {
            Some(t) => vec![("mirror".to_string(), t, pct(&self.mirror_percentage))],
            None => self
                .mirrors
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    (
                        format!("mirrors[{i}].target"),
                        &e.target,
                        pct(&e.percentage),
                    )
                })
                .collect(),
        }
    }

    /// The `host:port` targets (valid ones only) for which the control plane must push a
    /// cluster.
    pub fn host_targets(&self) -> Vec<HostPort> {
        self.host_targets_at().into_iter().map(|(_, h)| h).collect()
    }

    /// [`MirrorSpec::host_targets`] with the field of each (`mirrors[0].target.host`),
    /// relative to `spec`.
    pub fn host_targets_at(&self) -> Vec<(String, HostPort)> {
        self.entries()
            .into_iter()
            .filter_map(|(field, t, _)| match t.resolve() {
                Ok(ResolvedTarget::Host(h)) => Some((format!("{field}.host"), h)),
                _ => None,
            })
            .collect()
    }

    /// Validates and compiles for the filter. Error fields are relative to `spec`.
    pub fn compile(&self) -> Result<CompiledMirror, ValidationError> {
        let targets = self.compile_targets()?;
        let methods = self.compile_methods()?;
        let headers = self.compile_headers()?;
        if self.max_body_bytes > MAX_MAX_BODY_BYTES {
            return Err(ValidationError::new(
                "maxBodyBytes",
                format!("must be at most {MAX_MAX_BODY_BYTES} (16 MiB)"),
            ));
        }
        if !(1..=MAX_TIMEOUT_MS).contains(&self.timeout.as_millis()) {
            return Err(ValidationError::new("timeout", "must be from 1ms to 1h"));
        }
        if let Some(n) = self.max_per_second {
            if n == 0 || n > MAX_PER_SECOND {
                return Err(ValidationError::new(
                    "maxPerSecond",
                    format!(
                        "must be from 1 to {MAX_PER_SECOND}; remove the policy to stop mirroring"
                    ),
                ));
            }
        }
        let diff = match &self.diff {
            Some(d) => Some(d.compile().map_err(|e| e.within("diff"))?),
            None => None,
        };
        Ok(CompiledMirror {
            targets,
            sticky: self.sticky.as_ref().map(|s| Sticky {
                header: s.header.as_str().to_string(),
                seed: s.seed,
            }),
            methods,
            max_body_bytes: self.max_body_bytes as usize,
            max_per_second: self.max_per_second,
            timeout: self.timeout,
            headers,
            diff,
        })
    }

    fn compile_targets(&self) -> Result<Vec<CompiledTarget>, ValidationError> {
        if self.mirror.is_some() && !self.mirrors.is_empty() {
            return Err(ValidationError::new(
                "mirror",
                "use either `mirror` (with `mirrorPercentage`) or `mirrors`, not both",
            ));
        }
        if self.mirror_percentage.is_some() && self.mirror.is_none() {
            return Err(ValidationError::new(
                "mirrorPercentage",
                "only applies with `mirror`; in `mirrors` give each entry a `percentage`",
            ));
        }
        let entries = self.entries();
        if entries.is_empty() {
            return Err(ValidationError::new(
                "mirrors",
                "must list at least one target ({target: {cluster: NAME}} or {target: {host: HOST:PORT}})",
            ));
        }
        if entries.len() > MAX_TARGETS {
            return Err(ValidationError::new(
                "mirrors",
                format!("at most {MAX_TARGETS} targets, got {}", entries.len()),
            ));
        }
        let mut out: Vec<CompiledTarget> = Vec::new();
        for (field, target, percentage) in entries {
            let resolved = target.resolve().map_err(|e| e.within(&field))?;
            let cluster = resolved.cluster_name();
            if out.iter().any(|t| t.cluster == cluster) {
                return Err(ValidationError::new(
                    field,
                    format!("{resolved} is listed twice"),
                ));
            }
            out.push(CompiledTarget {
                target: resolved,
                cluster,
                percentage,
            });
        }
        Ok(out)
    }

    fn compile_methods(&self) -> Result<MethodFilter, ValidationError> {
        match (&self.methods, self.allow_unsafe_methods) {
            (Some(_), true) => Err(ValidationError::new(
                "allowUnsafeMethods",
                "mirrors every method; remove it or remove `methods`",
            )),
            (None, true) => Ok(MethodFilter::Any),
            (None, false) => Ok(MethodFilter::Only(
                SAFE_METHODS.iter().map(|m| m.to_string()).collect(),
            )),
            (Some(list), false) => {
                if list.is_empty() {
                    return Err(ValidationError::new(
                        "methods",
                        "must list at least one method; remove the policy to stop mirroring",
                    ));
                }
                for (i, m) in list.iter().enumerate() {
                    validate_method(m)
                        .map_err(|msg| ValidationError::new(format!("methods[{i}]"), msg))?;
                    if list[..i].contains(m) {
                        return Err(ValidationError::new(
                            format!("methods[{i}]"),
                            format!("{m} is listed twice"),
                        ));
                    }
                }
                Ok(MethodFilter::Only(list.clone()))
            }
        }
    }

    fn compile_headers(&self) -> Result<HeaderRewrite, ValidationError> {
        let pseudo = |h: &HeaderName| h.as_str().starts_with(':');
        if let Some(m) = &self.marker_header {
            if pseudo(m) {
                return Err(ValidationError::new(
                    "markerHeader",
                    "must not be a pseudo-header",
                ));
            }
        }
        for (name, value) in &self.add_headers {
            let field = format!("addHeaders.{name}");
            if pseudo(name) {
                return Err(ValidationError::new(
                    field,
                    "pseudo-headers cannot be set; use hostSuffix for :authority",
                ));
            }
            if self.marker_header.as_ref() == Some(name) {
                return Err(ValidationError::new(
                    field,
                    "is the marker header, which the filter sets",
                ));
            }
            validate_header_value(value).map_err(|m| ValidationError::new(field, m))?;
        }
        for (i, name) in self.remove_headers.iter().enumerate() {
            let field = format!("removeHeaders[{i}]");
            if pseudo(name) {
                return Err(ValidationError::new(
                    field,
                    "pseudo-headers cannot be removed",
                ));
            }
            if self.add_headers.contains_key(name) {
                return Err(ValidationError::new(
                    field,
                    format!("{name} is also in addHeaders"),
                ));
            }
        }
        let keep: &[HeaderName] = self.keep_headers.as_deref().map_or(&[], |k| k.as_slice());
        for (i, name) in keep.iter().enumerate() {
            let field = format!("keepHeaders[{i}]");
            if !CREDENTIAL_HEADERS.contains(&name.as_str()) {
                return Err(ValidationError::new(
                    field,
                    format!(
                        "{name} is kept anyway; only the credential headers ({}) are dropped by default",
                        CREDENTIAL_HEADERS.join(", ")
                    ),
                ));
            }
            if self.remove_headers.contains(name) {
                return Err(ValidationError::new(
                    field,
                    format!("{name} is also in removeHeaders"),
                ));
            }
        }
        let mut remove = self.remove_headers.clone();
        for credential in CREDENTIAL_HEADERS {
            let name = HeaderName::try_from(credential.to_string())
                .expect("credential header names are valid");
            if !keep.contains(&name) && !remove.contains(&name) {
                remove.push(name);
            }
        }
        Ok(HeaderRewrite {
            host_suffix: self.host_suffix,
            marker: self.marker_header.clone(),
            add: self
                .add_headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            remove,
        })
    }
}

impl KindSpec for MirrorSpec {
    fn validate(&self) -> Result<(), ValidationError> {
        self.compile().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::from_value;
    use serde_json::{json, Value};

    fn parse(v: Value) -> Result<MirrorSpec, ValidationError> {
        let s: MirrorSpec = from_value("spec", &v)?;
        s.validate().map_err(|e| e.within("spec"))?;
        Ok(s)
    }

    fn err(v: Value) -> ValidationError {
        parse(v).unwrap_err()
    }

    #[test]
    fn spec_stays_small_enough_to_sit_in_an_enum() {
        assert!(
            std::mem::size_of::<MirrorSpec>() <= 200,
            "{}",
            std::mem::size_of::<MirrorSpec>()
        );
    }

    #[test]
    fn minimal_policy_gets_safe_defaults() {
        let s = parse(json!({"mirrors": [{"target": {"cluster": "shadow"}}]})).unwrap();
        let c = s.compile().unwrap();
        assert_eq!(c.targets.len(), 1);
        assert_eq!(c.targets[0].cluster, "shadow");
        assert_eq!(c.targets[0].percentage, Percentage::ALL);
        assert_eq!(c.max_body_bytes, 1024 * 1024);
        assert_eq!(c.timeout.as_millis(), 1_000);
        assert!(c.headers.host_suffix);
        assert_eq!(
            c.headers.marker.as_ref().unwrap().as_str(),
            "x-meshwarden-mirror"
        );
        assert!(c.methods.allows(b"GET", false) && !c.methods.allows(b"POST", false));
        assert!(c.diff.is_none());
    }

    #[test]
    fn credentials_are_dropped_unless_kept() {
        let remove = |v| {
            let names: Vec<String> = parse(v)
                .unwrap()
                .compile()
                .unwrap()
                .headers
                .remove
                .iter()
                .map(|h| h.as_str().to_string())
                .collect();
            names
        };
        let target = json!([{"target": {"cluster": "shadow"}}]);
        assert_eq!(
            remove(json!({"mirrors": target})),
            ["authorization", "cookie", "proxy-authorization"]
        );
        assert_eq!(
            remove(
                json!({"mirrors": target, "keepHeaders": ["cookie"], "removeHeaders": ["x-key"]})
            ),
            ["x-key", "authorization", "proxy-authorization"]
        );
        let bad = err(json!({"mirrors": target, "keepHeaders": ["x-other"]}));
        assert_eq!(bad.field, "spec.keepHeaders[0]");
        let both =
            err(json!({"mirrors": target, "keepHeaders": ["cookie"], "removeHeaders": ["cookie"]}));
        assert_eq!(both.field, "spec.keepHeaders[0]");
    }

    #[test]
    fn full_policy_parses_and_round_trips() {
        let v = json!({
            "mirrors": [
                {"target": {"cluster": "shadow"}, "percentage": {"value": 50}},
                {"target": {"host": "127.0.0.1:9000"}, "percentage": {"value": 12.5}}
            ],
            "sticky": {"header": "X-User", "seed": 7},
            "maxPerSecond": 100,
            "methods": ["GET", "POST"],
            "maxBodyBytes": 2048,
            "timeout": "500ms",
            "hostSuffix": false,
            "markerHeader": null,
            "addHeaders": {"X-Env": "shadow"},
            "removeHeaders": ["authorization"],
            "diff": {"headers": ["content-type"], "body": "json", "ignoreJsonFields": ["$.timestamp", "id"]}
        });
        let s = parse(v).unwrap();
        let c = s.compile().unwrap();
        assert_eq!(c.targets[1].cluster, "meshwarden_mirror_127.0.0.1_9000");
        assert!(c.headers.marker.is_none());
        assert!(c.methods.allows(b"POST", false));
        assert_eq!(c.sticky.as_ref().unwrap().header, "x-user");
        let again = parse(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(again, s);
        assert_eq!(
            s.host_targets(),
            vec![HostPort::parse("127.0.0.1:9000").unwrap()]
        );
    }

    #[test]
    fn istio_shorthand_is_accepted() {
        let s = parse(
            json!({"mirror": {"host": "shadow.local:8080"}, "mirrorPercentage": {"value": 5}}),
        )
        .unwrap();
        let c = s.compile().unwrap();
        assert_eq!(c.targets[0].percentage.value(), 5.0);
        assert_eq!(s.host_targets().len(), 1);
        let e = err(json!({"mirror": {"cluster": "a"}, "mirrors": [{"target": {"cluster": "b"}}]}));
        assert_eq!(e.field, "spec.mirror");
        let e = err(
            json!({"mirrors": [{"target": {"cluster": "b"}}], "mirrorPercentage": {"value": 5}}),
        );
        assert_eq!(e.field, "spec.mirrorPercentage");
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(err(json!({})).field, "spec.mirrors");
        assert_eq!(
            err(json!({"mirrors": [{"target": {"host": "nope"}}]})).field,
            "spec.mirrors[0].target.host"
        );
        assert_eq!(
            err(json!({"mirrors": [{"target": {"cluster": "a"}}, {"target": {"cluster": "a"}}]}))
                .field,
            "spec.mirrors[1].target"
        );
        assert_eq!(
            err(json!({"mirrors": [{"target": {"cluster": "a"}, "percentage": {"value": 101}}]}))
                .field,
            "spec.mirrors[0].percentage.value"
        );
        let base = |extra: Value| {
            let mut v = json!({"mirrors": [{"target": {"cluster": "a"}}]});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            err(v).field
        };
        assert_eq!(base(json!({"methods": ["get"]})), "spec.methods[0]");
        assert_eq!(base(json!({"methods": []})), "spec.methods");
        assert_eq!(
            base(json!({"methods": ["GET"], "allowUnsafeMethods": true})),
            "spec.allowUnsafeMethods"
        );
        assert_eq!(
            base(json!({"maxBodyBytes": 999_999_999})),
            "spec.maxBodyBytes"
        );
        assert_eq!(base(json!({"maxPerSecond": 0})), "spec.maxPerSecond");
        assert_eq!(base(json!({"timeout": "soon"})), "spec.timeout");
        assert_eq!(base(json!({"timeout": "0s"})), "spec.timeout");
        assert_eq!(base(json!({"timeout": "2h"})), "spec.timeout");
        assert_eq!(base(json!({"timeout": "0.5ms"})), "spec.timeout");
        assert_eq!(
            base(json!({"addHeaders": {":authority": "x"}})),
            "spec.addHeaders.:authority"
        );
        assert_eq!(
            base(json!({"addHeaders": {"x-a": "a\nb"}})),
            "spec.addHeaders.x-a"
        );
        assert_eq!(
            base(json!({"removeHeaders": [":path"]})),
            "spec.removeHeaders[0]"
        );
        assert_eq!(
            base(json!({"addHeaders": {"x-a": "1"}, "removeHeaders": ["x-a"]})),
            "spec.removeHeaders[0]"
        );
        assert_eq!(
            base(json!({"diff": {"ignoreJsonFields": ["id"]}})),
            "spec.diff.ignoreJsonFields"
        );
        assert_eq!(base(json!({"bogus": 1})), "spec.bogus");
    }

    #[test]
    fn unsafe_methods_need_an_explicit_opt_in() {
        let s =
            parse(json!({"mirrors": [{"target": {"cluster": "a"}}], "allowUnsafeMethods": true}))
                .unwrap();
        let c = s.compile().unwrap();
        assert!(c.methods.allows(b"DELETE", false));
        assert!(!c.methods.allows(b"CONNECT", false));
    }
}
