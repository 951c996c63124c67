//! The one driver: writes, reads, timers, peer close, cancel safety and
//! full-buffer writes that must not stop reads.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudproxy_proto::Machine;
use cloudproxy_transport::driver::{DatagramDriver, Driver, Next};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

/// Queues whatever the test asks to send, reports each read as an event
/// (an empty one for each timer firing at the deadlines it is given).
#[derive(Default)]
struct Probe {
    out: VecDeque<Bytes>,
    reads: VecDeque<Vec<u8>>,
    deadlines: VecDeque<Instant>,
    fired: usize,
}

#[derive(Debug, PartialEq)]
enum Ev {
    Read(Vec<u8>),
}

impl Machine for Probe {
    type Event = Ev;
    fn handle_input(&mut self, _now: Instant, data: &[u8]) {
        self.reads.push_back(data.to_vec());
    }
    fn poll_transmit(&mut self) -> Option<Bytes> {
        self.out.pop_front()
    }
    fn poll_event(&mut self) -> Option<Ev> {
        self.reads.pop_front().map(Ev::Read)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.front().copied()
    }
    fn handle_timeout(&mut self, now: Instant) {
        while self.deadlines.front().is_some_and(|d| *d <= now) {
            self.deadlines.pop_front();
            self.fired += 1;
            self.reads.push_back(Vec::new());
        }
    }
}

#[tokio::test]
async fn writes_transmits_and_returns_reads_as_events() {
    let (ours, mut theirs) = tokio::io::duplex(1024);
    let mut driver = Driver::new(Probe::default(), ours);
    driver
        .machine_mut()
        .out
        .push_back(Bytes::from_static(b"abc"));
    driver
        .machine_mut()
        .out
        .push_back(Bytes::from_static(b"def"));
    theirs.write_all(b"xyz").await.unwrap();
    assert_eq!(driver.next_event().await.event(), Ev::Read(b"xyz".to_vec()));
    let mut got = [0u8; 6];
    theirs.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"abcdef");
}

#[tokio::test(start_paused = true)]
async fn runs_the_machines_timers() {
    let (ours, _theirs) = tokio::io::duplex(64);
    let mut probe = Probe::default();
    let now = Instant::now();
    probe.deadlines.push_back(now + Duration::from_millis(10));
    probe.deadlines.push_back(now + Duration::from_millis(30));
    let mut driver = Driver::new(probe, ours);
    assert_eq!(driver.next_event().await.event(), Ev::Read(Vec::new()));
    assert_eq!(driver.next_event().await.event(), Ev::Read(Vec::new()));
    assert_eq!(driver.machine().fired, 2);
}

#[tokio::test]
async fn peer_close_is_reported_after_queued_writes() {
    let (ours, mut theirs) = tokio::io::duplex(64);
    let mut driver = Driver::new(Probe::default(), ours);
    driver
        .machine_mut()
        .out
        .push_back(Bytes::from_static(b"bye"));
    theirs.shutdown().await.unwrap();
    assert!(matches!(driver.next_event().await, Next::PeerClosed));
    assert!(matches!(driver.next_event().await, Next::PeerClosed));
    let mut got = [0u8; 3];
    theirs.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"bye");
}

/// A write larger than the pipe cannot finish until the peer reads, and the
/// peer reads only after its own bytes were read by us: a driver that wrote
/// before reading would deadlock here.
#[tokio::test]
async fn a_blocked_write_does_not_stop_reads() {
    let (ours, theirs) = tokio::io::duplex(64);
    let mut driver = Driver::new(Probe::default(), ours);
    let big = Bytes::from(vec![7u8; 4096]);
    driver.machine_mut().out.push_back(big.clone());
    let peer = tokio::spawn(async move {
        let mut theirs = theirs;
        theirs.write_all(b"first").await.unwrap();
        let mut got = vec![0u8; 4096];
        theirs.read_exact(&mut got).await.unwrap();
        got
    });
    let mut read = Vec::new();
    while read.len() < 5 {
        match driver.next_event().await {
            Next::Event(Ev::Read(bytes)) => read.extend(bytes),
            other => panic!("expected a read, found {other:?}"),
        }
    }
    assert_eq!(read, b"first");
    driver.flush().await.unwrap();
    assert_eq!(peer.await.unwrap(), big);
}

/// Dropping `next_event` mid-write loses nothing: the rest of the transmit
/// is written by the next call.
#[tokio::test]
async fn next_event_is_cancel_safe_mid_write() {
    let (ours, mut theirs) = tokio::io::duplex(16);
    let mut driver = Driver::new(Probe::default(), ours);
    let data: Vec<u8> = (0..200u8).collect();
    driver
        .machine_mut()
        .out
        .push_back(Bytes::from(data.clone()));
    for _ in 0..3 {
        let waited = tokio::time::timeout(Duration::ZERO, driver.next_event()).await;
        assert!(waited.is_err(), "nothing to read yet");
    }
    assert!(driver.has_pending_write());
    let reader = tokio::spawn(async move {
        let mut got = vec![0u8; 200];
        theirs.read_exact(&mut got).await.unwrap();
        got
    });
    driver.flush().await.unwrap();
    assert_eq!(reader.await.unwrap(), data);
}

/// Paused reads leave the peer's bytes unread while writes and timers go
/// on; the queue shows how far the peer is behind.
#[tokio::test(start_paused = true)]
async fn paused_reads_still_write_and_run_timers() {
    let (ours, mut theirs) = tokio::io::duplex(1024);
    let mut probe = Probe::default();
    probe
        .deadlines
        .push_back(tokio::time::Instant::now().into_std() + Duration::from_secs(1));
    probe.out.push_back(Bytes::from_static(b"abc"));
    probe.out.push_back(Bytes::from_static(b"de"));
    let mut driver = Driver::new(probe, ours);
    driver.pause_reads(true);
    theirs.write_all(b"unread").await.unwrap();
    assert_eq!(driver.next_event().await.event(), Ev::Read(Vec::new()));
    assert_eq!(driver.queued_bytes(), 0);
    let mut got = [0u8; 5];
    theirs.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"abcde");
    driver.pause_reads(false);
    assert_eq!(
        driver.next_event().await.event(),
        Ev::Read(b"unread".to_vec())
    );
}

/// Transmits the stream does not take yet are counted until written.
#[tokio::test]
async fn queued_bytes_count_what_the_peer_has_not_taken() {
    let (ours, mut theirs) = tokio::io::duplex(8);
    let mut driver = Driver::new(Probe::default(), ours);
    driver
        .machine_mut()
        .out
        .push_back(Bytes::from(vec![1u8; 20]));
    driver
        .machine_mut()
        .out
        .push_back(Bytes::from(vec![2u8; 10]));
    let waited = tokio::time::timeout(Duration::ZERO, driver.next_event()).await;
    assert!(waited.is_err(), "nothing to read yet");
    assert_eq!(driver.queued_bytes(), 30 - 8);
    let reader = tokio::spawn(async move {
        let mut got = vec![0u8; 30];
        theirs.read_exact(&mut got).await.unwrap();
        got
    });
    driver.flush().await.unwrap();
    assert_eq!(driver.queued_bytes(), 0);
    let mut want = vec![1u8; 20];
    want.extend([2u8; 10]);
    assert_eq!(reader.await.unwrap(), want);
}

/// Two UDP sockets on 127.0.0.1, connected to each other.
async fn udp_pair() -> (UdpSocket, UdpSocket) {
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    a.connect(b.local_addr().unwrap()).await.unwrap();
    b.connect(a.local_addr().unwrap()).await.unwrap();
    (a, b)
}

/// Over datagrams, each transmit is one datagram and each datagram one
/// input, never merged.
#[tokio::test]
async fn datagram_driver_keeps_datagram_boundaries() {
    let (ours, theirs) = udp_pair().await;
    let mut driver = DatagramDriver::new(Probe::default(), ours);
    driver
        .machine_mut()
        .out
        .push_back(Bytes::from_static(b"abc"));
    driver
        .machine_mut()
        .out
        .push_back(Bytes::from_static(b"de"));
    driver.flush().await.unwrap();
    let mut buf = [0u8; 16];
    let n = theirs.recv(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"abc");
    let n = theirs.recv(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"de");
    theirs.send(b"xyz").await.unwrap();
    theirs.send(b"w").await.unwrap();
    assert_eq!(driver.next_event().await.event(), Ev::Read(b"xyz".to_vec()));
    assert_eq!(driver.next_event().await.event(), Ev::Read(b"w".to_vec()));
}

#[tokio::test(start_paused = true)]
async fn datagram_driver_runs_the_machines_timers() {
    let (ours, _theirs) = udp_pair().await;
    let mut probe = Probe::default();
    let now = tokio::time::Instant::now().into_std();
    probe.deadlines.push_back(now + Duration::from_secs(10));
    let mut driver = DatagramDriver::new(probe, ours);
    assert_eq!(driver.next_event().await.event(), Ev::Read(Vec::new()));
    assert_eq!(driver.machine().fired, 1);
}

trait EventOf<E> {
    fn event(self) -> E;
}

impl<E: std::fmt::Debug> EventOf<E> for Next<E> {
    fn event(self) -> E {
        match self {
            Self::Event(e) => e,
            other => panic!("expected an event, found {other:?}"),
        }
    }
}

/// Answers each input byte with 1 KiB, like a server answering pings; holds
/// input undecoded while `bound` bytes of answers wait to be taken.
struct Answerer {
    held: VecDeque<u8>,
    out: VecDeque<Bytes>,
    unsent: usize,
    bound: usize,
    answered: usize,
    /// The largest `unsent` seen.
    peak: usize,
}

impl Answerer {
    fn answer(&mut self) {
        while self.unsent < self.bound {
            let Some(b) = self.held.pop_front() else {
                return;
            };
            self.out.push_back(Bytes::from(vec![b; 1024]));
            self.unsent += 1024;
            self.answered += 1;
            self.peak = self.peak.max(self.unsent);
        }
    }
}

impl Machine for Answerer {
    type Event = ();
    fn handle_input(&mut self, _now: Instant, data: &[u8]) {
        self.held.extend(data);
        self.answer();
    }
    fn poll_transmit(&mut self) -> Option<Bytes> {
        let b = self.out.pop_front()?;
        self.unsent -= b.len();
        Some(b)
    }
    fn poll_event(&mut self) -> Option<()> {
        None
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
    fn handle_timeout(&mut self, _now: Instant) {}
    fn wants_input(&self) -> bool {
        self.unsent < self.bound
    }
}

/// A peer that sends without reading gets no further than the driver's
/// take-ahead plus the machine's bound: the driver stops reading when the
/// machine says so, and resumes the held input once the peer reads.
#[tokio::test]
async fn a_machine_that_wants_no_input_is_not_read_until_its_answers_are_taken() {
    let (ours, theirs) = tokio::io::duplex(4096);
    let answerer = Answerer {
        held: VecDeque::new(),
        out: VecDeque::new(),
        unsent: 0,
        bound: 8 * 1024,
        answered: 0,
        peak: 0,
    };
    let mut driver = Driver::new(answerer, ours);
    let (mut their_reads, mut their_writes) = tokio::io::split(theirs);
    // 200 requests, 200 KiB of answers; the peer reads none of them yet.
    their_writes.write_all(&[7u8; 200]).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(200), driver.next_event()).await;
    assert!(waited.is_err(), "no event, and no end");
    let machine = driver.machine();
    assert!(!machine.held.is_empty(), "input was held back");
    assert!(machine.peak <= 8 * 1024, "{}", machine.peak);
    assert!(
        driver.queued_bytes() <= 64 * 1024 + 1024,
        "{}",
        driver.queued_bytes()
    );
    // The peer reads: every request is answered.
    let reader = tokio::spawn(async move {
        let mut got = vec![0u8; 200 * 1024];
        their_reads.read_exact(&mut got).await.unwrap();
        got
    });
    tokio::pin!(reader);
    let got = loop {
        tokio::select! {
            _ = driver.next_event() => {}
            got = &mut reader => break got.unwrap(),
        }
    };
    assert!(got.iter().all(|b| *b == 7));
    assert_eq!(driver.machine().answered, 200);
}
