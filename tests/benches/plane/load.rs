//! A closed-loop HTTP/1.1 load generator (one keep-alive connection per
//! worker, no pool in between) and a bare hyper server as a baseline.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::report::{self, quantile};

/// What every request of a load looks like.
pub struct Target {
    /// A short name for the tables.
    pub name: String,
    /// Server address.
    pub addr: SocketAddr,
    /// Method.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// `Authorization` value, if any.
    pub authorization: Option<String>,
    /// Bodies, sent in turn (none: empty body).
    pub bodies: Vec<Bytes>,
    /// The status every answer must have to count as a success.
    pub expect: StatusCode,
    /// Server processes whose CPU time to account, by label.
    pub processes: Vec<(&'static str, Proc)>,
}

impl Target {
    /// A GET with an optional bearer token.
    pub fn get(name: &str, addr: SocketAddr, path: &str, token: Option<&str>, expect: u16) -> Self {
        Target {
            name: name.to_owned(),
            addr,
            method: Method::GET,
            path: path.to_owned(),
            authorization: token.map(|t| format!("Bearer {t}")),
            bodies: Vec::new(),
            expect: StatusCode::from_u16(expect).expect("status"),
            processes: Vec::new(),
        }
    }
}

/// What a load saw (mergeable across rounds).
#[derive(Default, Clone)]
pub struct Outcome {
    /// Latency of every expected answer, µs.
    pub latencies_us: Vec<u32>,
    /// Answers with another status, by status.
    pub unexpected: BTreeMap<u16, u64>,
    /// Requests without an answer.
    pub errors: u64,
    /// Wall time of the loads.
    pub elapsed: Duration,
    /// Busy CPU time of the whole machine meanwhile (client, servers and
    /// anything else), from `/proc/stat`.
    pub cpu: Duration,
    /// CPU time and context switches of each accounted process meanwhile.
    pub process_usage: Vec<(&'static str, Usage)>,
    /// The first failure, for the log.
    pub example: Option<String>,
    /// Request rate of each round, in order.
    pub rounds: Vec<f64>,
}

impl Outcome {
    /// Adds another round.
    pub fn merge(&mut self, other: Outcome) {
        self.latencies_us.extend(other.latencies_us);
        for (k, v) in other.unexpected {
            *self.unexpected.entry(k).or_default() += v;
        }
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        self.cpu += other.cpu;
        for (label, usage) in other.process_usage {
            match self.process_usage.iter_mut().find(|(l, _)| *l == label) {
                Some((_, total)) => *total += usage,
                None => self.process_usage.push((label, usage)),
            }
        }
        if self.example.is_none() {
            self.example = other.example;
        }
        self.rounds.extend(other.rounds);
    }

    /// Successful requests per second.
    pub fn rate(&self) -> f64 {
        self.latencies_us.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Machine-wide busy CPU time per successful request.
    pub fn cpu_per_request(&self) -> Duration {
        self.cpu.div_f64(self.latencies_us.len().max(1) as f64)
    }

    /// A compact description for the summary: rate, p50 and CPU per request
    /// (whole machine, then each accounted process).
    pub fn brief(&self) -> String {
        let per = |d: Duration| {
            d.div_f64(self.latencies_us.len().max(1) as f64)
                .as_secs_f64()
                * 1e6
        };
        let mut s = format!(
            "{:.0} req/s (p50 {}; CPU/req {:.0} µs",
            self.rate(),
            report::ms(self.p50()),
            per(self.cpu)
        );
        for (label, usage) in &self.process_usage {
            s.push_str(&format!(", {label} {:.0}", per(usage.cpu)));
        }
        s.push(')');
        s
    }

    /// Sorts the latencies (before quantiles).
    pub fn sorted(mut self) -> Self {
        self.latencies_us.sort_unstable();
        self
    }

    /// Median latency (after [`sorted`](Self::sorted)).
    pub fn p50(&self) -> Duration {
        quantile(&self.latencies_us, 0.50)
    }

    /// 99th percentile latency (after [`sorted`](Self::sorted)).
    pub fn p99(&self) -> Duration {
        quantile(&self.latencies_us, 0.99)
    }

    /// One table line.
    pub fn line(&self, name: &str) -> String {
        let failures: u64 = self.unexpected.values().sum::<u64>() + self.errors;
        let mut line = format!(
            "  {name:<34} {:>9.0} req/s  p50 {:>10}  p99 {:>10}  cpu/req {:>6.1} µs  n={:<7} failed={failures}",
            self.rate(),
            report::ms(self.p50()),
            report::ms(self.p99()),
            self.cpu_per_request().as_secs_f64() * 1e6,
            self.latencies_us.len(),
        );
        let n = self.latencies_us.len().max(1) as f64;
        for (label, usage) in &self.process_usage {
            line.push_str(&format!(
                "  {label} {:.1} µs {:.1} cs",
                usage.cpu.div_f64(n).as_secs_f64() * 1e6,
                usage.switches as f64 / n,
            ));
        }
        if failures > 0 {
            line.push_str(&format!(
                " {:?} e.g. {}",
                self.unexpected,
                self.example.as_deref().unwrap_or("-")
            ));
        }
        line
    }
}

/// The median over rounds of `a`'s rate divided by `b`'s in the same round:
/// rounds are interleaved, so a pair saw the same background load.
/// The per-round ratios are printed, so their spread shows.
pub fn paired_ratio(a: &Outcome, b: &Outcome) -> f64 {
    let mut ratios: Vec<f64> = a
        .rounds
        .iter()
        .zip(&b.rounds)
        .map(|(x, y)| x / y.max(1e-9))
        .collect();
    println!(
        "    per-round ratios: {}",
        ratios
            .iter()
            .map(|r| format!("{r:.3}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if ratios.is_empty() {
        return a.rate() / b.rate().max(1e-9);
    }
    ratios.sort_by(f64::total_cmp);
    let n = ratios.len();
    if n % 2 == 1 {
        ratios[n / 2]
    } else {
        (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0
    }
}

/// Bounds of one load.
#[derive(Clone, Copy)]
pub struct Bounds {
    /// Concurrent connections, each sending one request at a time.
    pub concurrency: usize,
    /// Requests in all.
    pub requests: u64,
    /// Wall time.
    pub time: Duration,
}

/// Runs `target` within `bounds`: `concurrency` workers, each with its own
/// keep-alive connection, send requests back to back.
pub async fn run(target: &Arc<Target>, bounds: Bounds) -> Outcome {
    let claimed = Arc::new(AtomicU64::new(0));
    let cpu = busy_cpu();
    let processes = CpuMeter::start(&target.processes);
    let started = Instant::now();
    let deadline = started + bounds.time;
    let workers: Vec<_> = (0..bounds.concurrency)
        .map(|w| {
            let target = target.clone();
            let claimed = claimed.clone();
            tokio::spawn(
                async move { worker(w, &target, &claimed, bounds.requests, deadline).await },
            )
        })
        .collect();
    let mut total = Outcome::default();
    for w in workers {
        total.merge(w.await.expect("load worker"));
    }
    total.elapsed = started.elapsed();
    total.cpu = busy_cpu().saturating_sub(cpu);
    total.process_usage = processes.stop();
    total
}

/// CPU time and context switches of labelled processes since [`CpuMeter::start`].
pub struct CpuMeter<'a> {
    processes: &'a [(&'static str, Proc)],
    before: Vec<Usage>,
}

impl<'a> CpuMeter<'a> {
    pub fn start(processes: &'a [(&'static str, Proc)]) -> Self {
        CpuMeter {
            processes,
            before: processes.iter().map(|(_, p)| p.usage()).collect(),
        }
    }

    /// Each process's usage since the start, by label.
    pub fn stop(self) -> Vec<(&'static str, Usage)> {
        self.processes
            .iter()
            .zip(self.before)
            .map(|((label, p), before)| (*label, p.usage().since(before)))
            .collect()
    }
}

/// What a process used: CPU time, and how often its threads were switched
/// out (each sleep and wake-up, or preemption, is one).
#[derive(Clone, Copy, Default)]
pub struct Usage {
    pub cpu: Duration,
    pub switches: u64,
}

impl Usage {
    /// What was used between `before` and `self`.
    fn since(self, before: Usage) -> Usage {
        Usage {
            cpu: self.cpu.saturating_sub(before.cpu),
            switches: self.switches.saturating_sub(before.switches),
        }
    }
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Usage) {
        self.cpu += other.cpu;
        self.switches += other.switches;
    }
}

/// A process whose CPU time a load accounts.
#[derive(Clone, Copy)]
pub enum Proc {
    /// One process, all its threads.
    One(u32),
    /// A process and its children (the postmaster and its backends).
    Tree(u32),
    /// The bench itself: the load's client side.
    Client,
}

impl Proc {
    pub fn usage(self) -> Usage {
        let one = |pid| Usage {
            cpu: process_cpu(pid),
            switches: context_switches(pid),
        };
        match self {
            Proc::One(pid) => one(pid),
            Proc::Client => one(std::process::id()),
            Proc::Tree(root) => {
                let children: Vec<u32> = std::fs::read_dir("/proc")
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                    .filter(|&pid| parent(pid) == Some(root))
                    .collect();
                Usage {
                    // Backends that exited (a pool closing idle connections)
                    // moved their time into the postmaster's cutime and
                    // cstime; their switches are not counted.
                    cpu: cpu_fields(root, 4)
                        + children.iter().copied().map(process_cpu).sum::<Duration>(),
                    switches: context_switches(root)
                        + children.into_iter().map(context_switches).sum::<u64>(),
                }
            }
        }
    }
}

/// Voluntary and involuntary context switches of every live thread of `pid`.
fn context_switches(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold spaces).
fn stat_fields(pid: u32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_default()
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn parent(pid: u32) -> Option<u32> {
    stat_fields(pid).get(1)?.parse().ok()
}

/// User and system CPU time of process `pid` (`/proc/<pid>/stat`, all threads).
pub fn process_cpu(pid: u32) -> Duration {
    cpu_fields(pid, 2)
}

/// The sum of `count` CPU time fields of `pid` from utime on: utime and
/// stime, then the reaped children's cutime and cstime. After the command
/// name, state is the first field and utime the 12th; USER_HZ is 100.
fn cpu_fields(pid: u32, count: usize) -> Duration {
    let ticks: u64 = stat_fields(pid)
        .iter()
        .skip(11)
        .take(count)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

/// Busy CPU time of all cores since boot (`/proc/stat`: all but idle, iowait and steal).
pub fn busy_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: u64 = stat
        .lines()
        .next()
        .map(|cpu| {
            cpu.split_whitespace()
                .skip(1)
                .take(8)
                .enumerate()
                .filter(|(i, _)| !matches!(i, 3 | 4 | 7))
                .filter_map(|(_, v)| v.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

async fn worker(
    w: usize,
    target: &Target,
    claimed: &AtomicU64,
    max_requests: u64,
    deadline: Instant,
) -> Outcome {
    let mut out = Outcome::default();
    let host = HeaderValue::from_str(&target.addr.to_string()).expect("host header");
    let authorization = target
        .authorization
        .as_deref()
        .map(|a| HeaderValue::from_str(a).expect("authorization header"));
    let mut sender: Option<Sender> = None;
    let mut i = w;
    loop {
        if Instant::now() >= deadline || claimed.fetch_add(1, Ordering::Relaxed) >= max_requests {
            break;
        }
        if sender.is_none() {
            match connect(target.addr).await {
                Ok(s) => sender = Some(s),
                Err(e) => {
                    out.errors += 1;
                    out.example.get_or_insert(e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let Some(s) = sender.as_mut() else { continue };
        let body = target
            .bodies
            .get(i % target.bodies.len().max(1))
            .cloned()
            .unwrap_or_default();
        i += 1;
        let mut request = Request::builder()
            .method(target.method.clone())
            .uri(target.path.as_str())
            .header(header::HOST, host.clone());
        if let Some(a) = &authorization {
            request = request.header(header::AUTHORIZATION, a.clone());
        }
        if !body.is_empty() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request.body(Full::new(body)).expect("request");
        let sent = Instant::now();
        let attempt = async {
            s.ready().await.map_err(|e| format!("not ready: {e}"))?;
            let response = s
                .send_request(request)
                .await
                .map_err(|e| format!("send: {e}"))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("body: {e}"))?
                .to_bytes();
            Ok::<_, String>((parts.status, body))
        };
        match tokio::time::timeout(Duration::from_secs(30), attempt).await {
            Ok(Ok((status, _))) if status == target.expect => {
                let us = sent.elapsed().as_micros();
                out.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
            }
            Ok(Ok((status, body))) => {
                *out.unexpected.entry(status.as_u16()).or_default() += 1;
                out.example.get_or_insert_with(|| {
                    format!(
                        "{status} {}",
                        String::from_utf8_lossy(&body[..body.len().min(300)])
                    )
                });
            }
            Ok(Err(e)) => {
                out.errors += 1;
                out.example.get_or_insert(e);
                sender = None;
            }
            Err(_) => {
                out.errors += 1;
                out.example
                    .get_or_insert_with(|| "timed out after 30 s".into());
                sender = None;
            }
        }
    }
    out
}

/// Runs every target `rounds` times, interleaved round by round so that a
/// disturbance (another process on the machine) spreads over all of them.
/// Each round is preceded by a short warm-up that is not counted.
pub async fn interleaved(targets: &[Arc<Target>], bounds: Bounds, rounds: usize) -> Vec<Outcome> {
    let warm = Bounds {
        requests: 200,
        time: Duration::from_millis(500),
        ..bounds
    };
    let mut outcomes = vec![Outcome::default(); targets.len()];
    for round in 0..rounds {
        for (t, outcome) in targets.iter().zip(&mut outcomes) {
            run(t, warm).await;
            let mut o = run(t, bounds).await;
            println!(
                "    round {} {:<34} {:>9.0} req/s",
                round + 1,
                t.name,
                o.rate()
            );
            o.rounds.push(o.rate());
            outcome.merge(o);
        }
    }
    outcomes.into_iter().map(Outcome::sorted).collect()
}

/// A hyper HTTP/1.1 server answering every request with a small JSON body,
/// on its own two-thread runtime (like a replica); stopped when dropped.
pub struct Hello {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Hello {
    /// Starts the server.
    pub fn start() -> Hello {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("hello runtime");
            runtime.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind hello");
                addr_tx
                    .send(listener.local_addr().expect("hello addr"))
                    .expect("send addr");
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        accepted = listener.accept() => {
                            let Ok((stream, _)) = accepted else { continue };
                            let _ = stream.set_nodelay(true);
                            tokio::spawn(async move {
                                let service = hyper::service::service_fn(|_req| async {
                                    Ok::<_, Infallible>(
                                        Response::builder()
                                            .header(header::CONTENT_TYPE, "application/json")
                                            .body(Full::new(Bytes::from_static(b"{\"status\":\"ok\"}")))
                                            .expect("response"),
                                    )
                                });
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            });
                        }
                    }
                }
            });
            runtime.shutdown_timeout(Duration::from_secs(1));
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("hello server address");
        Hello {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Hello {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
