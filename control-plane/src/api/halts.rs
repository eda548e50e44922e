//! Halts over the API: conversions between [`Halt`] and its message.

use super::pb;
use crate::halt::Halt;
use meshwarden_common::Selector;
use tonic::Status;

/// A halt as the API shows it.
pub fn to_pb(h: &Halt) -> pb::Halt {
    pb::Halt {
        name: h.name.clone(),
        kinds: h.kinds.iter().map(|k| k.to_string()).collect(),
        selector_json: serde_json::to_string(&h.selector).unwrap_or_default(),
        reason: h.reason.clone(),
        created_unix_ms: h.created_unix_ms,
    }
}

/// A validated halt from a request, made at `now_unix_ms`; INVALID_ARGUMENT naming the field.
pub fn from_pb(h: pb::Halt, now_unix_ms: i64) -> Result<Halt, Status> {
    let selector: Selector = match h.selector_json.trim() {
        "" => Selector::default(),
        json => serde_json::from_str(json)
            .map_err(|e| Status::invalid_argument(format!("halt selector: {e}")))?,
    };
    Halt::new(&h.name, &h.kinds, selector, h.reason, now_unix_ms)
        .map_err(|e| Status::invalid_argument(format!("halt {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_bad_fields() {
        let req = pb::Halt {
            name: String::new(),
            kinds: vec!["mirror".into()],
            selector_json: r#"{"clusters":["shop"]}"#.into(),
            reason: "incident 42".into(),
            created_unix_ms: 0,
        };
        let halt = from_pb(req, 7).unwrap();
        let back = to_pb(&halt);
        assert_eq!(back.name, "default");
        assert_eq!(back.kinds, ["MirrorPolicy"]);
        assert_eq!(back.selector_json, r#"{"clusters":["shop"]}"#);
        assert_eq!(back.created_unix_ms, 7);
        let bad = pb::Halt {
            selector_json: r#"{"zones":["x"]}"#.into(),
            ..back.clone()
        };
        let err = from_pb(bad, 0).unwrap_err();
        assert!(
            err.message()
                .starts_with("halt selector: unknown field `zones`"),
            "{}",
            err.message()
        );
        let bad = pb::Halt {
            kinds: vec!["trace".into()],
            ..back
        };
        assert!(from_pb(bad, 0)
            .unwrap_err()
            .message()
            .starts_with("halt kinds: \"trace\""));
    }
}
