//! Tenant Plane's HTTP API mounted inside a host's own hyper server, next
//! to the host's routes. The example serves one request to each and exits.
//!
//! Run with `cargo run -p tp-examples --example mount_service`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::error::Error;

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tp_core::{Config, TenantPlane};
use tp_http::{Api, PeerAddr};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let dir = std::env::temp_dir().join(format!("tp-mount-{}", std::process::id()));
    let url = format!("sqlite://{}", dir.join("tp.db").display());
    let env: BTreeMap<&str, &str> = BTreeMap::from([
        ("TENANT_ID", "example"),
        ("JWT_SECRET", "an-example-secret-that-is-at-least-32-bytes"),
        (
            "ENCRYPTION_KEY",
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        ),
        ("TENANT_PLANE_DATABASE_URL", url.as_str()),
    ]);
    let (plane, _) = TenantPlane::start(Config::from_env(&env)?).await?;
    let api = Api::new(plane);

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let api = api.clone();
            tokio::spawn(async move {
                let service = service_fn(move |mut request: Request<Incoming>| {
                    let api = api.clone();
                    async move {
                        if request.uri().path().starts_with("/api/") {
                            // Give the plane the peer for per-IP limits.
                            request.extensions_mut().insert(PeerAddr(peer));
                            Ok::<_, Infallible>(api.handle(request).await)
                        } else {
                            Ok(Response::new(Full::new(Bytes::from_static(
                                b"hello from the host\n",
                            ))))
                        }
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });

    for path in ["/hello", "/api/health"] {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = Request::get(path)
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        println!(
            "GET {path} -> {status} {}",
            String::from_utf8_lossy(&body).trim()
        );
        assert!(status.is_success());
    }
    std::fs::remove_dir_all(dir)?;
    Ok(())
}
