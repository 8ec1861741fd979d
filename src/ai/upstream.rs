//! Calling upstreams: pooled clients (one per thread), attempts over a model's
//! deployments with fallback on connect errors, 429 and 5xx (before any
//! byte went to the client), timeouts, and upstream errors made safe.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use http_body_util::{BodyDataStream, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls_platform_verifier::BuilderVerifierExt;
use tokio::time::Instant;

use super::Gateway;
use super::anthropic;
use super::catalog::{Deployment, Model, Provider};
use super::config::ProviderKind;
use super::wire::ApiError;

/// Which OpenAI endpoint a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Embeddings,
}

/// How upstream connections are opened: TCP, then TLS for `https://`.
pub type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// The pooled HTTP/1.1 and HTTP/2 (over TLS, by ALPN) client of upstream calls.
pub type Client = hyper_util::client::legacy::Client<Connector, Full<Bytes>>;

/// An upstream's body, chunk by chunk as it arrives.
pub type Chunks = BoxStream<'static, Result<Bytes, hyper::Error>>;

/// What an upstream answered.
pub enum Body {
    /// A complete response (anything but a successful stream).
    Whole(Whole),
    /// A successful stream: its first chunk, if it came before the
    /// keepalive interval, and the rest.
    Stream { first: Option<Bytes>, rest: Chunks },
}

/// A response whose body is read in one piece.
pub struct Whole(hyper::Response<Incoming>);

impl Whole {
    /// The whole body.
    pub async fn bytes(self) -> Result<Bytes, hyper::Error> {
        Ok(self.0.into_body().collect().await?.to_bytes())
    }
}

/// The answer of the deployment that served a request.
pub struct Answer<'m> {
    pub deployment: &'m Deployment,
    pub status: StatusCode,
    pub body: Body,
    /// When the whole exchange must be over (non-streaming bodies).
    pub deadline: Instant,
}

/// Why an attempt failed in a way another attempt may fix.
enum Failure {
    Connect,
    Timeout,
    Status {
        status: StatusCode,
        retry_after: Option<HeaderValue>,
        body: Bytes,
    },
}

/// Opens upstream connections: TCP_NODELAY, a connect timeout, TCP
/// keepalive; `https://` verified against the system's trust store, TLS 1.2
/// or 1.3, HTTP/2 or HTTP/1.1 by ALPN. Built once at start, so that a
/// broken trust store is an error at start-up, not per request.
pub fn connector(connect_timeout: Duration) -> crate::error::Result<Connector> {
    let fail =
        |e: rustls::Error| crate::error::Error::internal(format!("TLS for AI upstreams: {e}"));
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(fail)?
    .with_platform_verifier()
    .map_err(fail)?
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(30)));
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http))
}

/// A pooled upstream client over `connector` (the gateway keeps one per
/// thread), idle connections kept 90 s.
pub fn client(connector: &Connector) -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector.clone())
}

fn retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

impl Gateway {
    /// This thread's upstream client.
    fn client(&self) -> &Client {
        self.clients.get_or(|| client(&self.connector))
    }

    /// Sends `body(deployment)` to the model's deployments in plan order
    /// until one answers with anything but a retryable failure.
    pub async fn call<'m>(
        &self,
        model: &'m Model,
        endpoint: Endpoint,
        stream: bool,
        body: impl Fn(&Deployment) -> Result<Bytes, ApiError>,
    ) -> Result<Answer<'m>, Response> {
        let plan = self.catalog.plan(model, self.attempts);
        let mut last: Option<(&Provider, Failure)> = None;
        for (n, &i) in plan.iter().enumerate() {
            let d = &model.deployments[i];
            if n > 0 && plan[..n].contains(&i) {
                // Back to a deployment that already failed this request: pause a little.
                tokio::time::sleep(Duration::from_millis(100 << n.min(5))).await;
            }
            let p = &d.provider;
            let url = match (endpoint, p.kind) {
                (Endpoint::Chat, _) => &p.chat_url,
                (Endpoint::Embeddings, ProviderKind::Openai) => &p.embeddings_url,
                (Endpoint::Embeddings, ProviderKind::Anthropic) => {
                    return Err(ApiError::invalid(format!(
                        "The model `{}` does not support embeddings.",
                        model.id
                    ))
                    .param("model")
                    .into_response());
                }
            };
            let payload = body(d).map_err(IntoResponse::into_response)?;
            // Method, URI and headers are all parsed already: nothing here can fail.
            let mut req = hyper::Request::new(Full::new(payload));
            *req.method_mut() = hyper::Method::POST;
            *req.uri_mut() = url.clone();
            let h = req.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if let Some((name, value)) = &p.auth {
                h.insert(*name, value.clone());
            }
            if p.kind == ProviderKind::Anthropic {
                h.insert("anthropic-version", p.anthropic_version.clone());
            }
            let deadline = Instant::now() + self.timeouts.request;
            let failure = match tokio::time::timeout_at(deadline, self.client().request(req)).await
            {
                Err(_) => Failure::Timeout,
                Ok(Err(e)) => {
                    tracing::warn!(provider = %p.name, connect = e.is_connect(), error = %e, "AI upstream unreachable");
                    Failure::Connect
                }
                Ok(Ok(resp)) if retryable(resp.status()) => {
                    let status = resp.status();
                    let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
                    let body = tokio::time::timeout_at(deadline, Whole(resp).bytes())
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .unwrap_or_default();
                    tracing::warn!(provider = %p.name, status = status.as_u16(), "AI upstream failed");
                    Failure::Status {
                        status,
                        retry_after,
                        body,
                    }
                }
                Ok(Ok(resp)) if stream && resp.status().is_success() => {
                    let status = resp.status();
                    let mut rest: Chunks = BodyDataStream::new(resp.into_body()).boxed();
                    // Wait briefly for the first chunk: a failure before it can still fall back.
                    match tokio::time::timeout(self.timeouts.keepalive, rest.next()).await {
                        Ok(Some(Ok(first))) => {
                            return Ok(Answer {
                                deployment: d,
                                status,
                                body: Body::Stream {
                                    first: Some(first),
                                    rest,
                                },
                                deadline,
                            });
                        }
                        Err(_) => {
                            return Ok(Answer {
                                deployment: d,
                                status,
                                body: Body::Stream { first: None, rest },
                                deadline,
                            });
                        }
                        Ok(Some(Err(_)) | None) => {
                            tracing::warn!(provider = %p.name, "AI upstream closed its stream before the first byte");
                            Failure::Connect
                        }
                    }
                }
                Ok(Ok(resp)) => {
                    return Ok(Answer {
                        deployment: d,
                        status: resp.status(),
                        body: Body::Whole(Whole(resp)),
                        deadline,
                    });
                }
            };
            self.catalog.cool_down(d);
            last = Some((p, failure));
        }
        let (provider, failure) = last.expect("a plan has at least one attempt");
        Err(match failure {
            Failure::Connect => ApiError::upstream(
                StatusCode::BAD_GATEWAY,
                format!("No upstream for model `{}` could be reached.", model.id),
            )
            .into_response(),
            Failure::Timeout => ApiError::upstream(
                StatusCode::GATEWAY_TIMEOUT,
                format!("The upstream for model `{}` timed out.", model.id),
            )
            .into_response(),
            Failure::Status {
                status,
                retry_after,
                body,
            } => {
                let mut resp = upstream_error(provider, status, body);
                if let Some(v) = retry_after {
                    resp.headers_mut().insert(header::RETRY_AFTER, v);
                }
                resp
            }
        })
    }
}

/// An upstream's error answer as the client should see it: OpenAI-shaped
/// bodies pass through unchanged; Anthropic's are translated; a refusal of
/// the gateway's own credentials never reaches the client (it may quote the key).
pub fn upstream_error(provider: &Provider, status: StatusCode, body: Bytes) -> Response {
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        tracing::error!(provider = %provider.name, status = status.as_u16(), "AI upstream refused the gateway's API key");
        return ApiError::upstream(
            StatusCode::BAD_GATEWAY,
            format!(
                "The upstream provider `{}` refused the gateway's credentials.",
                provider.name
            ),
        )
        .into_response();
    }
    match provider.kind {
        ProviderKind::Anthropic => anthropic::error(status, &body).into_response(),
        ProviderKind::Openai => {
            #[derive(serde::Deserialize)]
            struct Shaped {
                #[allow(dead_code)]
                error: serde_json::Map<String, serde_json::Value>,
            }
            if serde_json::from_slice::<Shaped>(&body).is_ok() {
                let mut headers = HeaderMap::new();
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                (status, headers, body).into_response()
            } else {
                let kind = if status.is_server_error() {
                    "server_error"
                } else {
                    "invalid_request_error"
                };
                ApiError::new(
                    status,
                    kind,
                    format!("The upstream provider answered {}.", status.as_u16()),
                )
                .into_response()
            }
        }
    }
}
