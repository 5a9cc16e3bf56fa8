//! OTLP trace export requests written straight into protobuf bytes
//! (`ExportTraceServiceRequest`, opentelemetry-proto's `trace.proto`).
//!
//! Why not the SDK: its spans own every attribute (a `String` per path, host, user agent),
//! its exporter converts them again into the generated proto structs, groups them through
//! a hash map, encodes, then frees it all. Measured with `bench/instructions.sh telemetry`,
//! the SDK path was the larger part of what full telemetry costs a proxied request. Here a
//! span is encoded once, when it ends, from the request's own data (nothing copied before),
//! straight into its batch ([`frame_span`]); what every span of a route repeats (name,
//! kind, method, route) is encoded once per route and method ([`Naming::Encoded`]); a
//! batch is wrapped in the resource and scope, which are encoded once at start. The bytes
//! are checked in the tests by decoding them with opentelemetry-proto.
//!
//! Nested messages are length-prefixed: each is written after a one-byte length
//! placeholder, and one longer than 127 bytes is then moved right to make room for its
//! longer length: one `memmove`, cheaper than computing every length in a first pass.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::{Array, Value};
use opentelemetry_sdk::Resource;
use prost::encoding::{encode_varint, encoded_len_varint, WireType};

use crate::text::IpText;

/// `Span.SpanKind` values used by the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpanKind {
    Server = 2,
    Client = 3,
}

/// A span's name and kind, with the attributes that every span of its kind repeats.
pub(crate) enum Naming<'a> {
    Plain {
        name: &'a str,
        kind: SpanKind,
    },
    /// Written once by [`encode_naming`] and copied into each span: a route's SERVER spans
    /// repeat name, kind, method and route for every request.
    Encoded(&'a [u8]),
}

/// Everything of a span but its attributes, which [`encode_span`] takes as a closure.
pub(crate) struct SpanHead<'a> {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    /// The parent came from another process (the client's `traceparent`).
    pub parent_is_remote: bool,
    /// W3C `tracestate`, as propagated.
    pub trace_state: &'a str,
    pub naming: Naming<'a>,
    pub start: SystemTime,
    pub end: SystemTime,
    /// `Some(description)` marks the span as an error.
    pub error: Option<&'a str>,
    pub sampled: bool,
}

/// The attributes of a span being encoded (`Span.attributes = 9`).
pub(crate) struct Attributes<'a>(&'a mut Vec<u8>);

impl Attributes<'_> {
    pub(crate) fn str(&mut self, key: &str, value: &str) {
        self.utf8(key, value.as_bytes());
    }

    /// An address as a string value, without checking its ASCII again.
    pub(crate) fn ip(&mut self, key: &str, ip: &IpText) {
        self.utf8(key, ip.as_bytes());
    }

    /// `value` must be UTF-8 (a `str`, or ASCII by construction).
    fn utf8(&mut self, key: &str, value: &[u8]) {
        // AnyValue { string_value = 1 }
        self.attribute(key, field_len(value.len()), |out| {
            bytes_always(out, 1, value);
        });
    }

    /// A one-element string array, as the semantic conventions type the
    /// `http.request.header.<key>` attributes.
    pub(crate) fn str_array(&mut self, key: &str, value: &str) {
        // AnyValue { array_value = 5: ArrayValue { values = 1: AnyValue { string_value = 1 } } }
        let element = field_len(value.len());
        let array = field_len(element);
        self.attribute(key, field_len(array), |out| {
            put_key(out, 5, WireType::LengthDelimited);
            put_varint(out, array as u64);
            put_key(out, 1, WireType::LengthDelimited);
            put_varint(out, element as u64);
            bytes_always(out, 1, value.as_bytes());
        });
    }

    pub(crate) fn int(&mut self, key: &str, value: i64) {
        // AnyValue { int_value = 3 }, int64: two's complement
        let value = value as u64;
        self.attribute(key, 1 + encoded_len_varint(value), |out| {
            varint_always(out, 3, value);
        });
    }

    pub(crate) fn f64(&mut self, key: &str, value: f64) {
        // AnyValue { double_value = 4 }, fixed64
        self.attribute(key, 1 + 8, |out| {
            fixed64_always(out, 4, value.to_bits());
        });
    }

    /// `KeyValue { key = 1; AnyValue value = 2 }` whose value is `value_len` bytes long:
    /// with the lengths known up front it is written straight, without placeholders.
    fn attribute(&mut self, key: &str, value_len: usize, write_value: impl FnOnce(&mut Vec<u8>)) {
        let kv_len = field_len(key.len()) + field_len(value_len);
        let out = &mut *self.0;
        out.reserve(field_len(kv_len));
        put_key(out, 9, WireType::LengthDelimited);
        put_varint(out, kv_len as u64);
        bytes_always(out, 1, key.as_bytes());
        put_key(out, 2, WireType::LengthDelimited);
        put_varint(out, value_len as u64);
        write_value(out);
    }
}

/// Encoded size of a length-delimited field (tag below 16) holding `len` bytes.
#[inline]
fn field_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// Encodes one `Span` message (its fields, without tag and length) at the end of `out`.
pub(crate) fn encode_span(
    out: &mut Vec<u8>,
    head: &SpanHead<'_>,
    attributes: impl FnOnce(&mut Attributes<'_>),
) {
    bytes(out, 1, &head.trace_id);
    bytes(out, 2, &head.span_id);
    string(out, 3, head.trace_state);
    if let Some(parent) = &head.parent_span_id {
        bytes(out, 4, parent);
    }
    match head.naming {
        Naming::Plain { name, kind } => name_and_kind(out, name, kind),
        // Fields in any order, repeated ones interleaved, decode alike (protobuf encoding).
        Naming::Encoded(fields) => out.extend_from_slice(fields),
    }
    fixed64(out, 7, nanos(head.start));
    fixed64(out, 8, nanos(head.end));
    attributes(&mut Attributes(out));
    // Span.status = 15: message = 2, code = 3 (UNSET 0, OK 1, ERROR 2)
    nested(out, 15, |out| {
        if let Some(description) = head.error {
            string(out, 2, description);
            varint(out, 3, 2);
        }
    });
    fixed32(out, 16, flags(head));
}

/// `Span.name`, `Span.kind` and the `attributes` for [`Naming::Encoded`].
pub(crate) fn encode_naming(
    name: &str,
    kind: SpanKind,
    attributes: impl FnOnce(&mut Attributes<'_>),
) -> Vec<u8> {
    let mut out = Vec::new();
    name_and_kind(&mut out, name, kind);
    attributes(&mut Attributes(&mut out));
    out
}

fn name_and_kind(out: &mut Vec<u8>, name: &str, kind: SpanKind) {
    string(out, 5, name);
    varint(out, 6, kind as u64);
}

/// `SpanFlags`: the W3C trace flags, plus "whether the parent is remote is known" and,
/// when it is, "remote" (as the SDK's exporter sets them).
fn flags(head: &SpanHead<'_>) -> u32 {
    const SAMPLED: u32 = 0x01;
    const HAS_IS_REMOTE: u32 = 0x100;
    const IS_REMOTE: u32 = 0x200;
    let mut flags = HAS_IS_REMOTE;
    if head.sampled {
        flags |= SAMPLED;
    }
    if head.parent_is_remote {
        flags |= IS_REMOTE;
    }
    flags
}

/// The parts of every export request that never change: `Resource` and
/// `InstrumentationScope`, encoded once.
#[derive(Debug, Clone)]
pub(crate) struct Envelope {
    resource: Vec<u8>,
    scope: Vec<u8>,
    resource_schema_url: String,
}

impl Envelope {
    pub(crate) fn new(resource: &Resource, scope_name: &str, scope_version: &str) -> Envelope {
        let mut encoded = Vec::new();
        for (key, value) in resource.iter() {
            // Resource.attributes = 1
            nested(&mut encoded, 1, |out| {
                string(out, 1, key.as_str());
                nested(out, 2, |out| any_value(out, value));
            });
        }
        let mut scope = Vec::new();
        string(&mut scope, 1, scope_name);
        string(&mut scope, 2, scope_version);
        Envelope {
            resource: encoded,
            scope,
            resource_schema_url: resource.schema_url().unwrap_or_default().to_owned(),
        }
    }

    /// One `ExportTraceServiceRequest` of `framed` spans (written by [`frame_span`]).
    pub(crate) fn encode_request(&self, framed: &[u8], out: &mut Vec<u8>) {
        if framed.is_empty() {
            return;
        }
        // ExportTraceServiceRequest.resource_spans = 1
        nested(out, 1, |out| {
            // ResourceSpans.resource = 1
            bytes_always(out, 1, &self.resource);
            // ResourceSpans.scope_spans = 2
            nested(out, 2, |out| {
                // ScopeSpans.scope = 1
                bytes_always(out, 1, &self.scope);
                out.extend_from_slice(framed);
            });
            // ResourceSpans.schema_url = 3
            string(out, 3, &self.resource_schema_url);
        });
    }
}

/// Appends one span to a batch, as a `ScopeSpans.spans` field whose content `encode`
/// writes (with [`encode_span`]).
pub(crate) fn frame_span(out: &mut Vec<u8>, encode: impl FnOnce(&mut Vec<u8>)) {
    nested(out, 2, encode);
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `AnyValue` of a resource attribute: string 1, bool 2, int 3, double 4, array 5
/// (`ArrayValue { values = 1 }`).
fn any_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::String(s) => string_always(out, 1, s.as_str()),
        Value::Bool(b) => varint_always(out, 2, u64::from(*b)),
        Value::I64(i) => varint_always(out, 3, *i as u64), // int64: two's complement
        Value::F64(f) => fixed64_always(out, 4, f.to_bits()),
        Value::Array(array) => nested(out, 5, |out| match array {
            Array::Bool(values) => {
                for b in values {
                    nested(out, 1, |out| varint_always(out, 2, u64::from(*b)));
                }
            }
            Array::I64(values) => {
                for i in values {
                    nested(out, 1, |out| varint_always(out, 3, *i as u64));
                }
            }
            Array::F64(values) => {
                for f in values {
                    nested(out, 1, |out| fixed64_always(out, 4, f.to_bits()));
                }
            }
            Array::String(values) => {
                for s in values {
                    nested(out, 1, |out| string_always(out, 1, s.as_str()));
                }
            }
            other => {
                let text = other.to_string();
                nested(out, 1, |out| string_always(out, 1, &text));
            }
        }),
        other => string_always(out, 1, &other.to_string()),
    }
}

/// A length-delimited field whose content `write` appends.
fn nested(out: &mut Vec<u8>, tag: u32, write: impl FnOnce(&mut Vec<u8>)) {
    put_key(out, tag, WireType::LengthDelimited);
    let start = out.len();
    out.push(0);
    write(out);
    let len = out.len() - start - 1;
    let width = encoded_len_varint(len as u64);
    if width > 1 {
        out.resize(out.len() + width - 1, 0);
        out.copy_within(start + 1..start + 1 + len, start + width);
    }
    let mut prefix = &mut out[start..start + width];
    encode_varint(len as u64, &mut prefix);
}

/// A varint; most are one byte (tags, short lengths), which skips prost's loop.
#[inline]
fn put_varint(out: &mut Vec<u8>, value: u64) {
    if value < 0x80 {
        out.push(value as u8);
    } else {
        long_varint(out, value);
    }
}

/// Out of line, so that the one-byte case inlines small.
#[inline(never)]
fn long_varint(out: &mut Vec<u8>, value: u64) {
    encode_varint(value, out);
}

#[inline]
fn put_key(out: &mut Vec<u8>, tag: u32, wire_type: WireType) {
    put_varint(out, u64::from(tag << 3 | wire_type as u32));
}

// proto3: fields at their default value are not written, except inside a `oneof`.

fn string(out: &mut Vec<u8>, tag: u32, value: &str) {
    if !value.is_empty() {
        string_always(out, tag, value);
    }
}

#[inline]
fn string_always(out: &mut Vec<u8>, tag: u32, value: &str) {
    bytes_always(out, tag, value.as_bytes());
}

fn bytes(out: &mut Vec<u8>, tag: u32, value: &[u8]) {
    if !value.is_empty() {
        bytes_always(out, tag, value);
    }
}

#[inline]
fn bytes_always(out: &mut Vec<u8>, tag: u32, value: &[u8]) {
    put_key(out, tag, WireType::LengthDelimited);
    put_varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

fn varint(out: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        varint_always(out, tag, value);
    }
}

#[inline]
fn varint_always(out: &mut Vec<u8>, tag: u32, value: u64) {
    put_key(out, tag, WireType::Varint);
    put_varint(out, value);
}

fn fixed64(out: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        fixed64_always(out, tag, value);
    }
}

#[inline]
fn fixed64_always(out: &mut Vec<u8>, tag: u32, value: u64) {
    put_key(out, tag, WireType::SixtyFourBit);
    out.extend_from_slice(&value.to_le_bytes());
}

fn fixed32(out: &mut Vec<u8>, tag: u32, value: u32) {
    if value != 0 {
        put_key(out, tag, WireType::ThirtyTwoBit);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry::KeyValue;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue as ProtoKeyValue,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
    use opentelemetry_proto::tonic::trace::v1::{
        span, status, ResourceSpans, ScopeSpans, Span, Status,
    };
    use opentelemetry_sdk::Resource;
    use prost::Message;

    use super::*;

    fn text(key: &str, value: &str) -> ProtoKeyValue {
        ProtoKeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.into())),
            }),
            ..Default::default()
        }
    }

    fn int(key: &str, value: i64) -> ProtoKeyValue {
        ProtoKeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(value)),
            }),
            ..Default::default()
        }
    }

    fn head<'a>(path_error: Option<&'a str>, parent: Option<[u8; 8]>) -> SpanHead<'a> {
        let start = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        SpanHead {
            trace_id: 0x0af7651916cd43dd8448eb211c80319c_u128.to_be_bytes(),
            span_id: 0xb7ad6b7169203331_u64.to_be_bytes(),
            parent_span_id: parent,
            parent_is_remote: parent.is_some(),
            trace_state: "vendor=value",
            naming: Naming::Plain {
                name: "GET workflow",
                kind: SpanKind::Server,
            },
            start,
            end: start + Duration::from_millis(12),
            error: path_error,
            sampled: true,
        }
    }

    /// Our bytes decode, with opentelemetry-proto, to the message the fields describe.
    #[test]
    fn decodes_as_an_export_request() {
        let resource = Resource::builder_empty()
            .with_service_name("astron-edge")
            .with_attribute(KeyValue::new("deployment.environment", "test"))
            .with_attribute(KeyValue::new("replicas", 3i64))
            .build();
        let envelope = Envelope::new(&resource, "astron-edge", "1.0");
        let long_path = "/a/long/path/".repeat(20);
        let parent = 0x00f067aa0ba902b7_u64.to_be_bytes();
        let mut first = Vec::new();
        encode_span(&mut first, &head(None, Some(parent)), |a| {
            a.str("url.path", &long_path);
            a.int("http.response.status_code", 200);
            a.int("negative", -7);
            a.ip("client.address", &IpText::new([10, 0, 0, 1].into()));
        });
        let mut second = Vec::new();
        let naming = encode_naming("GET workflow", SpanKind::Server, |a| {
            a.str("http.route", "workflow");
        });
        let second_head = SpanHead {
            naming: Naming::Encoded(&naming),
            ..head(Some("HTTP 502"), None)
        };
        encode_span(&mut second, &second_head, |a| {
            a.int("http.response.status_code", 502);
            a.str_array("http.request.header.x-request-id", "req-1");
        });
        let mut framed = Vec::new();
        frame_span(&mut framed, |out| out.extend_from_slice(&first));
        frame_span(&mut framed, |out| out.extend_from_slice(&second));
        let mut ours = Vec::new();
        envelope.encode_request(&framed, &mut ours);
        let decoded = ExportTraceServiceRequest::decode(ours.as_slice()).expect("decodes");

        let span = |parent: Option<[u8; 8]>, attributes, status, flags| Span {
            trace_id: 0x0af7651916cd43dd8448eb211c80319c_u128
                .to_be_bytes()
                .to_vec(),
            span_id: 0xb7ad6b7169203331_u64.to_be_bytes().to_vec(),
            trace_state: "vendor=value".into(),
            parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
            flags,
            name: "GET workflow".into(),
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: 1_700_000_000_123_456_789,
            end_time_unix_nano: 1_700_000_000_135_456_789,
            attributes,
            dropped_attributes_count: 0,
            events: vec![],
            dropped_events_count: 0,
            links: vec![],
            dropped_links_count: 0,
            status: Some(status),
        };
        let resource_attributes: Vec<ProtoKeyValue> = resource
            .iter()
            .map(|(k, v)| match v {
                Value::I64(i) => int(k.as_str(), *i),
                other => text(k.as_str(), &other.to_string()),
            })
            .collect();
        let expected = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(ProtoResource {
                    attributes: resource_attributes,
                    dropped_attributes_count: 0,
                    entity_refs: vec![],
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "astron-edge".into(),
                        version: "1.0".into(),
                        attributes: vec![],
                        dropped_attributes_count: 0,
                    }),
                    spans: vec![
                        span(
                            Some(parent),
                            vec![
                                text("url.path", &long_path),
                                int("http.response.status_code", 200),
                                int("negative", -7),
                                text("client.address", "10.0.0.1"),
                            ],
                            Status::default(),
                            0x301,
                        ),
                        span(
                            None,
                            vec![
                                text("http.route", "workflow"),
                                int("http.response.status_code", 502),
                                ProtoKeyValue {
                                    key: "http.request.header.x-request-id".into(),
                                    value: Some(AnyValue {
                                        value: Some(any_value::Value::ArrayValue(ArrayValue {
                                            values: vec![AnyValue {
                                                value: Some(any_value::Value::StringValue(
                                                    "req-1".into(),
                                                )),
                                            }],
                                        })),
                                    }),
                                    ..Default::default()
                                },
                            ],
                            Status {
                                message: "HTTP 502".into(),
                                code: status::StatusCode::Error as i32,
                            },
                            0x101,
                        ),
                    ],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        assert_eq!(decoded, expected);
    }

    #[test]
    fn nothing_for_an_empty_batch() {
        let mut out = Vec::new();
        let envelope = Envelope::new(&Resource::builder_empty().build(), "x", "");
        envelope.encode_request(&[], &mut out);
        assert!(out.is_empty());
    }

    /// A length that sits on, or one off, a boundary of the one-, two- and three-byte
    /// varint lengths (127 / 128, 16,383 / 16,384), where the placeholder is moved.
    fn boundary_len() -> impl proptest::strategy::Strategy<Value = usize> {
        use proptest::prelude::*;
        prop_oneof![
            0usize..300,
            120usize..136,
            16_370usize..16_400,
            Just(70_000usize),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Any batch of spans with attributes of any length round-trips through
        /// opentelemetry-proto's decoder: every nested length is right, whatever its size.
        #[test]
        fn round_trips_through_the_proto_decoder(
            spans in proptest::collection::vec(
                (
                    proptest::collection::vec((boundary_len(), boundary_len(), proptest::prelude::any::<i64>()), 0..4),
                    proptest::option::of(boundary_len()),
                ),
                1..4,
            )
        ) {
            let envelope = Envelope::new(&Resource::builder_empty().build(), "astron-edge", "1");
            let mut framed = Vec::new();
            let mut expected_spans = Vec::new();
            for (attributes, error_len) in &spans {
                let error = error_len.map(|n| "e".repeat(n));
                let texts: Vec<(String, String, i64)> = attributes
                    .iter()
                    .map(|(k, v, i)| (format!("k{}", "x".repeat(*k)), "v".repeat(*v), *i))
                    .collect();
                let mut span_bytes = Vec::new();
                encode_span(&mut span_bytes, &head(error.as_deref(), None), |a| {
                    for (key, value, number) in &texts {
                        a.str(key, value);
                        a.int(key, *number);
                    }
                });
                frame_span(&mut framed, |out| out.extend_from_slice(&span_bytes));
                let expected: Vec<ProtoKeyValue> = texts
                    .iter()
                    .flat_map(|(key, value, number)| [text(key, value), int(key, *number)])
                    .collect();
                expected_spans.push((expected, error));
            }
            let mut ours = Vec::new();
            envelope.encode_request(&framed, &mut ours);
            let decoded = ExportTraceServiceRequest::decode(ours.as_slice()).expect("decodes");
            let got = &decoded.resource_spans[0].scope_spans[0].spans;
            proptest::prop_assert_eq!(got.len(), expected_spans.len());
            for (span, (attributes, error)) in got.iter().zip(&expected_spans) {
                proptest::prop_assert_eq!(&span.attributes, attributes);
                let message = span.status.as_ref().map(|s| s.message.clone()).unwrap_or_default();
                proptest::prop_assert_eq!(message, error.clone().unwrap_or_default());
                proptest::prop_assert_eq!(&span.name, "GET workflow");
            }
        }
    }
}
