//! The span exporter: export requests encoded by [`super::otlp_wire`], sent over
//! OTLP/gRPC (tonic, with a codec that passes the encoded bytes through) or OTLP/HTTP
//! (protobuf body), each within the export timeout. Called by the batching task
//! ([`super::span_queue`]) on the telemetry runtime.
//! Headers come from `OTEL_EXPORTER_OTLP_HEADERS`, then `OTEL_EXPORTER_OTLP_TRACES_HEADERS`
//! (`key=value,key2=value2`, values percent-encoded), as the OpenTelemetry exporters read
//! them.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use opentelemetry_http::HttpClient;
use tokio::runtime::Handle;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use super::otlp::{signal_url, RuntimeHttpClient};
use super::settings::OtlpSettings;
use crate::config::OtlpProtocol;

const GRPC_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

#[derive(Debug)]
pub(super) struct TraceExporter {
    transport: Transport,
    timeout: Duration,
    /// `compression = "gzip"`: gRPC messages compressed by tonic (`grpc-encoding: gzip`),
    /// HTTP bodies here (`Content-Encoding: gzip`).
    gzip: bool,
}

/// Why an export failed (its spans are lost).
#[derive(Debug, thiserror::Error)]
pub(super) enum ExportError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
}

#[derive(Debug, Clone)]
enum Transport {
    Grpc {
        channel: Channel,
        metadata: MetadataMap,
    },
    Http {
        client: std::sync::Arc<RuntimeHttpClient>,
        url: String,
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
    },
}

impl TraceExporter {
    /// Must run inside the telemetry runtime: the gRPC channel spawns its worker there.
    pub(super) fn new(settings: &OtlpSettings, runtime: &Handle) -> anyhow::Result<Self> {
        let headers = env_headers(&|name| std::env::var(name).ok());
        let transport = match settings.protocol {
            OtlpProtocol::Grpc => {
                let mut endpoint = Endpoint::from_shared(settings.endpoint.clone())?
                    .timeout(settings.trace_timeout);
                if settings.endpoint.starts_with("https:") {
                    endpoint = endpoint.tls_config(ClientTlsConfig::new().with_enabled_roots())?;
                }
                let mut metadata = MetadataMap::new();
                for (name, value) in headers {
                    let key = MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes());
                    match (key, MetadataValue::try_from(value.as_str())) {
                        (Ok(key), Ok(value)) => {
                            metadata.append(key, value);
                        }
                        _ => tracing::warn!("OTLP header {name:?} is not valid gRPC metadata"),
                    }
                }
                Transport::Grpc {
                    channel: endpoint.connect_lazy(),
                    metadata,
                }
            }
            OtlpProtocol::HttpProtobuf => Transport::Http {
                client: std::sync::Arc::new(RuntimeHttpClient::new(
                    runtime,
                    settings.trace_timeout,
                )?),
                url: signal_url(&settings.endpoint, "traces"),
                headers: headers
                    .into_iter()
                    .filter_map(|(name, value)| {
                        let parsed = (
                            http::HeaderName::try_from(name.as_str()),
                            http::HeaderValue::try_from(value.as_str()),
                        );
                        match parsed {
                            (Ok(name), Ok(value)) => Some((name, value)),
                            _ => {
                                tracing::warn!("OTLP header {name:?} is not a valid HTTP header");
                                None
                            }
                        }
                    })
                    .collect(),
            },
        };
        Ok(TraceExporter {
            transport,
            timeout: settings.trace_timeout,
            gzip: settings.traces_gzip,
        })
    }

    /// Sends one encoded `ExportTraceServiceRequest`; must run on the telemetry runtime.
    pub(super) async fn export(&self, body: Vec<u8>) -> Result<(), ExportError> {
        let send = self.transport.clone().send(Bytes::from(body), self.gzip);
        tokio::time::timeout(self.timeout, send)
            .await
            .map_err(|_| ExportError::Timeout(self.timeout))?
    }
}

impl Transport {
    async fn send(self, body: Bytes, gzip: bool) -> Result<(), ExportError> {
        let failed = |what: String| Err(ExportError::Failed(what));
        match self {
            Transport::Grpc { channel, metadata } => {
                let mut grpc = tonic::client::Grpc::new(channel);
                if gzip {
                    grpc = grpc.send_compressed(CompressionEncoding::Gzip);
                }
                if let Err(e) = grpc.ready().await {
                    return failed(format!("gRPC channel: {e}"));
                }
                let mut request = tonic::Request::new(body);
                *request.metadata_mut() = metadata;
                let path = PathAndQuery::from_static(GRPC_EXPORT_PATH);
                match grpc.unary(request, path, PassThrough).await {
                    Ok(_) => Ok(()),
                    Err(status) => failed(format!("gRPC {}: {}", status.code(), status.message())),
                }
            }
            Transport::Http {
                client,
                url,
                headers,
            } => {
                let mut request = http::Request::post(url)
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf");
                let body = if gzip {
                    request = request.header(http::header::CONTENT_ENCODING, "gzip");
                    gzipped(&body).map_err(|e| ExportError::Failed(format!("gzip: {e}")))?
                } else {
                    body
                };
                let mut request = request
                    .body(body)
                    .map_err(|e| ExportError::Failed(e.to_string()))?;
                request.headers_mut().extend(headers);
                match client.send_bytes(request).await {
                    Ok(response) if response.status().is_success() => Ok(()),
                    Ok(response) => failed(format!("HTTP {}", response.status())),
                    Err(e) => failed(e.to_string()),
                }
            }
        }
    }
}

/// An OTLP/HTTP body gzip-compressed (at the default level: export runs in the background,
/// and protobuf of similar spans shrinks several times over).
fn gzipped(body: &[u8]) -> std::io::Result<Bytes> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::default(),
    );
    encoder.write_all(body)?;
    encoder.finish().map(Bytes::from)
}

/// `OTEL_EXPORTER_OTLP_HEADERS`, overridden key by key by
/// `OTEL_EXPORTER_OTLP_TRACES_HEADERS`; malformed entries are skipped.
fn env_headers(env: &dyn Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = Vec::new();
    for var in [
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    ] {
        let Some(list) = env(var) else { continue };
        for entry in list.split(',') {
            let Some((key, value)) = entry.split_once('=') else {
                continue;
            };
            let key = key.trim();
            if key.is_empty() {
                continue;
            }
            let value = percent_encoding::percent_decode_str(value.trim())
                .decode_utf8_lossy()
                .into_owned();
            headers.retain(|(k, _)| !k.eq_ignore_ascii_case(key));
            headers.push((key.to_owned(), value));
        }
    }
    headers
}

/// A gRPC codec for a request that is already protobuf bytes, and an answer
/// (`ExportTraceServiceResponse`) that is not looked at.
#[derive(Debug, Clone, Copy, Default)]
struct PassThrough;

impl Codec for PassThrough {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = PassThrough;
    type Decoder = PassThrough;

    fn encoder(&mut self) -> Self::Encoder {
        PassThrough
    }

    fn decoder(&mut self) -> Self::Decoder {
        PassThrough
    }
}

impl Encoder for PassThrough {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for PassThrough {
    type Item = ();
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, Self::Error> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_from_the_environment() {
        let env = |name: &str| match name {
            "OTEL_EXPORTER_OTLP_HEADERS" => Some("api-key=a%20b, tenant=one,broken".into()),
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS" => Some("Tenant=two".into()),
            _ => None,
        };
        assert_eq!(
            env_headers(&env),
            vec![
                ("api-key".to_owned(), "a b".to_owned()),
                ("Tenant".to_owned(), "two".to_owned())
            ]
        );
        assert!(env_headers(&|_| None).is_empty());
    }

    #[test]
    fn a_gzipped_body_inflates_to_the_original() {
        use std::io::Read as _;
        let body = b"span span span span span span".repeat(40);
        let packed = gzipped(&body).expect("gzip");
        assert!(packed.len() < body.len() / 4, "{} bytes", packed.len());
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&packed[..])
            .read_to_end(&mut out)
            .expect("gunzip");
        assert_eq!(out, body);
    }
}
