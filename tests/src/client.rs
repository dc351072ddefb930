//! A small HTTP/1.1 client for tests.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// An HTTP client with a per-request timeout.
#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Full<Bytes>>,
    timeout: Duration,
    bearer: Option<String>,
}

/// A response, fully read.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body bytes.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON (panics with the body text if it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    /// A client with a 10 s request timeout.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            inner: HyperClient::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(5))
                .build(connector),
            timeout: Duration::from_secs(10),
            bearer: None,
        }
    }

    /// The same client, sending `Authorization: Bearer <token>` unless a
    /// request sets its own.
    pub fn with_token(mut self, token: &str) -> Self {
        self.bearer = Some(format!("Bearer {token}"));
        self
    }

    /// The same client with another timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends a request; `Err` on connection failure or timeout.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<Reply, String> {
        let mut builder = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        if let Some(bearer) = &self.bearer
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        {
            builder = builder.header("authorization", bearer.as_str());
        }
        let request = builder
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| e.to_string())?;
        let attempt = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .map_err(|_| format!("timed out after {:?}", self.timeout))?
    }

    /// GET with optional bearer token.
    pub async fn get(&self, url: &str, token: Option<&str>) -> Reply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        self.send(Method::GET, url, &headers, None)
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    /// A JSON request with optional bearer token.
    pub async fn json(
        &self,
        method: Method,
        url: &str,
        token: Option<&str>,
        body: &Value,
    ) -> Reply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        let bytes = Bytes::from(serde_json::to_vec(body).expect("json"));
        self.send(method.clone(), url, &headers, Some(bytes))
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
    }

    /// DELETE with optional bearer token.
    pub async fn delete(&self, url: &str, token: Option<&str>) -> Reply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        self.send(Method::DELETE, url, &headers, None)
            .await
            .unwrap_or_else(|e| panic!("DELETE {url}: {e}"))
    }
}
