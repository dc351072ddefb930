//! The listener: HTTP/1.1 and h2c on one port, bounded header reads, and the
//! drain sequence that lets load balancers move traffic away before exit.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;

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
    slots: &Slots,
) {
    // Past the cap the connection is closed at once: a proxy retries
    // elsewhere, and the replica's memory stays bounded.
    let Some(slot) = slots.take(peer) else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let api = api.clone();
    let builder = builder.clone();
    let watcher = graceful.watcher();
    tokio::spawn(async move {
        let _slot = slot;
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
        if let Err(e) = Repoll::new(watcher.watch(connection)).await {
            tracing::debug!(error = %e, %peer, "connection ended with an error");
        }
    });
}

/// Open-connection slots of one listener (`TP_MAX_CONNECTIONS`).
struct Slots {
    permits: Arc<tokio::sync::Semaphore>,
    max: usize,
    last_refusal_log: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Slots {
    fn new(max: usize) -> Self {
        Slots {
            permits: Arc::new(tokio::sync::Semaphore::new(max)),
            max,
            last_refusal_log: std::sync::Mutex::new(None),
        }
    }

    /// A slot for a new connection, or `None` (logged at most every 10 s) at the cap.
    fn take(&self, peer: SocketAddr) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Some(permit);
        }
        let mut last = self
            .last_refusal_log
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
            *last = Some(std::time::Instant::now());
            tracing::warn!(%peer, max = self.max, "connection closed: TP_MAX_CONNECTIONS open already");
        }
        None
    }
}

/// Polls a connection again at once when it wakes itself during its own poll.
///
/// hyper's request-body channel does that for every request with a body:
/// the handler takes the body, and the channel wakes the sender, which is
/// the connection's own task. Tokio's multi-thread scheduler treats a task
/// woken while it runs as a yield: it queues the task again and wakes a
/// parked worker to steal it. That cost every POST a context switch, and
/// often a move of the connection to the other worker, for a poll that
/// found nothing to do. Polling again here does the same on this thread.
/// Bounded: a future that keeps waking itself still yields to the scheduler.
struct Repoll<F> {
    inner: Pin<Box<F>>,
    state: Arc<RepollState>,
    waker: Waker,
}

/// Whether the inner future is being polled and was woken meanwhile, and
/// the task to wake otherwise.
struct RepollState {
    phase: AtomicU8,
    task: AtomicWaker,
}

const IDLE: u8 = 0;
const POLLING: u8 = 1;
const WOKEN: u8 = 2;

/// Polls of the inner future per poll of the task.
const MAX_POLLS: usize = 4;

impl<F: Future> Repoll<F> {
    fn new(inner: F) -> Self {
        let state = Arc::new(RepollState {
            phase: AtomicU8::new(IDLE),
            task: AtomicWaker::new(),
        });
        Repoll {
            inner: Box::pin(inner),
            waker: Waker::from(state.clone()),
            state,
        }
    }
}

impl<F: Future> Future for Repoll<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        this.state.task.register(cx.waker());
        let mut inner_cx = Context::from_waker(&this.waker);
        for _ in 0..MAX_POLLS {
            this.state.phase.store(POLLING, Ordering::SeqCst);
            if let Poll::Ready(output) = this.inner.as_mut().poll(&mut inner_cx) {
                this.state.phase.store(IDLE, Ordering::SeqCst);
                return Poll::Ready(output);
            }
            if this.state.phase.swap(IDLE, Ordering::SeqCst) != WOKEN {
                return Poll::Pending;
            }
        }
        // Still waking itself: let the scheduler run others first.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Wake for RepollState {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // During a poll the poller sees the mark and polls again; otherwise
        // (or once it has finished) the task is woken as usual.
        match self
            .phase
            .compare_exchange(POLLING, WOKEN, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) | Err(WOKEN) => {}
            Err(_) => self.task.wake(),
        }
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
    let slots = Slots::new(http.max_connections);

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
                spawn_connection(stream, peer, &api, &builder, &graceful, header_timeout, &slots);
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
        spawn_connection(
            stream,
            peer,
            &api,
            &builder,
            &graceful,
            header_timeout,
            &slots,
        );
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

/// Serves `GET /metrics` (and nothing else: 404) on its own listener, until
/// the task running it is dropped. Keeps scrapes off the public API port.
pub async fn serve_metrics(listener: TcpListener, render: crate::MetricsRenderer) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let render = render.clone();
                async move {
                    let response = if request.uri().path() == "/metrics"
                        && request.method() == http::Method::GET
                    {
                        crate::handlers::render_metrics(render).await
                    } else {
                        crate::error::problem(
                            http::StatusCode::NOT_FOUND,
                            "route_not_found",
                            "this listener serves GET /metrics only".to_owned(),
                            "-",
                        )
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Counts the wakes of the task that polls a [`Repoll`].
    #[derive(Default)]
    struct Task(AtomicUsize);

    impl Wake for Task {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Wakes itself while being polled for its first `wakes` polls, then
    /// is ready on poll `ready_on` (1-based), if any.
    struct Script {
        wakes: usize,
        ready_on: Option<usize>,
        polls: Arc<AtomicUsize>,
    }

    impl Future for Script {
        type Output = usize;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            let n = self.polls.fetch_add(1, Ordering::SeqCst) + 1;
            if n <= self.wakes {
                cx.waker().wake_by_ref();
            }
            match self.ready_on {
                Some(r) if n >= r => Poll::Ready(n),
                _ => Poll::Pending,
            }
        }
    }

    fn run(wakes: usize, ready_on: Option<usize>) -> (Repoll<Script>, Arc<Task>, Arc<AtomicUsize>) {
        let polls = Arc::new(AtomicUsize::new(0));
        let script = Script {
            wakes,
            ready_on,
            polls: polls.clone(),
        };
        (Repoll::new(script), Arc::new(Task::default()), polls)
    }

    fn poll_once<F: Future>(future: &mut Repoll<F>, task: &Arc<Task>) -> Poll<F::Output> {
        let waker = Waker::from(task.clone());
        Pin::new(future).poll(&mut Context::from_waker(&waker))
    }

    #[test]
    fn a_future_that_wakes_itself_is_polled_again_without_waking_the_task() {
        let (mut future, task, polls) = run(1, Some(2));
        assert_eq!(poll_once(&mut future, &task), Poll::Ready(2));
        assert_eq!(polls.load(Ordering::SeqCst), 2);
        assert_eq!(task.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_self_wake_then_nothing_to_do_leaves_the_task_asleep() {
        let (mut future, task, polls) = run(1, None);
        assert_eq!(poll_once(&mut future, &task), Poll::Pending);
        assert_eq!(polls.load(Ordering::SeqCst), 2);
        assert_eq!(task.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_future_that_keeps_waking_itself_still_yields_to_the_scheduler() {
        let (mut future, task, polls) = run(usize::MAX, None);
        assert_eq!(poll_once(&mut future, &task), Poll::Pending);
        assert_eq!(polls.load(Ordering::SeqCst), MAX_POLLS);
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "woken to be polled again");
    }

    #[test]
    fn a_wake_after_the_poll_wakes_the_task() {
        let polls = Arc::new(AtomicUsize::new(0));
        let task = Arc::new(Task::default());
        let parked: Arc<std::sync::Mutex<Option<Waker>>> = Arc::default();
        let slot = parked.clone();
        let mut future = Repoll::new(std::future::poll_fn(move |cx| {
            polls.fetch_add(1, Ordering::SeqCst);
            *slot.lock().unwrap() = Some(cx.waker().clone());
            Poll::<()>::Pending
        }));
        assert_eq!(poll_once(&mut future, &task), Poll::Pending);
        assert_eq!(task.0.load(Ordering::SeqCst), 0);
        let waker = parked.lock().unwrap().take().unwrap();
        std::thread::spawn(move || waker.wake()).join().unwrap();
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
    }
}
