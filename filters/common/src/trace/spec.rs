//! `TracePolicy.spec`.

use super::export::ExportSpec;
use crate::error::ValidationError;
use crate::names::HeaderName;
use crate::percentage::Percentage;
use crate::spec::KindSpec;
use serde::{Deserialize, Serialize};

/// A header format the filter writes on the upstream request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TraceFormat {
    /// W3C `traceparent` (+ `tracestate` when there is one to keep).
    W3c,
    /// B3 single header `b3`.
    B3,
    /// B3 multi headers `x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`.
    B3multi,
    /// `x-request-id` (UUID v4), kept when the request already has a valid one.
    RequestId,
}

/// What the proxy does with an incoming valid trace context.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SpanMode {
    /// Act as a hop: keep the trace id and flags, write a fresh parent/span id.
    #[default]
    NewSpan,
    /// Pass the incoming ids through unchanged (only repair or start traces).
    Propagate,
}

/// `spec` of a `TracePolicy` (besides `selector` and `match`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TraceSpec {
    /// Formats to write; default `[w3c, requestId]`.
    #[serde(default = "default_formats")]
    pub formats: Vec<TraceFormat>,
    /// `newSpan` (default) or `propagate`.
    #[serde(default)]
    pub mode: SpanMode,
    /// Percentage of traces started here that are marked sampled (default 100).
    #[serde(default)]
    pub sampling_percentage: Percentage,
    /// If set, the response carries the trace id in this header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header: Option<HeaderName>,
    /// If set, the proxy's own span of each sampled request (`newSpan` mode only) is sent
    /// to a collector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<ExportSpec>,
}

fn default_formats() -> Vec<TraceFormat> {
    vec![TraceFormat::W3c, TraceFormat::RequestId]
}

impl Default for TraceSpec {
    fn default() -> Self {
        Self {
            formats: default_formats(),
            mode: SpanMode::default(),
            sampling_percentage: Percentage::default(),
            response_header: None,
            export: None,
        }
    }
}

impl KindSpec for TraceSpec {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.formats.is_empty() {
            return Err(ValidationError::new(
                "formats",
                "must list at least one format",
            ));
        }
        for (i, f) in self.formats.iter().enumerate() {
            if self.formats[..i].contains(f) {
                return Err(ValidationError::new(
                    format!("formats[{i}]"),
                    format!("{f:?} is listed twice"),
                ));
            }
        }
        if let Some(export) = &self.export {
            if self.mode == SpanMode::Propagate {
                return Err(ValidationError::new(
                    "export",
                    "needs mode newSpan: in propagate mode the proxy adds no span of its own",
                ));
            }
            export.validate().map_err(|e| e.within("export"))?;
        }
        Ok(())
    }
}
