//! A node under hostile input, over a real process: what anyone who can reach
//! its port can make it do must not fill its log, keep peers out, or make it
//! allocate what a frame header claims.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use cloister_ractor::testing::DEFAULT_TIMEOUT;
mod common;
use common::{cluster, ok, serial};

/// How many junk connections the test opens (6,000 gave an operator 6,009
/// log lines; on this tree, before the fix, 6,000 gave 9,004).
const JUNK: usize = 1_000;

/// The node's stderr, as the harness kept it.
fn stderr_of(cluster: &cloister_ractor::testing::LocalCluster) -> String {
    let name = cluster.node_name(0);
    let node_name = name.split('@').next().unwrap();
    std::fs::read_to_string(cluster.log_dir().join(format!("{node_name}.stderr"))).unwrap()
}

#[test]
fn thousands_of_junk_connections_make_a_few_log_lines() {
    let _serial = serial();
    let mut cluster = cluster(1).consensus(1).build().unwrap();
    cluster.start_node(0).unwrap();
    ok(cluster.wait_ready(&[0], DEFAULT_TIMEOUT));
    let before = stderr_of(&cluster).lines().count();

    // Connections that send garbage and close, and connections that close
    // at once, as fast as this machine opens them.
    let addr = ("127.0.0.1", cluster.port(0));
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..JUNK {
        assert!(Instant::now() < deadline, "only {i} connections in 120 s");
        let Ok(mut stream) = TcpStream::connect(addr) else {
            thread::sleep(Duration::from_millis(5)); // the backlog is full: let it drain
            continue;
        };
        if i % 2 == 0 {
            let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: cloister\r\n\r\n");
        }
    }
    // Every one of them is seen and counted: the count reaches the log.
    ok(cluster.wait_for(0, Duration::from_secs(30), |_| {
        stderr_of(&cluster).contains("closed without authenticating")
    }));
    thread::sleep(Duration::from_secs(2));
    assert!(cluster.is_running(0), "the node exited");

    let log = stderr_of(&cluster);
    // The operator learns where they came from.
    assert!(
        log.contains("from 127.0.0.1 closed without authenticating"),
        "the log does not name the strangers' address:\n{log}"
    );
    let new: Vec<&str> = log.lines().skip(before).collect();
    assert!(
        new.len() <= 20,
        "{} log lines for {JUNK} junk connections; the first ones:\n{}",
        new.len(),
        new.iter().take(10).copied().collect::<Vec<_>>().join("\n")
    );
}

/// Silent connections a flood keeps open to each port it targets: more
/// than the node's cap of connections in their handshake (512), so the
/// node must close the oldest to let anyone in.
const SILENT: usize = 600;

/// The flood's source addresses, `127.0.0.2` to `127.0.0.11`: strangers at
/// other addresses than the nodes (`127.0.0.1`), 60 each, under the cap per
/// address (64), so only the total cap holds them back.
const FLOOD_SOURCES: u8 = 10;

/// A thread that keeps `SILENT` connections open to each target port,
/// saying nothing, and reopens those the node closes; stopped and joined
/// (every connection closed) on drop, also when the test fails.
struct Flood {
    stop: Arc<AtomicBool>,
    open: Arc<AtomicUsize>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Flood {
    fn start(ports: Vec<u16>) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let (stop_, open_) = (Arc::clone(&stop), Arc::clone(&open));
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(flood(ports, stop_, open_));
        });
        Flood {
            stop,
            open,
            thread: Some(thread),
        }
    }

    /// Connections open right now to the first target port.
    fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn flood(ports: Vec<u16>, stop: Arc<AtomicBool>, open: Arc<AtomicUsize>) {
    use tokio::net::{TcpSocket, TcpStream};
    let mut slots: Vec<Vec<Option<TcpStream>>> = ports
        .iter()
        .map(|_| (0..SILENT).map(|_| None).collect())
        .collect();
    // Bounded even if the test never stops it: ten minutes.
    let end = Instant::now() + Duration::from_secs(600);
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        for (port, slots) in ports.iter().zip(slots.iter_mut()) {
            let target = std::net::SocketAddr::from(([127, 0, 0, 1], *port));
            for (k, slot) in slots.iter_mut().enumerate() {
                // A closed connection reads end-of-file or an error.
                let closed = slot.as_ref().is_some_and(|stream| {
                    !matches!(stream.try_read(&mut [0; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
                });
                if closed {
                    *slot = None;
                }
                if slot.is_none() {
                    let source_host = 2 + (k % usize::from(FLOOD_SOURCES)) as u8;
                    let source = std::net::SocketAddr::from(([127, 0, 0, source_host], 0));
                    let Ok(socket) = TcpSocket::new_v4() else {
                        continue;
                    };
                    if socket.bind(source).is_err() {
                        continue;
                    }
                    let connect =
                        tokio::time::timeout(Duration::from_millis(200), socket.connect(target));
                    if let Ok(Ok(stream)) = connect.await {
                        *slot = Some(stream);
                    }
                }
            }
        }
        let first = slots[0].iter().filter(|slot| slot.is_some()).count();
        open.store(first, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A cluster of two with node 1 up alone, and knowing only itself: it
/// never dials node 2, so node 2 gets in only through node 1's port.
fn first_of_two() -> cloister_ractor::testing::LocalCluster {
    let mut cluster = cluster(2).consensus(2).build().unwrap();
    let alone = format!("{}:{}", cluster.node_name(0), cluster.port(0));
    cluster
        .start_node_with(0, &["--consensus", "1", "--sentry", &alone])
        .unwrap();
    ok(cluster.wait_ready(&[0], DEFAULT_TIMEOUT));
    cluster
}

#[test]
fn silent_connections_beyond_the_cap_do_not_keep_a_new_node_out() {
    let _serial = serial();
    let mut cluster = first_of_two();

    // Strangers hold hundreds of silent connections to node 1's port.
    let flood = Flood::start(vec![cluster.port(0)]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while flood.open() < SILENT * 9 / 10 {
        assert!(
            Instant::now() < deadline,
            "the flood holds only {}",
            flood.open()
        );
        thread::sleep(Duration::from_millis(50));
    }

    // The new node joins while they are open: its dial must get past a
    // port full of strangers.
    cluster.start_node(1).unwrap();
    ok(cluster.wait_ready(&[0, 1], DEFAULT_TIMEOUT));
    assert!(
        flood.open() >= SILENT / 2,
        "the flood was no longer holding its connections: {}",
        flood.open()
    );
    assert!(cluster.is_running(0) && cluster.is_running(1));
    drop(flood);

    // The node made room by closing the oldest, and said so in a count, on
    // a line that names the node like every other line of its log.
    let log = stderr_of(&cluster);
    let evicted: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("the oldest when the total cap was reached"))
        .collect();
    assert!(!evicted.is_empty(), "no eviction reported:\n{log}");
    let node = format!("cloister{{node={}}}", cluster.node_name(0));
    assert!(
        evicted.iter().all(|line| line.contains(&node)),
        "the accept loop's lines do not name {node}:\n{}",
        evicted.join("\n")
    );
}

#[test]
fn a_node_on_127_0_0_1_cannot_be_reached_at_another_address() {
    let _serial = serial();
    // 127.0.0.2 is another address of this machine (all of 127.0.0.0/8 is).
    let other = std::net::Ipv4Addr::new(127, 0, 0, 2);
    let local = cluster(1)
        .consensus(1)
        .env("CLOISTER_LISTEN_ADDR", "127.0.0.1")
        .start()
        .unwrap();
    ok(local.wait_ready(&[0], DEFAULT_TIMEOUT));
    let port = local.port(0);
    TcpStream::connect(("127.0.0.1", port)).expect("its own address");
    let refused = TcpStream::connect((other, port)).expect_err("listening on 127.0.0.1 only");
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );
    drop(local);

    // The same node on every interface is reached there: the refusal above
    // is the listen address at work.
    let everywhere = cluster(1)
        .consensus(1)
        .env("CLOISTER_LISTEN_ADDR", "0.0.0.0")
        .env("CLOISTER_COOKIE", "a secret for this test")
        .start()
        .unwrap();
    ok(everywhere.wait_ready(&[0], DEFAULT_TIMEOUT));
    TcpStream::connect((other, everywhere.port(0))).expect("listening on every interface");
}

/// Junk connections of [`random_junk_and_huge_length_prefixes_leave_a_node_serving`].
const RANDOM_JUNK: usize = 400;

/// ractor_cluster's frame-size cap (`DEFAULT_MAX_INBOUND_FRAME_SIZE`, 16
/// MiB): a frame's first 8 bytes are its length, big-endian.
const FRAME_CAP: u64 = 16 * 1024 * 1024;

/// A peak (VmHWM) this far over the one before the junk is a balloon:
/// far below what any one huge prefix would cost if the node allocated it.
const BALLOON_KIB: u64 = 64 * 1024;

/// One junk connection's bytes: random bytes, or a frame header claiming
/// more than the frame cap (up to `u64::MAX`) or just under it, then a
/// little random payload.
fn junk(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut bytes = match rng.u8(0..4) {
        0 => Vec::new(),
        1 => u64::MAX.to_be_bytes().to_vec(),
        2 => rng.u64(FRAME_CAP + 1..).to_be_bytes().to_vec(),
        _ => (FRAME_CAP - rng.u64(0..1024)).to_be_bytes().to_vec(),
    };
    let payload = rng.usize(1..4096);
    bytes.extend((0..payload).map(|_| rng.u8(..)));
    bytes
}

/// The node's peak resident memory so far, in KiB.
fn peak_kib(cluster: &cloister_ractor::testing::LocalCluster, i: usize) -> u64 {
    let pid = cluster.pid(i).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    cloister_examples::bench::status_kib(&status, "VmHWM:").unwrap()
}

#[test]
fn random_junk_and_huge_length_prefixes_leave_a_node_serving() {
    let _serial = serial();
    let seed = std::env::var("CLOISTER_TEST_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("junk seed {seed} (run again with CLOISTER_TEST_SEED={seed})");
    let mut rng = fastrand::Rng::with_seed(seed);

    let mut cluster = first_of_two();
    let peak_before = peak_kib(&cluster, 0);

    // Plain TCP, one connection each, written and closed; a few held open
    // at once, so the node holds several headers at a time.
    let addr = ("127.0.0.1", cluster.port(0));
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut held = std::collections::VecDeque::new();
    for i in 0..RANDOM_JUNK {
        assert!(Instant::now() < deadline, "only {i} connections in 120 s");
        let Ok(mut stream) = TcpStream::connect(addr) else {
            thread::sleep(Duration::from_millis(5)); // the backlog is full: let it drain
            continue;
        };
        let _ = stream.write_all(&junk(&mut rng));
        held.push_back(stream);
        if held.len() > 16 {
            held.pop_front();
        }
    }
    drop(held);
    still_serving_without_a_balloon(&mut cluster, peak_before, &format!("junk of seed {seed}"));
}

/// After hostile connections (`what`): node 1 closed them as strangers, is
/// still running, takes a peer through the same port, and its peak memory
/// stayed within [`BALLOON_KIB`] of `peak_before`.
fn still_serving_without_a_balloon(
    cluster: &mut cloister_ractor::testing::LocalCluster,
    peak_before: u64,
    what: &str,
) {
    ok(cluster.wait_for(0, Duration::from_secs(30), |_| {
        stderr_of(cluster).contains("closed without authenticating")
    }));
    assert!(cluster.is_running(0), "the node exited");

    cluster.start_node(1).unwrap();
    ok(cluster.wait_ready(&[0, 1], DEFAULT_TIMEOUT));
    let peak_after = peak_kib(cluster, 0);
    eprintln!("node 1 peak memory: {peak_before} KiB before {what}, {peak_after} KiB after");
    assert!(
        peak_after < peak_before + BALLOON_KIB,
        "node 1's peak memory went from {peak_before} KiB to {peak_after} KiB ({what})"
    );
}

/// Connections of [`large_frames_before_the_cookie_check_cost_little_memory`]
/// (before the fix, 32 took the node's peak from 19 to 419 MiB).
const LARGE_FRAMES: usize = 32;

/// A stranger streams one frame just under the frame cap over each of
/// [`LARGE_FRAMES`] plain connections, as fast as the node reads: before
/// authenticating, a connection gets at most 64 KiB read, so the node's
/// peak memory stays far below the frames' 512 MiB, and it still takes a
/// peer.
#[test]
fn large_frames_before_the_cookie_check_cost_little_memory() {
    let _serial = serial();
    let mut cluster = first_of_two();
    let peak_before = peak_kib(&cluster, 0);

    let addr = ("127.0.0.1", cluster.port(0));
    let header = (FRAME_CAP - 64).to_be_bytes();
    let mut streams: Vec<(TcpStream, usize)> = Vec::new();
    for _ in 0..LARGE_FRAMES {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(&header).unwrap();
        stream.set_nonblocking(true).unwrap();
        streams.push((stream, 0));
    }
    // Write until every frame is sent, or refused (the node closed the
    // connection at its handshake timeout), or 30 s passed.
    let chunk = vec![0x5a_u8; 64 * 1024];
    let frame = usize::try_from(FRAME_CAP - 64).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && streams.iter().any(|(_, sent)| *sent < frame) {
        let mut progress = false;
        for (stream, sent) in streams.iter_mut().filter(|(_, sent)| *sent < frame) {
            match stream.write(&chunk[..chunk.len().min(frame - *sent)]) {
                Ok(n) => {
                    *sent += n;
                    progress = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => *sent = frame, // closed by the node
            }
        }
        if !progress {
            thread::sleep(Duration::from_millis(2));
        }
    }
    drop(streams);
    let what = format!("{LARGE_FRAMES} connections streaming large frames");
    still_serving_without_a_balloon(&mut cluster, peak_before, &what);
}
