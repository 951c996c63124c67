//! The guide's flow through the SDK's blocking API, as Kotlin, Swift and
//! Python call it, against a proxy node and media edge on loopback: events
//! arrive on the one event thread, errors are typed.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};
use std::thread;
use std::time::Duration;

use cloudproxy_ffi::{
    CallbackError, CloudProxyEngine, CloudProxyError, ConnectionState, EVENT_THREAD_NAME,
    EngineConfig, EngineEventHandler, ErrorCode, ProxyMode, ProxyType, StateReason, WarningKind,
};
use support::Rig;

/// A safety net for every wait: a hang fails the test instead of stalling CI.
const WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, PartialEq)]
enum Seen {
    State(ConnectionState, StateReason),
    ProxyConnected(ProxyType),
    UserJoined(u32),
    UserLeft(u32),
    Message(Option<u32>, Vec<u8>),
    Media(Option<u32>, Vec<u8>),
    Warning(WarningKind),
    /// A callback ran on another thread than the event thread, or while
    /// another callback was running.
    Misplaced(String),
}

#[derive(Debug)]
struct Recorder {
    tx: Mutex<mpsc::Sender<Seen>>,
    busy: AtomicBool,
}

impl Recorder {
    fn new() -> (Box<Self>, mpsc::Receiver<Seen>) {
        let (tx, rx) = mpsc::channel();
        let recorder = Self {
            tx: Mutex::new(tx),
            busy: AtomicBool::new(false),
        };
        (Box::new(recorder), rx)
    }

    fn record(&self, seen: Seen) {
        let tx = self.tx.lock().expect("recorder lock");
        if self.busy.swap(true, Ordering::SeqCst) {
            let _ = tx.send(Seen::Misplaced("two callbacks at once".into()));
        }
        let name = thread::current().name().unwrap_or("<unnamed>").to_owned();
        if name != EVENT_THREAD_NAME {
            let _ = tx.send(Seen::Misplaced(name));
        }
        let _ = tx.send(seen);
        self.busy.store(false, Ordering::SeqCst);
    }
}

impl EngineEventHandler for Recorder {
    fn on_connection_state_changed(
        &self,
        state: ConnectionState,
        reason: StateReason,
    ) -> Result<(), CallbackError> {
        self.record(Seen::State(state, reason));
        Ok(())
    }
    fn on_proxy_connected(
        &self,
        proxy_type: ProxyType,
        _elapsed_ms: u64,
    ) -> Result<(), CallbackError> {
        self.record(Seen::ProxyConnected(proxy_type));
        Ok(())
    }
    fn on_user_joined(&self, uid: u32) -> Result<(), CallbackError> {
        self.record(Seen::UserJoined(uid));
        Ok(())
    }
    fn on_user_left(&self, uid: u32) -> Result<(), CallbackError> {
        self.record(Seen::UserLeft(uid));
        Ok(())
    }
    fn on_message(&self, uid: Option<u32>, payload: Vec<u8>) -> Result<(), CallbackError> {
        self.record(Seen::Message(uid, payload));
        Ok(())
    }
    fn on_media(&self, uid: Option<u32>, payload: Vec<u8>) -> Result<(), CallbackError> {
        self.record(Seen::Media(uid, payload));
        Ok(())
    }
    fn on_warning(&self, kind: WarningKind, _message: String) -> Result<(), CallbackError> {
        self.record(Seen::Warning(kind));
        Ok(())
    }
}

/// Waits for the first delivery matching `want`; fails on a misplaced
/// callback or after [`WAIT`].
fn wait_for(rx: &mpsc::Receiver<Seen>, what: &str, want: impl Fn(&Seen) -> bool) -> Seen {
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(WAIT) {
            Ok(Seen::Misplaced(why)) => panic!("callback off the event thread: {why}"),
            Ok(s) if want(&s) => return s,
            Ok(s) => seen.push(s),
            Err(e) => panic!("no {what} within {WAIT:?} ({e}); seen: {seen:?}"),
        }
    }
}

fn config(rig: &Rig) -> EngineConfig {
    EngineConfig {
        app_id: support::APP_ID.into(),
        credential_hex: support::CREDENTIAL_HEX.into(),
        media_tcp: rig.edge.tcp_addr().to_string(),
        media_udp: rig.edge.udp_addr().to_string(),
        default_proxy_domain: Some("localhost".into()),
    }
}

fn proxied(rig: &Rig) -> (CloudProxyEngine, mpsc::Receiver<Seen>) {
    let (recorder, rx) = Recorder::new();
    let engine = CloudProxyEngine::new(config(rig), recorder).expect("engine");
    // The guide's two lines, verbatim (the second with the rig's address).
    engine
        .set_parameters(r#"{"rtc.enable_proxy":true}"#.into())
        .expect("enable");
    engine
        .set_parameters(rig.proxy_server_param())
        .expect("server");
    (engine, rx)
}

#[test]
fn the_guides_flow_with_events_on_the_event_thread() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let rig = runtime.block_on(Rig::start());
    let (alice, alice_rx) = proxied(&rig);
    let (bob, bob_rx) = proxied(&rig);
    assert_eq!(
        alice.parameter("rtc.enable_proxy".into()).as_deref(),
        Some("true")
    );

    alice.join_channel("guide".into(), 1).expect("alice joins");
    wait_for(&alice_rx, "Connecting", |s| {
        *s == Seen::State(ConnectionState::Connecting, StateReason::Joining)
    });
    wait_for(&alice_rx, "onProxyConnected", |s| {
        *s == Seen::ProxyConnected(ProxyType::Udp)
    });
    wait_for(&alice_rx, "Connected", |s| {
        *s == Seen::State(ConnectionState::Connected, StateReason::Joined)
    });
    bob.join_channel("guide".into(), 2).expect("bob joins");
    wait_for(&alice_rx, "bob joining", |s| *s == Seen::UserJoined(2));

    // The guide: parameters only before joining or after leaving.
    let refused = alice
        .set_parameters(r#"{"rtc.enable_proxy":false}"#.into())
        .expect_err("refused in a channel");
    assert!(
        matches!(refused, CloudProxyError::InvalidState(_)),
        "{refused:?}"
    );
    assert_eq!(refused.code(), ErrorCode::InvalidState);

    for text in ["hello bob", "through the cloud proxy"] {
        alice.send_message(text.as_bytes().to_vec()).expect("send");
    }
    for text in ["hello bob", "through the cloud proxy"] {
        let want = Seen::Message(Some(1), text.as_bytes().to_vec());
        wait_for(&bob_rx, text, |s| *s == want);
    }
    // Media is unreliable: send until one datagram arrives.
    let (media_tx, media_rx) = mpsc::channel();
    let bob_ref = &bob;
    let got = thread::scope(|scope| {
        scope.spawn(move || {
            while media_rx.recv_timeout(Duration::from_millis(20)).is_err() {
                bob_ref
                    .send_media(b"an RTP packet".to_vec())
                    .expect("send_media");
            }
        });
        let got = wait_for(&alice_rx, "media", |s| matches!(s, Seen::Media(..)));
        media_tx.send(()).expect("stop sending");
        got
    });
    assert_eq!(got, Seen::Media(Some(2), b"an RTP packet".to_vec()));

    bob.leave_channel().expect("bob leaves");
    wait_for(&alice_rx, "bob leaving", |s| *s == Seen::UserLeft(2));
    alice.leave_channel().expect("alice leaves");
    alice.destroy();
    // Everything queued was delivered before destroy returned.
    let rest: Vec<Seen> = alice_rx.try_iter().collect();
    assert!(
        rest.contains(&Seen::State(
            ConnectionState::Disconnected,
            StateReason::Left
        )),
        "{rest:?}"
    );
    let after = alice.send_message(b"late".to_vec()).expect_err("destroyed");
    assert_eq!(after.code(), ErrorCode::Destroyed, "{after}");
    drop(bob);
    runtime.block_on(rig.shutdown());
}

#[test]
fn errors_are_typed_codes_with_messages() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let rig = runtime.block_on(Rig::start());
    let create = |config: EngineConfig| {
        let (recorder, _rx) = Recorder::new();
        CloudProxyEngine::new(config, recorder).expect_err("refused")
    };
    let bad_hex = create(EngineConfig {
        credential_hex: "not hex".into(),
        ..config(&rig)
    });
    assert_eq!(bad_hex.code(), ErrorCode::InvalidCredential, "{bad_hex}");
    let short = create(EngineConfig {
        credential_hex: "abcd".into(),
        ..config(&rig)
    });
    assert_eq!(short.code(), ErrorCode::InvalidCredential, "{short}");
    assert!(short.to_string().contains("found 2 bytes"), "{short}");
    let bad_addr = create(EngineConfig {
        media_udp: "localhost".into(),
        ..config(&rig)
    });
    assert_eq!(bad_addr.code(), ErrorCode::InvalidAddress);
    assert!(bad_addr.to_string().contains("media_udp"), "{bad_addr}");
    let bad_app = create(EngineConfig {
        app_id: "has space".into(),
        ..config(&rig)
    });
    assert_eq!(bad_app.code(), ErrorCode::InvalidConfig, "{bad_app}");

    let (recorder, _rx) = Recorder::new();
    let engine = CloudProxyEngine::new(config(&rig), recorder).expect("engine");
    let parse = engine
        .set_parameters(r#"{"rtc.enable_proxy":tru}"#.into())
        .expect_err("bad JSON");
    assert_eq!(parse.code(), ErrorCode::InvalidParameters, "{parse}");
    let outside = engine.send_message(b"x".to_vec()).expect_err("not joined");
    assert_eq!(outside.code(), ErrorCode::InvalidState, "{outside}");
    // Messages name no API of one language (Kotlin's joinChannel, Python's
    // join_channel, Rust's Credential::from_hex).
    assert!(!outside.to_string().contains("join_channel"), "{outside}");
    let nul = engine
        .join_channel("ab\0cd".into(), 1)
        .expect_err("a NUL in the name");
    assert_eq!(nul.code(), ErrorCode::InvalidArgument, "{nul}");
    assert!(nul.to_string().contains("at byte 2"), "{nul}");
    let long = engine
        .join_channel("x".repeat(4999), 1)
        .expect_err("a long name");
    assert!(long.to_string().contains("4999 bytes"), "{long}");
    assert!(long.to_string().len() < 300, "echoed in full: {long}");
    engine.set_cloud_proxy(ProxyMode::ForceTcp).expect("mode");
    engine.destroy();
    engine.destroy();
    runtime.block_on(rig.shutdown());
}

/// Destroys the engine it is given from its first `on_message`, as an app
/// whose handler holds its own engine may.
#[derive(Debug)]
struct DestroyOnMessage {
    recorder: Box<Recorder>,
    engine: std::sync::Arc<Mutex<Option<std::sync::Arc<CloudProxyEngine>>>>,
}

impl EngineEventHandler for DestroyOnMessage {
    fn on_connection_state_changed(
        &self,
        state: ConnectionState,
        reason: StateReason,
    ) -> Result<(), CallbackError> {
        self.recorder.on_connection_state_changed(state, reason)
    }
    fn on_proxy_connected(
        &self,
        proxy_type: ProxyType,
        elapsed_ms: u64,
    ) -> Result<(), CallbackError> {
        self.recorder.on_proxy_connected(proxy_type, elapsed_ms)
    }
    fn on_user_joined(&self, uid: u32) -> Result<(), CallbackError> {
        self.recorder.on_user_joined(uid)
    }
    fn on_user_left(&self, uid: u32) -> Result<(), CallbackError> {
        self.recorder.on_user_left(uid)
    }
    fn on_message(&self, uid: Option<u32>, payload: Vec<u8>) -> Result<(), CallbackError> {
        self.recorder.on_message(uid, payload)?;
        // Taken out first: the engine's last reference must not be dropped
        // while the lock is held.
        let engine = self.engine.lock().expect("engine slot").take();
        if let Some(engine) = engine {
            engine.destroy();
        }
        Ok(())
    }
    fn on_media(&self, uid: Option<u32>, payload: Vec<u8>) -> Result<(), CallbackError> {
        self.recorder.on_media(uid, payload)
    }
    fn on_warning(&self, kind: WarningKind, message: String) -> Result<(), CallbackError> {
        self.recorder.on_warning(kind, message)
    }
}

#[test]
fn a_callback_may_destroy_its_engine() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let rig = runtime.block_on(Rig::start());
    let (alice, alice_rx) = proxied(&rig);
    let (recorder, bob_rx) = Recorder::new();
    let slot = std::sync::Arc::new(Mutex::new(None));
    let handler = DestroyOnMessage {
        recorder,
        engine: slot.clone(),
    };
    let bob = std::sync::Arc::new(
        CloudProxyEngine::new(config(&rig), Box::new(handler)).expect("engine"),
    );
    bob.set_cloud_proxy(ProxyMode::On).expect("proxy on");
    bob.set_parameters(rig.proxy_server_param())
        .expect("server");
    *slot.lock().expect("slot") = Some(bob.clone());

    alice
        .join_channel("callbacks".into(), 1)
        .expect("alice joins");
    bob.join_channel("callbacks".into(), 2).expect("bob joins");
    wait_for(&alice_rx, "bob joining", |s| *s == Seen::UserJoined(2));
    alice.send_message(b"please leave".to_vec()).expect("send");

    // Bob's handler destroyed bob: it left (alice sees it), its own
    // `Left` was still delivered, and bob refuses calls now.
    wait_for(&bob_rx, "bob's Left", |s| {
        *s == Seen::State(ConnectionState::Disconnected, StateReason::Left)
    });
    wait_for(&alice_rx, "bob leaving", |s| *s == Seen::UserLeft(2));
    let refused = bob.send_message(b"x".to_vec()).expect_err("destroyed");
    assert_eq!(refused.code(), ErrorCode::Destroyed, "{refused}");
    alice.destroy();
    runtime.block_on(rig.shutdown());
}

/// Panics in the first callback of each kind, as a Kotlin or Python handler
/// that throws arrives in Rust (UniFFI's callback proxy panics), then
/// records like [`Recorder`].
#[derive(Debug)]
struct PanicsOnce {
    recorder: Box<Recorder>,
    panicked: Mutex<std::collections::HashSet<&'static str>>,
}

impl PanicsOnce {
    fn first_time(&self, callback: &'static str) {
        if self.panicked.lock().expect("panicked").insert(callback) {
            panic!("app bug in {callback}");
        }
    }
}

impl EngineEventHandler for PanicsOnce {
    fn on_connection_state_changed(
        &self,
        state: ConnectionState,
        reason: StateReason,
    ) -> Result<(), CallbackError> {
        self.first_time("state");
        self.recorder.on_connection_state_changed(state, reason)
    }
    fn on_proxy_connected(
        &self,
        proxy_type: ProxyType,
        elapsed_ms: u64,
    ) -> Result<(), CallbackError> {
        self.first_time("proxy");
        self.recorder.on_proxy_connected(proxy_type, elapsed_ms)
    }
    fn on_user_joined(&self, uid: u32) -> Result<(), CallbackError> {
        self.recorder.on_user_joined(uid)
    }
    fn on_user_left(&self, uid: u32) -> Result<(), CallbackError> {
        self.recorder.on_user_left(uid)
    }
    fn on_message(&self, uid: Option<u32>, payload: Vec<u8>) -> Result<(), CallbackError> {
        // A failure returned, as a foreign exception arrives, rather than
        // a panic.
        if self.panicked.lock().expect("panicked").insert("message") {
            return Err(CallbackError::Failed {
                reason: "app bug in message".into(),
            });
        }
        self.recorder.on_message(uid, payload)
    }
    fn on_media(&self, uid: Option<u32>, payload: Vec<u8>) -> Result<(), CallbackError> {
        self.recorder.on_media(uid, payload)
    }
    fn on_warning(&self, kind: WarningKind, message: String) -> Result<(), CallbackError> {
        self.recorder.on_warning(kind, message)
    }
}

#[test]
fn a_failing_callback_does_not_silence_the_engine() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let rig = runtime.block_on(Rig::start());
    let (alice, _alice_rx) = proxied(&rig);
    let (recorder, bob_rx) = Recorder::new();
    let handler = PanicsOnce {
        recorder,
        panicked: Mutex::default(),
    };
    let bob = CloudProxyEngine::new(config(&rig), Box::new(handler)).expect("engine");
    bob.set_cloud_proxy(ProxyMode::On).expect("proxy on");
    bob.set_parameters(rig.proxy_server_param())
        .expect("server");

    // Bob's first state callback (Connecting) fails: reported once, and
    // the events behind it still arrive.
    bob.join_channel("failing".into(), 2).expect("bob joins");
    wait_for(&bob_rx, "the failure reported", |s| {
        *s == Seen::Warning(WarningKind::CallbackFailed)
    });
    wait_for(&bob_rx, "Connected after the failure", |s| {
        *s == Seen::State(ConnectionState::Connected, StateReason::Joined)
    });
    alice
        .join_channel("failing".into(), 1)
        .expect("alice joins");
    wait_for(&bob_rx, "alice joining", |s| *s == Seen::UserJoined(1));
    for text in ["lost in the failing callback", "delivered"] {
        alice.send_message(text.as_bytes().to_vec()).expect("send");
    }
    // The first message's callback returned an error: reported, and the
    // next message still arrives.
    wait_for(&bob_rx, "the returned error reported", |s| {
        *s == Seen::Warning(WarningKind::CallbackFailed)
    });
    wait_for(&bob_rx, "the second message", |s| {
        *s == Seen::Message(Some(1), b"delivered".to_vec())
    });
    bob.leave_channel().expect("bob leaves");
    bob.destroy();
    let rest: Vec<Seen> = bob_rx.try_iter().collect();
    assert!(
        rest.contains(&Seen::State(
            ConnectionState::Disconnected,
            StateReason::Left
        )),
        "{rest:?}"
    );
    alice.destroy();
    runtime.block_on(rig.shutdown());
}

#[test]
fn destroy_ends_a_join_blocked_on_another_thread_with_destroyed() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let rig = runtime.block_on(Rig::start());
    // A proxy that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("silent proxy");
    let silent_addr = silent.local_addr().expect("address");
    let (recorder, rx) = Recorder::new();
    let engine = CloudProxyEngine::new(config(&rig), recorder).expect("engine");
    engine.set_cloud_proxy(ProxyMode::On).expect("proxy on");
    engine
        .set_parameters(format!(
            r#"{{"rtc.proxy_server":[2, "[\"{}\"]", {}]}}"#,
            silent_addr.ip(),
            silent_addr.port()
        ))
        .expect("server");
    let (done_tx, done_rx) = mpsc::channel();
    thread::scope(|scope| {
        let engine = &engine;
        scope.spawn(move || {
            let _ = done_tx.send(engine.join_channel("silent".into(), 1));
        });
        wait_for(&rx, "Connecting", |s| {
            *s == Seen::State(ConnectionState::Connecting, StateReason::Joining)
        });
        engine.destroy();
        let joined = done_rx.recv_timeout(WAIT).expect("the join returned");
        let refused = joined.expect_err("destroyed mid-join");
        assert_eq!(refused.code(), ErrorCode::Destroyed, "{refused}");
        assert!(refused.to_string().contains("join"), "{refused}");
    });
    drop(silent);
    runtime.block_on(rig.shutdown());
}
