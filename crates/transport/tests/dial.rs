//! The happy-eyeballs race: pacing, failure reporting, deadlines.
//!
//! The pacing tests run on tokio's paused clock, so they check exact
//! virtual times without sleeping; the socket test uses real loopback sockets.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudproxy_transport::dial::{DialPolicy, Outcome, race};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

fn addrs(n: u16) -> Vec<SocketAddr> {
    (1..=n)
        .map(|i| SocketAddr::from(([192, 0, 2, 1], 9000 + i)))
        .collect()
}

fn policy() -> DialPolicy {
    DialPolicy {
        stagger: Duration::from_millis(250),
        attempt_timeout: Duration::from_secs(3),
        overall_timeout: Duration::from_secs(10),
    }
}

/// A black-holed first address does not hold up the second: the second
/// starts one stagger later and wins.
#[tokio::test(start_paused = true)]
async fn hanging_first_candidate_is_overtaken_after_one_stagger() {
    let candidates = addrs(2);
    let first = candidates[0];
    let started = Instant::now();
    let (winner, started_at) = race(&candidates, &policy(), move |addr| async move {
        if addr == first {
            std::future::pending::<()>().await;
        }
        Ok::<_, String>(Instant::now())
    })
    .await
    .unwrap();
    assert_eq!(winner, candidates[1]);
    assert_eq!(started_at - started, Duration::from_millis(250));
}

/// A refused attempt starts the next one at once, not after the stagger.
#[tokio::test(start_paused = true)]
async fn a_failure_starts_the_next_attempt_immediately() {
    let candidates = addrs(3);
    let log = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let log2 = log.clone();
    let (winner, ()) = race(&candidates, &policy(), move |addr| {
        log2.lock().unwrap().push((addr, Instant::now() - started));
        async move {
            if addr.port() == 9003 {
                Ok(())
            } else {
                Err("connection refused")
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(winner, candidates[2]);
    let log = log.lock().unwrap();
    assert_eq!(log.len(), 3);
    assert!(log.iter().all(|(_, at)| *at == Duration::ZERO), "{log:?}");
}

/// One candidate runs in place (no race) with the same outcomes a race
/// reports: its value, its error, or a timeout at the attempt limit — or
/// "abandoned" when the overall deadline comes first.
#[tokio::test(start_paused = true)]
async fn a_single_candidate_reports_like_a_race() {
    let only = addrs(1);
    let started = Instant::now();
    let (winner, value) = race(&only, &policy(), |_| async { Ok::<_, String>(7) })
        .await
        .unwrap();
    assert_eq!((winner, value), (only[0], 7));

    let refused = race(&only, &policy(), |_| async {
        Err::<(), _>("connection refused")
    })
    .await
    .unwrap_err();
    assert_eq!(
        refused.attempts,
        vec![(only[0], Outcome::Failed("connection refused"))]
    );

    let hang = |_| std::future::pending::<Result<(), String>>();
    let timed_out = race(&only, &policy(), hang).await.unwrap_err();
    assert_eq!(
        timed_out.attempts,
        vec![(only[0], Outcome::TimedOut(Duration::from_secs(3)))]
    );
    assert_eq!(Instant::now() - started, Duration::from_secs(3));

    let short = DialPolicy {
        overall_timeout: Duration::from_secs(1),
        ..policy()
    };
    let abandoned = race(&only, &short, hang).await.unwrap_err();
    assert_eq!(abandoned.attempts, vec![(only[0], Outcome::Abandoned)]);
    assert_eq!(abandoned.elapsed, Duration::from_secs(1));
}

/// When nothing answers, the error lists every candidate and what happened,
/// and the dial ends at the overall deadline.
#[tokio::test(start_paused = true)]
async fn all_dead_lists_every_attempt() {
    let candidates = addrs(3);
    let policy = DialPolicy {
        overall_timeout: Duration::from_millis(3100),
        ..policy()
    };
    let started = Instant::now();
    let err = race(&candidates, &policy, |addr| async move {
        if addr.port() == 9002 {
            Err("connection refused".to_string())
        } else {
            std::future::pending().await
        }
    })
    .await
    .map(|(_, ()): (_, ())| ())
    .unwrap_err();
    // #1 times out at 3 s; #2 is refused at 0.25 s, which starts #3 at once;
    // #3 is still pending at the 3.1 s deadline.
    assert_eq!(started.elapsed(), Duration::from_millis(3100));
    assert_eq!(
        err.attempts,
        vec![
            (candidates[0], Outcome::TimedOut(Duration::from_secs(3))),
            (candidates[1], Outcome::Failed("connection refused".into())),
            (candidates[2], Outcome::Abandoned),
        ]
    );
    let shown = err.to_string();
    assert!(
        shown.contains("192.0.2.1:9002: failed: connection refused"),
        "{shown}"
    );
    assert!(
        shown.contains("192.0.2.1:9001: no answer within 3s"),
        "{shown}"
    );
}

#[tokio::test(start_paused = true)]
async fn candidates_after_the_deadline_are_reported_untried() {
    let candidates = addrs(4);
    let policy = DialPolicy {
        overall_timeout: Duration::from_millis(600),
        ..policy()
    };
    let err = race(&candidates, &policy, |_| {
        std::future::pending::<Result<(), String>>()
    })
    .await
    .unwrap_err();
    let outcomes: Vec<_> = err.attempts.iter().map(|(_, o)| o.clone()).collect();
    assert_eq!(
        outcomes,
        [
            Outcome::Abandoned,
            Outcome::Abandoned,
            Outcome::Abandoned,
            Outcome::NotTried
        ]
    );
}

#[tokio::test]
async fn no_candidates_is_an_error_not_a_hang() {
    let err = race(&[], &policy(), |_| async { Ok::<(), String>(()) })
        .await
        .unwrap_err();
    assert!(err.attempts.is_empty());
    assert_eq!(err.to_string(), "no address to try");
}

/// Real sockets: the first address has nothing listening, the second has a
/// listener; the dial lands on the second well within one attempt timeout.
#[tokio::test]
async fn dead_first_address_real_sockets() {
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }; // dropped: nothing listens there now
    let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let live_addr = live.local_addr().unwrap();
    let (winner, _stream) = race(&[dead, live_addr], &policy(), TcpStream::connect)
        .await
        .unwrap();
    assert_eq!(winner, live_addr);
}

mod resolve {
    use std::net::SocketAddr;
    use std::time::Duration;

    use cloudproxy_params::ProxyServer;
    use cloudproxy_transport::resolve::candidates;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[tokio::test]
    async fn ip_list_with_default_ports_is_port_major() {
        let server = ProxyServer::ip_list(
            vec!["192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap()],
            0,
        )
        .unwrap();
        let got = candidates(&server, Duration::from_secs(1)).await.unwrap();
        assert_eq!(
            got,
            addrs(&[
                "192.0.2.1:1080",
                "192.0.2.2:1080",
                "192.0.2.1:8000",
                "192.0.2.2:8000",
                "192.0.2.1:25000",
                "192.0.2.2:25000",
                "192.0.2.1:9700",
                "192.0.2.2:9700",
            ])
        );
    }

    #[tokio::test]
    async fn explicit_port_is_the_only_port() {
        let server = ProxyServer::ip_list(vec!["::1".parse().unwrap()], 4321).unwrap();
        let got = candidates(&server, Duration::from_secs(1)).await.unwrap();
        assert_eq!(got, addrs(&["[::1]:4321"]));
    }

    /// `localhost` comes from /etc/hosts: no query leaves the machine.
    #[tokio::test]
    async fn domain_is_resolved_through_the_system_resolver() {
        let server = ProxyServer::domain("localhost", 9700).unwrap();
        let got = candidates(&server, Duration::from_secs(5)).await.unwrap();
        assert!(!got.is_empty());
        assert!(
            got.iter().all(|a| a.ip().is_loopback() && a.port() == 9700),
            "{got:?}"
        );
    }
}
