//! `raftkv bench`: concurrent Store load (with `--reads`, Gets too) with latency
//! percentiles, progress every second, and the longest gap between successful writes
//! (for failover measurements); closed loop, or open loop at `--rate`.
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use raftkv::client::{ClientError, Options, Session};
use raftkv::proto::{self as pb, key_value_client::KeyValueClient};
use tonic::transport::Channel;

use super::bench_svg::Second;
use super::client::Conn;
use super::{CliError, CmdResult};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Concurrent clients, each with one request outstanding.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// Total Store requests (ignored with --duration-s).
    #[arg(long, default_value_t = 50_000)]
    pub requests: u64,
    /// Run for this many seconds instead of a request count. Either way, Ctrl-C or
    /// SIGTERM stops it early: requests in flight finish and the summary is printed.
    #[arg(long)]
    pub duration_s: Option<u64>,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Keys are drawn from this many distinct keys.
    #[arg(long, default_value_t = 100_000)]
    pub key_space: u64,
    /// Write keys key00000000, key00000001, ... in order (N requests make N keys)
    /// instead of drawing them from --key-space.
    #[arg(long)]
    pub sequential_keys: bool,
    /// gRPC connections shared by the clients, per endpoint.
    #[arg(long, default_value_t = 4)]
    pub conns: usize,
    /// Send bare Stores: no client session, no retry of a write whose outcome is
    /// unknown (by default each client has a session and retries such writes).
    #[arg(long)]
    pub no_sessions: bool,
    /// Percent of requests that are Gets of a key from the key space (0: writes only;
    /// 100: reads only). Reads are linearizable unless --serializable.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub reads: u8,
    /// Serve the reads from the node asked, without confirming it is up to date.
    #[arg(long)]
    pub serializable: bool,
    /// Open loop: issue this many requests per second in all (spread over the
    /// clients), latency counted from when each was due; 0: as fast as answered.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Also draw the run into this SVG file: throughput over time, and the latency
    /// histogram with its p50 and p99.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub conn: Conn,
}

struct Shared {
    start: Instant,
    /// Ctrl-C or SIGTERM: no new requests; those in flight finish and the summary is
    /// printed as at the end.
    stopped: std::sync::atomic::AtomicBool,
    issued: AtomicU64,
    next_key: AtomicU64,
    ok: AtomicU64,
    /// Successful reads (counted in `ok` too).
    reads_ok: AtomicU64,
    failed: AtomicU64,
    /// Writes whose outcome stayed unknown (counted in `failed` too).
    unknown: AtomicU64,
    /// Microseconds since start of the last success (0: none yet), and the longest gap
    /// between two successes, counting from the start and to the end.
    last_ok_us: AtomicU64,
    max_gap_us: AtomicU64,
    /// When (microseconds since start) the longest gap ended.
    max_gap_end_us: AtomicU64,
}

impl Shared {
    fn success(&self) {
        let now = self.start.elapsed().as_micros() as u64;
        let prev = self.last_ok_us.swap(now, Ordering::AcqRel);
        if prev > 0 {
            let gap = now.saturating_sub(prev);
            if self.max_gap_us.fetch_max(gap, Ordering::AcqRel) < gap {
                self.max_gap_end_us.store(now, Ordering::Release);
            }
        }
        self.ok.fetch_add(1, Ordering::Relaxed);
    }
}

async fn channels(conn: &Conn, n: usize) -> Vec<Channel> {
    let mut out = Vec::new();
    for ep in &conn.endpoints {
        for _ in 0..n.max(1) {
            match conn.channel(ep, Duration::from_millis(500)) {
                Ok(ch) => out.push(ch),
                Err(e) => eprintln!("bench: {e}"),
            }
        }
    }
    out
}

/// One bench client: a session that retries writes of unknown outcome, or (with
/// `--no-sessions`) bare Stores that move to the next endpoint when one fails.
enum Writer {
    Session(Session),
    Bare { endpoints: Vec<(String, KeyValueClient<Channel>)>, at: usize, timeout: Duration },
}

impl Writer {
    /// None if no session could be opened (within the retry budget, three timeouts).
    async fn new(
        endpoints: Vec<(String, KeyValueClient<Channel>)>,
        sessions: bool,
        timeout: Duration,
    ) -> Option<Writer> {
        if !sessions {
            return Some(Writer::Bare { endpoints, at: 0, timeout });
        }
        let options = Options { timeout, budget: timeout * 3, ttl: None };
        match Session::open(endpoints, options).await {
            Ok(s) => Some(Writer::Session(s)),
            Err(e) => {
                eprintln!("bench: cannot open a client session: {e}");
                None
            }
        }
    }

    /// Err(true) when the write's outcome is unknown.
    async fn store(&mut self, key: &str, value: &str) -> Result<(), bool> {
        match self {
            Writer::Session(s) => match s.store(key, value).await {
                Ok(_) => Ok(()),
                Err(ClientError::OutcomeUnknown(_)) => Err(true),
                Err(_) => Err(false),
            },
            Writer::Bare { endpoints, at, timeout } => {
                let mut req = tonic::Request::new(pb::StoreRequest { key: key.to_string(), value: value.to_string() });
                req.set_timeout(*timeout);
                match endpoints[*at].1.clone().store(req).await {
                    Ok(_) => Ok(()),
                    Err(s) => {
                        *at = (*at + 1) % endpoints.len();
                        Err(!raftkv::client::never_applied(&s))
                    }
                }
            }
        }
    }
}

/// One bench client's reads: Gets on its endpoints, the leader's first, moving to the
/// next endpoint when one fails.
struct Reader {
    endpoints: Vec<KeyValueClient<Channel>>,
    at: usize,
    consistency: pb::Consistency,
    timeout: Duration,
}

impl Reader {
    async fn get(&mut self, key: &str) -> Result<(), tonic::Status> {
        let mut req = tonic::Request::new(pb::GetRequest {
            key: key.to_string(),
            consistency: self.consistency as i32,
            revision: 0,
        });
        req.set_timeout(self.timeout);
        let r = self.endpoints[self.at].get(req).await.map(|_| ());
        if r.is_err() {
            self.at = (self.at + 1) % self.endpoints.len();
        }
        r
    }
}

/// A UTC time of day, HH:MM:SS.mmm, to match the nodes' log lines.
fn wall_clock(t: std::time::SystemTime) -> String {
    let ms = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64) % 86_400_000;
    format!("{:02}:{:02}:{:02}.{:03}Z", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000)
}

/// The endpoint index of the leader, if an endpoint reports one.
async fn leader_endpoint(conn: &Conn) -> usize {
    for ep in &conn.endpoints {
        let Ok(ch) = conn.channel(ep, Duration::from_millis(500)) else {
            continue;
        };
        if let Ok(st) = KeyValueClient::new(ch).status(pb::StatusRequest {}).await {
            let st = st.into_inner();
            if st.role == pb::Role::Leader as i32 {
                return conn.endpoints.iter().position(|e| e == ep).unwrap_or(0);
            }
        }
    }
    0
}

/// Records what succeeded and failed since the last sample, as one `Second` ending now.
fn sample(shared: &Shared, seconds: &std::sync::Mutex<Vec<Second>>) -> Second {
    let mut seconds = seconds.lock().unwrap_or_else(|e| e.into_inner());
    let (ok, failed) = (shared.ok.load(Ordering::Relaxed), shared.failed.load(Ordering::Relaxed));
    let (ok_before, failed_before) = seconds.iter().fold((0, 0), |(o, f), s| (o + s.ok, f + s.failed));
    let s = Second { t: shared.start.elapsed().as_secs_f64(), ok: ok - ok_before, failed: failed - failed_before };
    seconds.push(s);
    s
}

pub async fn run(args: BenchArgs) -> CmdResult {
    if args.clients == 0 || args.key_space == 0 {
        return Err(CliError::Usage("--clients and --key-space must be positive".into()));
    }
    let chans = channels(&args.conn, args.conns).await;
    if chans.is_empty() {
        return Err(CliError::Unreachable("no usable endpoint".into()));
    }
    let per_ep = args.conns.max(1);
    let leader = leader_endpoint(&args.conn).await;
    let total = if args.duration_s.is_some() { u64::MAX } else { args.requests };
    // Open loop: each client's requests fall due at its share of --rate.
    let interval = (args.rate > 0).then(|| Duration::from_secs_f64(args.clients as f64 / args.rate as f64));
    let consistency = if args.serializable { pb::Consistency::Serializable } else { pb::Consistency::Linearizable };
    let until = args.duration_s.map(|s| Instant::now() + Duration::from_secs(s));
    let mix = match args.reads {
        0 => "writes".to_string(),
        100 => format!("{} reads", if args.serializable { "serializable" } else { "linearizable" }),
        r => format!(
            "{}% writes, {r}% {} reads",
            100 - r,
            if args.serializable { "serializable" } else { "linearizable" }
        ),
    };
    let pace = if args.rate > 0 { format!(", open loop at {}/s", args.rate) } else { String::new() };
    println!(
        "raftkv bench: {} clients, {mix}{pace}, {} B values, {} against {} (leader endpoint {})",
        args.clients,
        args.value_size,
        args.duration_s.map_or(format!("{} requests", args.requests), |s| format!("{s} s")),
        args.conn.endpoints.join(","),
        args.conn.endpoints[leader]
    );
    let started_at = std::time::SystemTime::now();
    let shared = Arc::new(Shared {
        start: Instant::now(),
        stopped: Default::default(),
        issued: AtomicU64::new(0),
        next_key: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        reads_ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        unknown: AtomicU64::new(0),
        last_ok_us: AtomicU64::new(0),
        max_gap_us: AtomicU64::new(0),
        max_gap_end_us: AtomicU64::new(0),
    });
    let stop = shared.clone();
    let on_signal = tokio::spawn(async move {
        super::serve::terminated().await;
        eprintln!("\nstopping early: finishing the requests in flight");
        stop.stopped.store(true, Ordering::Relaxed);
    });
    let value = "x".repeat(args.value_size);
    let timeout = args.conn.timeout();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let shared = shared.clone();
        let chans = chans.clone();
        let value = value.clone();
        let key_space = args.key_space;
        let sequential = args.sequential_keys;
        let names = args.conn.endpoints.clone();
        let clients = args.clients;
        let sessions = !args.no_sessions && args.reads < 100;
        let reads = args.reads as u64;
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            // This client's connection to each endpoint, the leader's first.
            let n = (chans.len() / per_ep).max(1);
            let endpoints: Vec<_> = (0..n)
                .map(|i| (leader + i) % n)
                .map(|e| {
                    (names[e].clone(), KeyValueClient::new(chans[(e * per_ep + c % per_ep) % chans.len()].clone()))
                })
                .collect();
            let mut reader =
                Reader { endpoints: endpoints.iter().map(|(_, c)| c.clone()).collect(), at: 0, consistency, timeout };
            let Some(mut writer) = Writer::new(endpoints, sessions, timeout).await else {
                return hist;
            };
            let mut seq = c as u64;
            // Open loop: clients start spread over one interval.
            let mut due = interval.map(|i| Instant::now() + i.mul_f64(c as f64 / clients as f64));
            loop {
                if shared.issued.fetch_add(1, Ordering::Relaxed) >= total
                    || until.is_some_and(|u| Instant::now() >= u)
                    || shared.stopped.load(Ordering::Relaxed)
                {
                    break;
                }
                if let (Some(at), Some(i)) = (due.as_mut(), interval) {
                    tokio::time::sleep_until((*at).into()).await;
                    *at += i;
                }
                seq = seq.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let read = reads > 0 && (seq >> 33) % 100 < reads;
                // With --sequential-keys, reads go to keys already written.
                let k = match (sequential, read) {
                    (true, false) => shared.next_key.fetch_add(1, Ordering::Relaxed),
                    (true, true) => seq % shared.next_key.load(Ordering::Relaxed).max(1),
                    (false, _) => seq % key_space,
                };
                // Latency counts from when the request was due, not from when it went.
                let t = due.map_or_else(Instant::now, |at| at - interval.unwrap_or_default());
                let outcome = if read {
                    reader.get(&format!("key{k:08}")).await.map_err(|_| false)
                } else {
                    writer.store(&format!("key{k:08}"), &value).await
                };
                match outcome {
                    Ok(()) => {
                        let _ = hist.record(t.elapsed().as_micros() as u64);
                        if read {
                            shared.ok.fetch_add(1, Ordering::Relaxed);
                            shared.reads_ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            shared.success();
                        }
                    }
                    Err(unknown) => {
                        shared.failed.fetch_add(1, Ordering::Relaxed);
                        if unknown {
                            shared.unknown.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            hist
        }));
    }
    // Each second: a progress line (redrawn in place on a terminal), and a sample for
    // --svg.
    let seconds = Arc::new(std::sync::Mutex::new(Vec::<Second>::new()));
    let live = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let progress = {
        let (shared, seconds) = (shared.clone(), seconds.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let s = sample(&shared, &seconds);
                let (ok, failed) = (shared.ok.load(Ordering::Relaxed), shared.failed.load(Ordering::Relaxed));
                let line = format!("  {:>4.0} s  ok {ok:>9}  failed {failed:>6}  {:>8} /s", s.t, s.ok);
                if live {
                    use std::io::Write;
                    print!("\r{line}");
                    let _ = std::io::stdout().flush();
                } else {
                    println!("{line}");
                }
            }
        })
    };
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    for t in tasks {
        hist.add(t.await.map_err(|e| CliError::Internal(e.into()))?).map_err(|e| CliError::Internal(e.into()))?;
    }
    progress.abort();
    let _ = progress.await;
    on_signal.abort();
    if live {
        println!();
    }
    sample(&shared, &seconds);
    // The stretch from the last success (or the start) to the end counts as a gap too.
    let end_us = shared.start.elapsed().as_micros() as u64;
    let trailing = end_us.saturating_sub(shared.last_ok_us.load(Ordering::Acquire));
    if shared.max_gap_us.fetch_max(trailing, Ordering::AcqRel) < trailing {
        shared.max_gap_end_us.store(end_us, Ordering::Release);
    }
    let secs = shared.start.elapsed().as_secs_f64();
    let ok = shared.ok.load(Ordering::Relaxed);
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "done: {ok} ok, {} failed ({} of unknown outcome) in {secs:.2} s",
        shared.failed.load(Ordering::Relaxed),
        shared.unknown.load(Ordering::Relaxed)
    );
    let reads_ok = shared.reads_ok.load(Ordering::Relaxed);
    if reads_ok == 0 {
        println!("throughput: {:.0} writes/s", ok as f64 / secs);
    } else {
        println!(
            "throughput: {:.0} requests/s ({:.0} writes/s, {:.0} reads/s)",
            ok as f64 / secs,
            (ok - reads_ok) as f64 / secs,
            reads_ok as f64 / secs
        );
    }
    println!(
        "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        hist.max() as f64 / 1000.0
    );
    if ok > reads_ok {
        println!(
            "longest gap between successful writes: {:.1} ms (ending {:.3} s after the start, at {})",
            shared.max_gap_us.load(Ordering::Relaxed) as f64 / 1000.0,
            shared.max_gap_end_us.load(Ordering::Relaxed) as f64 / 1e6,
            wall_clock(started_at + Duration::from_micros(shared.max_gap_end_us.load(Ordering::Relaxed))),
        );
    }
    if let Some(path) = &args.svg {
        let title = format!(
            "raftkv bench: {} clients, {mix}{pace}, {} B values — {ok} ok in {secs:.1} s, p99 {:.2} ms",
            args.clients,
            args.value_size,
            ms(0.99)
        );
        let seconds = seconds.lock().unwrap_or_else(|e| e.into_inner());
        std::fs::write(path, super::bench_svg::render(&title, &seconds, &hist))
            .map_err(|e| CliError::io(format!("cannot write {}", path.display()), e))?;
        println!("chart: {}", path.display());
    }
    if ok == 0 {
        return Err(CliError::Failed("no request succeeded".into()));
    }
    Ok(ExitCode::SUCCESS)
}
