//! W3C trace context carried in an instance's metadata, so that a trace
//! started around a request follows it into the workflow it starts.
//!
//! With the `opentelemetry` feature, starting an instance
//! ([`Client::start`](crate::workflow::Client::start), or a workflow starting
//! a sub-workflow) writes the OpenTelemetry context of the current `tracing`
//! span (through tracing-opentelemetry) into the instance's metadata as the
//! keys `traceparent` and `tracestate` (the W3C header names and formats).
//! The worker reads them back and makes that context the parent of the
//! `workflow_task` span and of each `activity` span it opens for the
//! instance. Metadata is a JSON object shared with go-workflows: the keys
//! are added next to the existing ones, never replacing one the caller set.
//!
//! Without the feature every function here is a no-op and nothing is
//! stored, so callers need no `cfg` of their own. When the current span has
//! no valid OpenTelemetry context (no subscriber layer, or no span at all),
//! nothing is stored either, and the worker's spans start traces of their
//! own.

use serde::Deserialize;
use serde_json::Value;

/// The metadata key of the W3C `traceparent` value.
pub(crate) const TRACEPARENT: &str = "traceparent";
/// The metadata key of the W3C `tracestate` value.
pub(crate) const TRACESTATE: &str = "tracestate";

/// The trace context found in an instance's metadata: what an activity task
/// carries from its owner, so that restoring it needs no second read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub(crate) struct TraceCarrier {
    /// The W3C `traceparent` value, if the instance has one.
    #[serde(default)]
    traceparent: Option<String>,
    /// The W3C `tracestate` value, if any.
    #[serde(default)]
    tracestate: Option<String>,
}

impl TraceCarrier {
    /// The trace context of `metadata`; empty for metadata that is not an
    /// object or holds no string `traceparent`.
    pub(crate) fn from_metadata(metadata: Option<&Value>) -> Self {
        let field = |key: &str| {
            metadata
                .and_then(|m| m.get(key))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        TraceCarrier {
            traceparent: field(TRACEPARENT),
            tracestate: field(TRACESTATE),
        }
    }

    /// The trace context of metadata as stored (JSON bytes). Only the two
    /// keys are deserialized; metadata that is not a JSON object (another
    /// writer's) yields an empty carrier rather than an error, since a
    /// missing parent must never fail a task.
    pub(crate) fn from_metadata_bytes(bytes: Option<&[u8]>) -> Self {
        bytes
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default()
    }
}

/// Adds the current `tracing` span's trace context to `metadata` (see the
/// module's documentation); a no-op without the `opentelemetry` feature.
pub(crate) fn inject_current(metadata: &mut Value) {
    #[cfg(feature = "opentelemetry")]
    {
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        otel::inject(&tracing::Span::current().context(), metadata);
    }
    #[cfg(not(feature = "opentelemetry"))]
    let _ = metadata;
}

/// Makes the trace context of `carrier` the parent of `span`, which must
/// not have been entered yet; a no-op without the `opentelemetry` feature,
/// for an empty or malformed carrier, and without a tracing-opentelemetry
/// layer.
pub(crate) fn set_parent(span: &tracing::Span, carrier: &TraceCarrier) {
    #[cfg(feature = "opentelemetry")]
    {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let parent = otel::extract(carrier);
        if parent.span().span_context().is_valid() {
            // An error means no OpenTelemetry layer or a disabled span:
            // there is then no trace to attach to.
            let _ = span.set_parent(parent);
        }
    }
    #[cfg(not(feature = "opentelemetry"))]
    let _ = (span, carrier);
}

#[cfg(feature = "opentelemetry")]
mod otel {
    //! The OpenTelemetry side: W3C trace context through the SDK's
    //! propagator, into and out of the metadata's keys.

    use super::{TraceCarrier, TRACEPARENT, TRACESTATE};
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry::Context;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use serde_json::Value;
    use std::collections::HashMap;

    /// Writes `cx`'s span context into `metadata` when it is valid and
    /// `metadata` is an object (or null, which becomes one). Keys already
    /// present are kept: a caller that set its own context wins.
    pub(super) fn inject(cx: &Context, metadata: &mut Value) {
        if !cx.span().span_context().is_valid() {
            return;
        }
        if metadata.is_null() {
            *metadata = Value::Object(Default::default());
        }
        let Some(object) = metadata.as_object_mut() else {
            return;
        };
        if object.contains_key(TRACEPARENT) {
            return;
        }
        let mut fields = HashMap::new();
        TraceContextPropagator::new().inject_context(cx, &mut fields);
        for key in [TRACEPARENT, TRACESTATE] {
            if let Some(value) = fields.remove(key).filter(|v| !v.is_empty()) {
                object.insert(key.to_string(), Value::String(value));
            }
        }
    }

    /// The context `carrier` describes: a remote span context, or an empty
    /// context when there is none or it does not parse.
    pub(super) fn extract(carrier: &TraceCarrier) -> Context {
        let mut fields = HashMap::new();
        if let Some(value) = &carrier.traceparent {
            fields.insert(TRACEPARENT.to_string(), value.clone());
        }
        if let Some(value) = &carrier.tracestate {
            fields.insert(TRACESTATE.to_string(), value.clone());
        }
        TraceContextPropagator::new().extract(&fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_carrier_reads_only_string_trace_keys_of_an_object() {
        let metadata = json!({"workflow": "w", "traceparent": "tp", "tracestate": 7});
        let carrier = TraceCarrier::from_metadata(Some(&metadata));
        assert_eq!(carrier.traceparent.as_deref(), Some("tp"));
        assert_eq!(carrier.tracestate, None);
        assert_eq!(
            TraceCarrier::from_metadata(Some(&json!(["traceparent"]))),
            TraceCarrier::default()
        );
        assert_eq!(TraceCarrier::from_metadata(None), TraceCarrier::default());
    }

    #[test]
    fn a_carrier_from_stored_bytes_ignores_other_keys_and_bad_json() {
        let bytes = br#"{"workflow":"w","traceparent":"tp","tracestate":"a=b"}"#;
        let carrier = TraceCarrier::from_metadata_bytes(Some(bytes));
        assert_eq!(carrier.traceparent.as_deref(), Some("tp"));
        assert_eq!(carrier.tracestate.as_deref(), Some("a=b"));
        assert_eq!(
            TraceCarrier::from_metadata_bytes(Some(b"not json")),
            TraceCarrier::default()
        );
        assert_eq!(
            TraceCarrier::from_metadata_bytes(Some(b"[1]")),
            TraceCarrier::default()
        );
        assert_eq!(
            TraceCarrier::from_metadata_bytes(None),
            TraceCarrier::default()
        );
    }

    #[test]
    fn without_a_current_span_nothing_is_stored() {
        let mut metadata = json!({"workflow": "w"});
        inject_current(&mut metadata);
        assert_eq!(metadata, json!({"workflow": "w"}));
    }

    #[cfg(feature = "opentelemetry")]
    mod otel {
        use super::super::otel::{extract, inject};
        use super::super::TraceCarrier;
        use opentelemetry::trace::{
            SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
        };
        use opentelemetry::Context;
        use serde_json::json;

        fn remote(state: TraceState) -> Context {
            Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
                SpanId::from_hex("00f067aa0ba902b7").unwrap(),
                TraceFlags::SAMPLED,
                true,
                state,
            ))
        }

        #[test]
        fn a_context_is_added_next_to_the_metadata_and_read_back() {
            let state = TraceState::from_key_value([("vendor", "x")]).unwrap();
            let mut metadata = json!({"workflow": "w"});
            inject(&remote(state), &mut metadata);
            assert_eq!(
                metadata,
                json!({
                    "workflow": "w",
                    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                    "tracestate": "vendor=x",
                })
            );
            let back = extract(&TraceCarrier::from_metadata(Some(&metadata)));
            let span = back.span();
            let back = span.span_context();
            assert!(back.is_valid() && back.is_remote() && back.is_sampled());
            assert_eq!(
                back.trace_id(),
                TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
            );
            assert_eq!(back.trace_state().header(), "vendor=x");
        }

        #[test]
        fn an_empty_context_or_a_caller_set_parent_is_left_alone() {
            let mut metadata = json!({"workflow": "w"});
            inject(&Context::new(), &mut metadata);
            assert_eq!(metadata, json!({"workflow": "w"}));

            let mut own = json!({"traceparent": "mine"});
            inject(&remote(TraceState::default()), &mut own);
            assert_eq!(own, json!({"traceparent": "mine"}));

            let mut scalar = json!("not an object");
            inject(&remote(TraceState::default()), &mut scalar);
            assert_eq!(scalar, json!("not an object"));
        }

        #[test]
        fn null_metadata_becomes_an_object_without_tracestate_when_empty() {
            let mut metadata = serde_json::Value::Null;
            inject(&remote(TraceState::default()), &mut metadata);
            assert_eq!(
                metadata,
                json!({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
            );
        }

        #[test]
        fn a_malformed_traceparent_gives_no_parent() {
            let metadata = json!({"traceparent": "00-zz-00f067aa0ba902b7-01"});
            let cx = extract(&TraceCarrier::from_metadata(Some(&metadata)));
            assert!(!cx.span().span_context().is_valid());
        }
    }
}
