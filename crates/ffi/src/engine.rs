//! [`CloudProxyEngine`]: the engine behind a blocking API, with its own
//! runtime and event thread.

use std::cell::Cell;
use std::collections::HashSet;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use cloudproxy_engine::{Bytes, Engine};
use tokio::runtime::Runtime;
use tokio::sync::watch;

use crate::config::EngineConfig;
use crate::error::CloudProxyError;
use crate::events::{Delivery, EngineEventHandler, ProxyMode, WarningKind};

/// The name of the thread every callback runs on.
pub const EVENT_THREAD_NAME: &str = "cloudproxy-events";

thread_local! {
    /// Whether this thread is an engine's event thread (a plain flag: asking
    /// for `thread::current()` on a thread C created would allocate a handle
    /// that lives until the process ends).
    static ON_EVENT_THREAD: Cell<bool> = const { Cell::new(false) };
}

/// How long `destroy` lets the runtime's tasks wind down after leaving.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// How long `destroy` waits for blocking calls on other threads (a join)
/// to give up and return `Destroyed` before it shuts the runtime down.
const CALLS_GRACE: Duration = Duration::from_secs(5);

/// A cloud proxy engine for one app (the guide's `RtcEngine`): set the
/// proxy up with the guide's strings, join a channel, send messages and
/// media; events go to the [`EngineEventHandler`] given at creation.
///
/// Every method blocks until done and may be called from any thread;
/// after [`destroy`](Self::destroy) every call fails with
/// [`CloudProxyError::Destroyed`].
#[derive(Debug, uniffi::Object)]
pub struct CloudProxyEngine {
    live: Mutex<Option<Live>>,
}

/// What exists between create and destroy.
#[derive(Debug)]
struct Live {
    engine: Engine,
    runtime: Runtime,
    events_thread: JoinHandle<()>,
    /// Set to `true` by `destroy`; every blocking call holds a receiver
    /// while it waits, so destroy can end those calls with `Destroyed`
    /// and know when they have returned.
    destroyed: watch::Sender<bool>,
}

#[uniffi::export]
impl CloudProxyEngine {
    /// Creates an engine (the guide's `RtcEngine.create`): starts its
    /// runtime and its event thread, which calls `handler` until
    /// [`destroy`](Self::destroy).
    ///
    /// # Errors
    /// [`CloudProxyError::InvalidCredential`], [`CloudProxyError::InvalidAddress`]
    /// or [`CloudProxyError::InvalidConfig`] naming the setting;
    /// [`CloudProxyError::Runtime`] when no thread could be started.
    #[uniffi::constructor]
    pub fn new(
        config: EngineConfig,
        handler: Box<dyn EngineEventHandler>,
    ) -> Result<Self, CloudProxyError> {
        let engine = config.builder()?.build()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cloudproxy-runtime")
            // I/O and timers only: the signal driver would install process-wide
            // handlers a library has no business owning.
            .enable_io()
            .enable_time()
            .build()
            .map_err(CloudProxyError::Runtime)?;
        let (tx, rx) = mpsc::channel::<Delivery>();
        // The event thread is a plain thread, outside the runtime, so a
        // callback may call blocking engine methods (even join) without
        // stalling the runtime or nesting `block_on`.
        let events_thread = thread::Builder::new()
            .name(EVENT_THREAD_NAME.into())
            .spawn(move || {
                ON_EVENT_THREAD.with(|flag| flag.set(true));
                deliver_all(&rx, handler.as_ref());
            })
            .map_err(CloudProxyError::Runtime)?;
        spawn_pumps(&runtime, &engine, &tx);
        Ok(Self {
            live: Mutex::new(Some(Live {
                engine,
                runtime,
                events_thread,
                destroyed: watch::Sender::new(false),
            })),
        })
    }

    /// Applies a parameter string from the guide, verbatim (the guide's
    /// `setParameters`), e.g. `{"rtc.enable_proxy":true}` or
    /// `{"rtc.proxy_server":[2, "[\"192.168.0.112\"]", 0]}`. Call it before
    /// joining or after leaving.
    ///
    /// # Errors
    /// [`CloudProxyError::InvalidParameters`] (nothing applied),
    /// [`CloudProxyError::InvalidState`] while in a channel.
    pub fn set_parameters(&self, parameters: String) -> Result<(), CloudProxyError> {
        Ok(self.with_live("setting parameters", |live| {
            live.engine.set_parameters(&parameters)
        })??)
    }

    /// Selects how the media network is reached (the guide's
    /// `setCloudProxy`); the last call of this or `set_parameters` wins.
    ///
    /// # Errors
    /// [`CloudProxyError::InvalidState`] while in a channel.
    pub fn set_cloud_proxy(&self, mode: ProxyMode) -> Result<(), CloudProxyError> {
        Ok(self.with_live("setting the proxy mode", |live| {
            live.engine.set_cloud_proxy(mode.into())
        })??)
    }

    /// A parameter's current value as JSON (`rtc.enable_proxy`,
    /// `rtc.proxy_server`, or any key set), `None` when never set or after
    /// destroy.
    pub fn parameter(&self, key: String) -> Option<String> {
        self.with_live("reading a parameter", |live| live.engine.parameter(&key))
            .ok()
            .flatten()
    }

    /// Joins `channel` as user `uid` and returns once joined, media path
    /// included (bounded by the engine's timeouts: about 10 s through the
    /// proxy). Events arrive meanwhile: `Connecting`, `onProxyConnected`,
    /// `Connected`.
    ///
    /// # Errors
    /// [`CloudProxyError::InvalidState`] when already in a channel,
    /// [`CloudProxyError::InvalidArgument`] for a bad channel name, or why
    /// the media network could not be reached.
    pub fn join_channel(&self, channel: String, uid: u32) -> Result<(), CloudProxyError> {
        let (engine, handle, destroyed) = self.with_live("joining a channel", Live::handles)?;
        handle.block_on(until_destroyed(
            "joining a channel",
            destroyed,
            async move { engine.join_channel(&channel, uid).await },
        ))
    }

    /// Sends a reliable message to the channel (delivered in order, exactly
    /// once, across failovers).
    ///
    /// # Errors
    /// [`CloudProxyError::InvalidState`] outside a channel,
    /// [`CloudProxyError::PayloadTooLarge`].
    pub fn send_message(&self, payload: Vec<u8>) -> Result<(), CloudProxyError> {
        Ok(self.with_live("sending a message", |live| {
            live.engine.send_message(Bytes::from(payload))
        })??)
    }

    /// Sends a media datagram (unreliable).
    ///
    /// # Errors
    /// [`CloudProxyError::InvalidState`] outside a channel,
    /// [`CloudProxyError::InvalidArgument`] when empty,
    /// [`CloudProxyError::PayloadTooLarge`].
    pub fn send_media(&self, payload: Vec<u8>) -> Result<(), CloudProxyError> {
        Ok(self.with_live("sending media", |live| {
            live.engine.send_media(Bytes::from(payload))
        })??)
    }

    /// Leaves the channel and waits (at most 3 s) for the connection to
    /// close; nothing happens outside a channel.
    ///
    /// # Errors
    /// [`CloudProxyError::InvalidState`] while a join is still running.
    pub fn leave_channel(&self) -> Result<(), CloudProxyError> {
        let (engine, handle, destroyed) = self.with_live("leaving the channel", Live::handles)?;
        handle.block_on(until_destroyed(
            "leaving the channel",
            destroyed,
            async move { engine.leave_channel().await },
        ))
    }

    /// The guide's `destroy`: ends a join or leave blocked on another
    /// thread (it fails with [`CloudProxyError::Destroyed`]) and waits for
    /// it to return, leaves any channel, stops the runtime,
    /// delivers the events still queued and ends the event thread (waiting
    /// for it unless called from a callback). Idempotent; also done when the
    /// engine is dropped.
    ///
    /// Exported to Kotlin, Swift and Python as `release()`: UniFFI's Kotlin
    /// objects already have a `destroy()` (and `close()`), which free the
    /// object and so do the same.
    #[uniffi::method(name = "release")]
    pub fn destroy(&self) {
        let live = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(live) = live {
            live.shut_down();
        }
    }
}

impl CloudProxyEngine {
    /// Runs `f` on the live engine, or fails with `Destroyed`.
    fn with_live<T>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&Live) -> T,
    ) -> Result<T, CloudProxyError> {
        // A panic while holding the lock cannot leave `Live` half-written.
        let guard = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard
            .as_ref()
            .map(f)
            .ok_or(CloudProxyError::Destroyed { operation })
    }
}

impl Drop for CloudProxyEngine {
    fn drop(&mut self) {
        self.destroy();
    }
}

impl Live {
    /// What a blocking call needs, so the lock is not held while it waits
    /// (other calls, and callbacks', go on meanwhile).
    fn handles(&self) -> (Engine, tokio::runtime::Handle, watch::Receiver<bool>) {
        (
            self.engine.clone(),
            self.runtime.handle().clone(),
            self.destroyed.subscribe(),
        )
    }

    fn shut_down(self) {
        let Self {
            engine,
            runtime,
            events_thread,
            destroyed,
        } = self;
        // Blocking calls still running return `Destroyed` now; wait for
        // them (they drop their receivers) so none of them sees the runtime
        // stop under it.
        destroyed.send_replace(true);
        let calls_ended =
            runtime.block_on(async { tokio::time::timeout(CALLS_GRACE, destroyed.closed()).await });
        if calls_ended.is_err() {
            tracing::warn!("destroy: a blocking call did not return within {CALLS_GRACE:?}");
        }
        if let Err(e) = runtime.block_on(engine.leave_channel()) {
            tracing::debug!(error = %e, "leaving on destroy");
        }
        drop(engine);
        // Drops every task, the pumps and their senders with them, so the
        // event thread ends once it has delivered what is queued.
        runtime.shutdown_timeout(SHUTDOWN_GRACE);
        // From a callback, the event thread cannot wait for itself; it ends
        // once that callback returns.
        if !ON_EVENT_THREAD.with(Cell::get) {
            // Err only if a callback panicked; that panic was already
            // printed on the event thread.
            let _ = events_thread.join();
        }
    }
}

/// Runs `call` until it finishes or the engine is destroyed, whichever
/// comes first; the latter fails with `Destroyed` naming `operation`.
async fn until_destroyed(
    operation: &'static str,
    mut destroyed: watch::Receiver<bool>,
    call: impl Future<Output = Result<(), cloudproxy_engine::EngineError>>,
) -> Result<(), CloudProxyError> {
    tokio::select! {
        result = call => Ok(result?),
        // A dropped sender is a destroyed engine too.
        _ = destroyed.wait_for(|destroyed| *destroyed) => Err(CloudProxyError::Destroyed { operation }),
    }
}

/// The event thread's loop: every delivery reaches the handler, even after
/// a callback failed. A Kotlin or Python exception in a callback arrives
/// here as a panic of UniFFI's callback proxy (a Rust handler's own panic
/// too), raised on this side of the foreign call, so catching it never
/// unwinds through foreign frames. Each kind of failing callback is logged
/// once and reported once through `on_warning`.
fn deliver_all(rx: &mpsc::Receiver<Delivery>, handler: &dyn EngineEventHandler) {
    let mut failed: HashSet<&'static str> = HashSet::new();
    for delivery in rx {
        let callback = delivery.callback();
        // A foreign exception arrives as `Err` (UniFFI converts it into a
        // `CallbackError`); a Rust handler's panic is caught too, so no
        // failure ends this thread.
        let why = match panic::catch_unwind(AssertUnwindSafe(|| delivery.deliver(handler))) {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e.to_string(),
            Err(payload) => panic_message(payload.as_ref()).to_owned(),
        };
        if !failed.insert(callback) {
            continue;
        }
        let message = format!(
            "the app's event handler failed in {callback}: {why}; later events are still \
             delivered, and further failures of this callback are not reported again"
        );
        tracing::error!("{message}");
        if callback != Delivery::WARNING_CALLBACK {
            // A failing on_warning is not asked to report itself.
            let report = panic::catch_unwind(AssertUnwindSafe(|| {
                handler.on_warning(WarningKind::CallbackFailed, message.clone())
            }));
            if !matches!(report, Ok(Ok(()))) {
                failed.insert(Delivery::WARNING_CALLBACK);
            }
        }
    }
}

/// The text of a panic payload (UniFFI's panics carry a `String`).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message")
}

/// Forwards the engine's events, messages and media to the event thread.
fn spawn_pumps(runtime: &Runtime, engine: &Engine, tx: &mpsc::Sender<Delivery>) {
    // Subscribed now, before any join, so no event of the join is missed.
    let mut events = engine.events();
    let out = tx.clone();
    runtime.spawn(async move {
        while let Some(event) = events.recv().await {
            if out.send(Delivery::Event(event)).is_err() {
                return;
            }
        }
    });
    let (source, out) = (engine.clone(), tx.clone());
    runtime.spawn(async move {
        while let Some(message) = source.recv_message().await {
            if out.send(Delivery::Message(message)).is_err() {
                return;
            }
        }
    });
    let (source, out) = (engine.clone(), tx.clone());
    runtime.spawn(async move {
        while let Some(media) = source.recv_media().await {
            if out.send(Delivery::Media(media)).is_err() {
                return;
            }
        }
    });
}
