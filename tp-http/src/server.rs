//! The listener: HTTP/1.1 and h2c on one port, bounded header reads, and the
//! drain sequence that lets load balancers move traffic away before exit.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tp_core::config::HttpConfig;

use crate::{Api, PeerAddr};

/// How a [`serve`] run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Every in-flight request finished.
    Clean,
    /// The shutdown timeout cut off requests still running.
    TimedOut {
        /// Connections still open at the deadline.
        open_connections: usize,
    },
}

/// How long connections accepted last get to read their request before
/// the shutdown signal reaches them.
const LAST_READ_GRACE: Duration = Duration::from_millis(100);

/// Serves one accepted connection until it ends or shutdown finishes it.
fn spawn_connection(
    stream: TcpStream,
    peer: SocketAddr,
    api: &Api,
    builder: &Arc<auto::Builder<TokioExecutor>>,
    graceful: &GracefulShutdown,
    header_timeout: Duration,
) {
    let _ = stream.set_nodelay(true);
    let api = api.clone();
    let builder = builder.clone();
    let watcher = graceful.watcher();
    tokio::spawn(async move {
        // hyper's header timeout starts after protocol detection;
        // bound the wait for the first byte here.
        let mut first = [0u8; 1];
        match tokio::time::timeout(header_timeout, stream.peek(&mut first)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
        let service = service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(PeerAddr(peer));
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.handle(request).await) }
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        if let Err(e) = watcher.watch(connection).await {
            tracing::debug!(error = %e, %peer, "connection ended with an error");
        }
    });
}

/// Serves `api` on `listener` until `signal` resolves, then drains.
///
/// Drain: readiness turns 503 at once and responses ask clients to close
/// their connections; serving goes on for `drain_delay` so load balancers
/// notice; then the listener closes and in-flight requests get
/// `shutdown_timeout` to finish.
pub async fn serve(
    listener: TcpListener,
    api: Api,
    http: &HttpConfig,
    signal: impl Future<Output = ()>,
) -> std::io::Result<Shutdown> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(http.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .max_concurrent_streams(256);
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let header_timeout = http.header_read_timeout;

    tokio::pin!(signal);
    let drain = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(drain);
    let mut draining = false;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                spawn_connection(stream, peer, &api, &builder, &graceful, header_timeout);
            }
            () = &mut signal, if !draining => {
                draining = true;
                api.plane().health().start_draining();
                tracing::info!(
                    drain_delay_ms = http.drain_delay.as_millis() as u64,
                    "shutdown requested; readiness is now 503, still serving while load balancers notice"
                );
                drain.as_mut().reset(tokio::time::Instant::now() + http.drain_delay);
            }
            () = &mut drain, if draining => break,
        }
    }
    // Connections the kernel completed but the loop has not taken yet would
    // be reset when the listener closes, after the client may have sent a
    // request on them (a POST that a proxy does not retry): serve them too.
    while let Poll::Ready(Ok((stream, peer))) =
        std::future::poll_fn(|cx| Poll::Ready(listener.poll_accept(cx))).await
    {
        spawn_connection(stream, peer, &api, &builder, &graceful, header_timeout);
    }
    drop(listener);
    // A connection that has not read its request yet counts as idle, and
    // the shutdown signal would close it unread: let the last ones read.
    tokio::time::sleep(LAST_READ_GRACE).await;
    let open = graceful.count();
    tracing::info!(
        open_connections = open,
        "listener closed; finishing in-flight requests"
    );
    let finished = tokio::time::timeout(http.shutdown_timeout, graceful.shutdown()).await;
    Ok(match finished {
        Ok(()) => Shutdown::Clean,
        Err(_) => Shutdown::TimedOut {
            open_connections: open,
        },
    })
}
