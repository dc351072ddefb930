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
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
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

/// What every accepted connection needs, and where it runs.
struct Acceptor<'a> {
    api: &'a Api,
    builder: Arc<auto::Builder<TokioExecutor>>,
    graceful: GracefulShutdown,
    header_timeout: Duration,
    /// Runtimes that serve connections in turn (none: the current one).
    runtimes: &'a [Handle],
    next: usize,
}

impl Acceptor<'_> {
    /// Starts serving an accepted connection, on the next serving runtime.
    fn accept(&mut self, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let parts = ConnectionParts {
            api: self.api.clone(),
            builder: self.builder.clone(),
            watcher: self.graceful.watcher(),
            header_timeout: self.header_timeout,
        };
        if self.runtimes.is_empty() {
            tokio::spawn(serve_connection(stream, peer, parts));
            return;
        }
        let runtime = &self.runtimes[self.next % self.runtimes.len()];
        self.next = self.next.wrapping_add(1);
        // The socket leaves this runtime's reactor for the serving one's.
        match stream.into_std() {
            Ok(stream) => {
                runtime.spawn(async move {
                    match TcpStream::from_std(stream) {
                        Ok(stream) => serve_connection(stream, peer, parts).await,
                        Err(e) => tracing::debug!(error = %e, %peer, "cannot register a connection"),
                    }
                });
            }
            Err(e) => tracing::debug!(error = %e, %peer, "cannot hand a connection over"),
        }
    }
}

/// What one connection's task owns.
struct ConnectionParts {
    api: Api,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
    header_timeout: Duration,
}

/// Serves one accepted connection until it ends or shutdown finishes it.
async fn serve_connection(stream: TcpStream, peer: SocketAddr, parts: ConnectionParts) {
    let ConnectionParts {
        api,
        builder,
        watcher,
        header_timeout,
    } = parts;
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
    serve_on(listener, api, http, signal, &[]).await
}

/// Like [`serve`], with accepted connections handed to `runtimes` in turn
/// (each connection then runs wholly on one of them); with none given,
/// connections run on the current runtime.
pub async fn serve_on(
    listener: TcpListener,
    api: Api,
    http: &HttpConfig,
    signal: impl Future<Output = ()>,
    runtimes: &[Handle],
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
    let mut acceptor = Acceptor {
        api: &api,
        builder: Arc::new(builder),
        graceful: GracefulShutdown::new(),
        header_timeout: http.header_read_timeout,
        runtimes,
        next: 0,
    };

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
                acceptor.accept(stream, peer);
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
        acceptor.accept(stream, peer);
    }
    drop(listener);
    // A connection that has not read its request yet counts as idle, and
    // the shutdown signal would close it unread: let the last ones read.
    tokio::time::sleep(LAST_READ_GRACE).await;
    let graceful = acceptor.graceful;
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
