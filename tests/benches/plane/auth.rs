//! Authentication and rate limiting through real replicas.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use tp_tests::replica::{Replica, prod_env, set};
use tp_tests::{Client, RedisServer};

use crate::load::{self, Bounds, Hello, Proc, Target};
use crate::report::{Summary, Target as Goal, ms};
use crate::{Opts, Services};

fn bounds(opts: &Opts) -> Bounds {
    Bounds {
        concurrency: opts.concurrency,
        requests: 1_000_000,
        time: opts.window,
    }
}

fn start(env: &[(String, String)]) -> Replica {
    tokio::task::block_in_place(|| Replica::start(env))
}

/// An access token of a viewer (created on first use).
async fn viewer_token(replica: &Replica, env: &[(String, String)]) -> String {
    let login = replica.login_as(env, "reader", "viewer").await;
    login["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

/// A new viewer API key (`tpk_…`), created by an admin.
async fn api_key(replica: &Replica, env: &[(String, String)]) -> String {
    let admin = replica.admin_token(env).await;
    let reply = Client::new()
        .json(
            Method::POST,
            &replica.url("/api/api-keys"),
            Some(&admin),
            &serde_json::json!({"name": "bench", "role": "viewer"}),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "create api key: {:?}",
        reply.json()
    );
    reply.json()["key"].as_str().expect("key").to_owned()
}

/// Authenticated vs unauthenticated requests on one replica, and a bare hyper server.
pub async fn run_auth(opts: &Opts, services: &Services, summary: &mut Summary) {
    let cluster = tokio::task::block_in_place(|| services.cluster());
    let url = tokio::task::block_in_place(|| cluster.create_database("bench_auth"));
    let mut env = prod_env(&url);
    set(&mut env, "TP_RATE_LIMIT_DISABLED", "true");
    let replica = start(&env);
    let token = viewer_token(&replica, &env).await;
    let key = api_key(&replica, &env).await;
    let hello = Hello::start();
    let targets = [
        Target::get("hyper hello world (in bench)", hello.addr, "/", None, 200),
        Target::get(
            "GET /api/health/live",
            replica.addr,
            "/api/health/live",
            None,
            200,
        ),
        Target::get(
            "GET /api/auth/me (JWT)",
            replica.addr,
            "/api/auth/me",
            Some(&token),
            200,
        ),
        Target::get(
            "GET /api/auth/me (API key)",
            replica.addr,
            "/api/auth/me",
            Some(&key),
            200,
        ),
        Target::get(
            "GET /api/users, viewer JWT → 403",
            replica.addr,
            "/api/users",
            Some(&token),
            403,
        ),
    ]
    .map(|mut t| {
        if t.addr == replica.addr {
            t.processes = vec![("replica", Proc::One(replica.pid()))];
        }
        Arc::new(t)
    });
    println!(
        "{} keep-alive HTTP/1.1 connections, closed loop; {} rounds interleaved, each ≤ {:?}; \
         rate limiting off (TP_RATE_LIMIT_DISABLED=true)",
        opts.concurrency, opts.rounds, opts.window
    );
    let out = load::interleaved(&targets, bounds(opts), opts.rounds).await;
    println!();
    for (t, o) in targets.iter().zip(&out) {
        println!("{}", o.line(&t.name));
    }
    let [hello_out, live, me, me_key, denied] = &out[..] else {
        unreachable!("five targets")
    };
    let rate = load::Outcome::brief;
    summary.add(
        "auth",
        "GET /api/auth/me (JWT verify, revoked set, user row) / GET /api/health/live",
        rate(me),
        rate(live),
        load::paired_ratio(me, live),
        Goal::AtLeast(0.85),
    );
    summary.add(
        "auth",
        "GET /api/auth/me with an API key (cached, no database) / GET /api/health/live",
        rate(me_key),
        rate(live),
        load::paired_ratio(me_key, live),
        Goal::Info,
    );
    summary.add(
        "auth",
        "JWT verify + revoked set + role check only (403) / GET /api/health/live",
        rate(denied),
        rate(live),
        load::paired_ratio(denied, live),
        Goal::Info,
    );
    summary.add(
        "auth",
        "GET /api/health/live / bare hyper hello world",
        rate(live),
        rate(hello_out),
        load::paired_ratio(live, hello_out),
        Goal::Info,
    );
}

/// Sends one command and reads its reply, which has `lines` CRLF-terminated lines.
fn redis_command(stream: &mut TcpStream, command: &[u8], lines: usize) -> Vec<u8> {
    stream.write_all(command).expect("write to redis");
    let mut reply = Vec::with_capacity(128);
    let mut buf = [0u8; 512];
    while reply.iter().filter(|&&b| b == b'\n').count() < lines {
        let n = stream.read(&mut buf).expect("read from redis");
        assert!(n > 0, "redis closed the connection");
        reply.extend_from_slice(&buf[..n]);
        if reply.first() == Some(&b'-') && reply.ends_with(b"\r\n") {
            panic!("redis error: {}", String::from_utf8_lossy(&reply));
        }
    }
    reply
}

/// Round-trip times (µs, sorted) of one Redis command on one connection,
/// `count` times back to back, at most 5 s.
fn redis_round_trip(
    stream: &mut TcpStream,
    command: &[u8],
    lines: usize,
    count: usize,
) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        if Instant::now() > deadline {
            break;
        }
        let t = Instant::now();
        redis_command(stream, command, lines);
        times.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    times.sort_unstable();
    times
}

/// The pid of the redis-server this bench started on `port` (its command
/// line, or the process title Redis rewrites it to: `redis-server 127.0.0.1:<port>`).
fn redis_pid(port: u16) -> Option<u32> {
    let argument = format!("--port\0{port}\0");
    let title = format!("127.0.0.1:{port}");
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                let titled = c.split(['\0', ' ']).any(|word| word == title);
                c.contains("redis-server") && (c.contains(&argument) || titled)
            })
        })
}

fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// tp-core's GCRA script (ratelimit/global.rs), to time one limiter decision on Redis alone.
const GCRA: &str = r#"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tau = interval * (burst - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat - tau
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
local remaining = math.floor((now + tau - new_tat) / interval) + 1
return {1, remaining, 0, new_tat - now}
"#;

/// No limiter vs the local governor vs the Redis limiter, and one Redis round trip.
pub async fn run_ratelimit(opts: &Opts, services: &Services, summary: &mut Summary) {
    let redis = tokio::task::block_in_place(RedisServer::start);
    let cluster = tokio::task::block_in_place(|| services.cluster());
    let url = tokio::task::block_in_place(|| cluster.create_database("bench_ratelimit"));

    // One Redis round trip, from a raw TCP client.
    let (ping, eval) = tokio::task::block_in_place(|| {
        let mut stream = TcpStream::connect(("127.0.0.1", redis.port)).expect("connect to redis");
        stream.set_nodelay(true).expect("nodelay");
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("read timeout");
        let ping = redis_round_trip(&mut stream, b"PING\r\n", 1, 20_000);
        // As the server does: EVALSHA of the loaded script, one key, two numbers.
        let loaded = redis_command(&mut stream, &resp(&["SCRIPT", "LOAD", GCRA]), 2);
        let loaded = String::from_utf8_lossy(&loaded);
        let sha = loaded.lines().nth(1).expect("script sha").to_owned();
        let evalsha = resp(&["EVALSHA", &sha, "1", "tp:bench:rl:user:u", "6", "1000000"]);
        let eval = redis_round_trip(&mut stream, &evalsha, 5, 20_000);
        (ping, eval)
    });
    let q = |t: &[u32], p: f64| ms(crate::report::quantile(t, p));
    println!(
        "Redis round trip on loopback, one connection, back to back: PING p50 {} p99 {} \
         (n={}); the limiter's GCRA script (EVALSHA) p50 {} p99 {} (n={})",
        q(&ping, 0.5),
        q(&ping, 0.99),
        ping.len(),
        q(&eval, 0.5),
        q(&eval, 0.99),
        eval.len()
    );

    let base = prod_env(&url);
    let mut none = base.clone();
    set(&mut none, "TP_RATE_LIMIT_DISABLED", "true");
    let mut local = base.clone();
    // High enough that nothing is refused: 10M per minute, burst 1M.
    set(&mut local, "TP_RATE_LIMIT_PER_MINUTE", "10000000");
    set(&mut local, "TP_RATE_LIMIT_BURST", "1000000");
    let mut global = local.clone();
    set(&mut global, "REDIS_URL", &redis.url());
    // Every request a round trip: what the Lua script itself costs.
    let mut per_request = global.clone();
    set(&mut per_request, "TP_RATE_LIMIT_LEASE_MAX", "1");

    let r_none = start(&none);
    let r_local = start(&local);
    let r_global = start(&global);
    let r_per_request = start(&per_request);
    let token = viewer_token(&r_none, &none).await;
    let admin = r_none.admin_token(&none).await;
    let reply = Client::new()
        .json(
            Method::POST,
            &r_none.url("/api/api-keys"),
            Some(&admin),
            &serde_json::json!({"name": "bench", "role": "viewer"}),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "create api key: {:?}",
        reply.json()
    );
    let key = reply.json()["key"].as_str().expect("key").to_owned();
    for (name, r) in [
        ("local", &r_local),
        ("redis", &r_global),
        ("redis, no leases", &r_per_request),
    ] {
        let health = Client::new().get(&r.url("/api/health"), None).await.json();
        println!(
            "replica {name}: health rate_limit {} redis {}",
            health["rate_limit"], health["redis"]
        );
    }

    println!(
        "\n{} keep-alive HTTP/1.1 connections, closed loop, one principal; {} rounds \
         interleaved, each ≤ {:?}",
        opts.concurrency, opts.rounds, opts.window
    );
    let redis_pid = redis_pid(redis.port);
    let replicas = [
        ("no limiter", &r_none),
        ("local governor", &r_local),
        ("Redis GCRA, leases", &r_global),
        ("Redis GCRA, every request", &r_per_request),
    ];
    let routes = [
        ("/api/auth/me, JWT (reads the user row)", token.as_str()),
        ("/api/auth/me, API key (no database)", key.as_str()),
    ];
    for (route, credential) in routes {
        let targets: Vec<Arc<Target>> = replicas
            .iter()
            .map(|(name, r)| {
                let mut t = Target::get(name, r.addr, "/api/auth/me", Some(credential), 200);
                t.processes = vec![("replica", Proc::One(r.pid()))];
                if let Some(pid) = redis_pid {
                    // Also when Redis is idle, so the columns line up.
                    t.processes.push(("redis", Proc::One(pid)));
                }
                Arc::new(t)
            })
            .collect();
        println!(" {route}:");
        let out = load::interleaved(&targets, bounds(opts), opts.rounds).await;
        for (t, o) in targets.iter().zip(&out) {
            println!("{}", o.line(&t.name));
        }
        let [off, loc, glob, each] = &out[..] else {
            unreachable!("four targets")
        };
        let rate = load::Outcome::brief;
        summary.add(
            "ratelimit",
            format!("{route}: local governor / no limiter"),
            rate(loc),
            rate(off),
            load::paired_ratio(loc, off),
            Goal::AtLeast(0.95),
        );
        summary.add(
            "ratelimit",
            format!("{route}: Redis limiter (leases, the default) / no limiter"),
            rate(glob),
            rate(off),
            load::paired_ratio(glob, off),
            Goal::AtLeast(0.6),
        );
        summary.add(
            "ratelimit",
            format!("{route}: Redis limiter, a round trip per request / no limiter"),
            rate(each),
            rate(off),
            load::paired_ratio(each, off),
            Goal::Info,
        );
    }
    summary.add(
        "ratelimit",
        "one Redis round trip: GCRA EVALSHA p50 / PING p50",
        q(&eval, 0.5),
        q(&ping, 0.5),
        f64::from(eval[eval.len() / 2]) / f64::from(ping[ping.len() / 2].max(1)),
        Goal::Info,
    );
    drop((r_none, r_local, r_global, r_per_request));
    drop(redis);
}
