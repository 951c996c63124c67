//! The plain C ABI, for C and C++ hosts (Windows apps, game engines) and
//! anything else with a C FFI. The header is `include/cloudproxy.h`,
//! generated from this module by cbindgen (`cargo xtask ci` checks it is
//! current). The same engine as the UniFFI API, the same guide's shape:
//!
//! ```c
//! CpError err = {0};
//! CpEngine *engine = NULL;
//! CpEngineConfig config = {"dev-app", "1552e01a...", "198.51.100.1:7000", "198.51.100.1:7000", NULL};
//! CpEventHandler handler = {.user_data = &app, .on_proxy_connected = on_proxy_connected};
//! if (cloudproxy_engine_create(&config, &handler, &engine, &err) != CP_ERROR_CODE_OK) { puts(err.message); }
//! cloudproxy_engine_set_parameters(engine, "{\"rtc.enable_proxy\":true}", &err);
//! cloudproxy_engine_join_channel(engine, "room", 7, &err);
//! cloudproxy_engine_leave_channel(engine, &err);
//! cloudproxy_engine_destroy(engine);
//! cloudproxy_error_free(&err);
//! ```
//!
//! Every function returns a [`ErrorCode`] (`CP_ERROR_CODE_OK`, 0, on
//! success) and, when `out_error` is not `NULL`, fills it with the code and
//! a message the library allocated. A `CpError` must start zeroed
//! (`CpError err = {0};`); it may be reused across calls (each call frees
//! the message it held) and is finally released with
//! [`cloudproxy_error_free`].
//!
//! Callbacks run on the engine's event thread (`cloudproxy-events`), one at
//! a time, never on the caller's thread: `user_data` and whatever the
//! callbacks touch must be safe to use from that thread. Pointers passed to
//! a callback are valid only during it.
//!
//! This is the one module of the workspace with `unsafe` code: a C caller's
//! pointers are trusted as the header documents them. Each block states why
//! it is sound given that contract.

#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_void};
use std::ptr;

use crate::config::EngineConfig;
use crate::engine::CloudProxyEngine;
use crate::error::{CloudProxyError, ErrorCode, InvalidStringKind};
use crate::events::{
    CallbackError, ConnectionState, EngineEventHandler, ProxyMode, ProxyType, StateReason,
    WarningKind,
};

/// What `cloudproxy_engine_create` needs (`CpEngineConfig`): NUL-terminated
/// UTF-8 strings, read during the call only.
#[repr(C)]
#[derive(Debug)]
pub struct CEngineConfig {
    /// The app id the proxy's operator configured.
    pub app_id: *const c_char,
    /// The app secret as `cloudproxy serve` prints it (hex digits).
    pub credential_hex: *const c_char,
    /// The media network's message (TCP) address, `ip:port`.
    pub media_tcp: *const c_char,
    /// The media network's media (UDP) address, `ip:port`.
    pub media_udp: *const c_char,
    /// The default proxy server's domain; `NULL` for the guide's default.
    pub default_proxy_domain: *const c_char,
}

/// The app's callbacks (`CpEventHandler`); any may be `NULL` (not wanted).
/// Copied at create; called on the engine's event thread with `user_data`
/// until `cloudproxy_engine_destroy` returns.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CEventHandler {
    /// Passed back as every callback's first argument.
    pub user_data: *mut c_void,
    /// The connection state changed (`onConnectionStateChanged`).
    pub on_connection_state_changed: Option<
        unsafe extern "C" fn(user_data: *mut c_void, state: ConnectionState, reason: StateReason),
    >,
    /// Connected through the proxy (`onProxyConnected`): media over
    /// `proxy_type`, `elapsed_ms` after the join started.
    pub on_proxy_connected: Option<
        unsafe extern "C" fn(user_data: *mut c_void, proxy_type: ProxyType, elapsed_ms: u64),
    >,
    /// Another user is in the channel.
    pub on_user_joined: Option<unsafe extern "C" fn(user_data: *mut c_void, uid: u32)>,
    /// A user left the channel.
    pub on_user_left: Option<unsafe extern "C" fn(user_data: *mut c_void, uid: u32)>,
    /// A reliable message: `len` bytes at `data`, valid during the call;
    /// `uid_known` is false when the sender's uid was not given.
    pub on_message: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            uid: u32,
            uid_known: bool,
            data: *const u8,
            len: usize,
        ),
    >,
    /// A media datagram, as `on_message`.
    pub on_media: Option<
        unsafe extern "C" fn(
            user_data: *mut c_void,
            uid: u32,
            uid_known: bool,
            data: *const u8,
            len: usize,
        ),
    >,
    /// A warning: a NUL-terminated message, valid during the call.
    pub on_warning: Option<
        unsafe extern "C" fn(user_data: *mut c_void, kind: WarningKind, message: *const c_char),
    >,
}

/// A failed call's code and message (`CpError`).
#[repr(C)]
#[derive(Debug)]
pub struct CError {
    /// What kind of failure; `CP_ERROR_CODE_OK` after a success.
    pub code: ErrorCode,
    /// The message (NUL-terminated UTF-8, owned by the library: release it
    /// with `cloudproxy_error_free`), or `NULL`.
    pub message: *mut c_char,
}

/// The C handler, callable from the event thread.
struct CHandler(CEventHandler);

// SAFETY: the header requires `user_data` and the callbacks to be usable
// from the engine's event thread; the library calls them from that one
// thread only, one call at a time, so no two threads touch them at once.
unsafe impl Send for CHandler {}
// SAFETY: as for `Send`: the shared reference is only ever used from the
// event thread, sequentially.
unsafe impl Sync for CHandler {}

impl CHandler {
    fn payload(
        &self,
        callback: Option<unsafe extern "C" fn(*mut c_void, u32, bool, *const u8, usize)>,
        uid: Option<u32>,
        payload: &[u8],
    ) {
        if let Some(f) = callback {
            // SAFETY: `f` is the app's function of this signature (header
            // contract); `payload` outlives the call, as documented.
            unsafe {
                f(
                    self.0.user_data,
                    uid.unwrap_or(0),
                    uid.is_some(),
                    payload.as_ptr(),
                    payload.len(),
                );
            }
        }
    }
}

impl EngineEventHandler for CHandler {
    fn on_connection_state_changed(
        &self,
        state: ConnectionState,
        reason: StateReason,
    ) -> Result<(), CallbackError> {
        if let Some(f) = self.0.on_connection_state_changed {
            // SAFETY: the app's function of this signature (header contract).
            unsafe { f(self.0.user_data, state, reason) }
        }
        Ok(())
    }

    fn on_proxy_connected(
        &self,
        proxy_type: ProxyType,
        elapsed_ms: u64,
    ) -> Result<(), CallbackError> {
        if let Some(f) = self.0.on_proxy_connected {
            // SAFETY: the app's function of this signature (header contract).
            unsafe { f(self.0.user_data, proxy_type, elapsed_ms) }
        }
        Ok(())
    }

    fn on_user_joined(&self, uid: u32) -> Result<(), CallbackError> {
        if let Some(f) = self.0.on_user_joined {
            // SAFETY: the app's function of this signature (header contract).
            unsafe { f(self.0.user_data, uid) }
        }
        Ok(())
    }

    fn on_user_left(&self, uid: u32) -> Result<(), CallbackError> {
        if let Some(f) = self.0.on_user_left {
            // SAFETY: the app's function of this signature (header contract).
            unsafe { f(self.0.user_data, uid) }
        }
        Ok(())
    }

    fn on_message(&self, uid: Option<u32>, payload: Vec<u8>) -> Result<(), CallbackError> {
        self.payload(self.0.on_message, uid, &payload);
        Ok(())
    }

    fn on_media(&self, uid: Option<u32>, payload: Vec<u8>) -> Result<(), CallbackError> {
        self.payload(self.0.on_media, uid, &payload);
        Ok(())
    }

    fn on_warning(&self, kind: WarningKind, message: String) -> Result<(), CallbackError> {
        if let Some(f) = self.0.on_warning {
            let message = c_string(message);
            // SAFETY: the app's function of this signature (header
            // contract); `message` outlives the call.
            unsafe { f(self.0.user_data, kind, message.as_ptr()) }
        }
        Ok(())
    }
}

/// `text` as a C string; an interior NUL (never in the library's own
/// messages) becomes U+FFFD rather than cutting the text short.
fn c_string(text: String) -> CString {
    CString::new(text).unwrap_or_else(|e| {
        let text = String::from_utf8_lossy(&e.into_vec()).replace('\0', "\u{FFFD}");
        CString::new(text).unwrap_or_default()
    })
}

/// Reads a C string argument.
///
/// # Safety
/// `ptr` is `NULL` or points to a NUL-terminated string that stays valid
/// and unchanged for `'a`.
unsafe fn str_arg<'a>(ptr: *const c_char, what: &'static str) -> Result<&'a str, CloudProxyError> {
    if ptr.is_null() {
        return Err(CloudProxyError::InvalidString {
            what,
            found: InvalidStringKind::Null,
        });
    }
    // SAFETY: non-null, and NUL-terminated and valid for 'a by this
    // function's contract.
    let text = unsafe { CStr::from_ptr(ptr) };
    text.to_str().map_err(|e| CloudProxyError::InvalidString {
        what,
        found: InvalidStringKind::NotUtf8 {
            valid_up_to: e.valid_up_to(),
        },
    })
}

/// Reads the engine argument.
///
/// # Safety
/// `engine` is `NULL` or a pointer `cloudproxy_engine_create` returned that
/// has not been destroyed.
unsafe fn engine_arg<'a>(
    engine: *const CloudProxyEngine,
) -> Result<&'a CloudProxyEngine, CloudProxyError> {
    // SAFETY: by this function's contract the pointer, when not NULL, is a
    // live `Box<CloudProxyEngine>` from `cloudproxy_engine_create`.
    unsafe { engine.as_ref() }.ok_or(CloudProxyError::NullPointer { what: "engine" })
}

/// Reads a byte buffer argument.
///
/// # Safety
/// `data` is `NULL` or points to `len` readable bytes valid for `'a`.
unsafe fn bytes_arg<'a>(data: *const u8, len: usize) -> Result<&'a [u8], CloudProxyError> {
    if len == 0 {
        return Ok(&[]);
    }
    if data.is_null() {
        return Err(CloudProxyError::NullPointer { what: "data" });
    }
    // SAFETY: non-null, `len` readable bytes valid for 'a by this
    // function's contract; `u8` has no alignment or validity requirement.
    Ok(unsafe { std::slice::from_raw_parts(data, len) })
}

/// Writes `result` to `out_error` (when not NULL) and returns its code.
///
/// # Safety
/// `out_error` is `NULL` or points to a writable `CError` whose `message` is
/// `NULL` or a message this library allocated.
unsafe fn report(result: Result<(), CloudProxyError>, out_error: *mut CError) -> ErrorCode {
    let (code, message) = match result {
        Ok(()) => (ErrorCode::Ok, ptr::null_mut()),
        Err(e) => (e.code(), c_string(e.to_string()).into_raw()),
    };
    // SAFETY: by this function's contract `out_error` is NULL or writable,
    // and its old message is NULL or ours to free.
    if let Some(out) = unsafe { out_error.as_mut() } {
        free_message(out);
        out.code = code;
        out.message = message;
    } else if !message.is_null() {
        // SAFETY: `message` came from `CString::into_raw` just above.
        drop(unsafe { CString::from_raw(message) });
    }
    code
}

fn free_message(error: &mut CError) {
    if !error.message.is_null() {
        // SAFETY: a non-NULL `message` in a `CError` is always one
        // `report` made with `CString::into_raw` (the header requires a
        // zeroed `CpError` before first use) and is freed only here, which
        // resets it to NULL.
        drop(unsafe { CString::from_raw(error.message) });
        error.message = ptr::null_mut();
    }
}

/// Creates an engine (the guide's `RtcEngine.create`) and stores it in
/// `*out_engine`; `handler`'s callbacks start on the event thread.
///
/// # Safety
/// `config` points to a `CpEngineConfig` whose strings are NUL-terminated
/// (`default_proxy_domain` may be `NULL`); `handler` is `NULL` or points to
/// a `CpEventHandler` whose callbacks and `user_data` stay usable from
/// another thread until `cloudproxy_engine_destroy` returns; `out_engine`
/// points to writable storage for a pointer; `out_error` is `NULL` or a
/// zeroed (or previously used) `CpError`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cloudproxy_engine_create(
    config: *const CEngineConfig,
    handler: *const CEventHandler,
    out_engine: *mut *mut CloudProxyEngine,
    out_error: *mut CError,
) -> ErrorCode {
    let result = (|| {
        // SAFETY: NULL or a valid `CpEngineConfig` (header contract).
        let config =
            unsafe { config.as_ref() }.ok_or(CloudProxyError::NullPointer { what: "config" })?;
        if out_engine.is_null() {
            return Err(CloudProxyError::NullPointer { what: "out_engine" });
        }
        // SAFETY (each string): NUL-terminated and valid during this call
        // (header contract).
        let settings = unsafe {
            EngineConfig {
                app_id: str_arg(config.app_id, "app_id")?.to_owned(),
                credential_hex: str_arg(config.credential_hex, "credential_hex")?.to_owned(),
                media_tcp: str_arg(config.media_tcp, "media_tcp")?.to_owned(),
                media_udp: str_arg(config.media_udp, "media_udp")?.to_owned(),
                default_proxy_domain: if config.default_proxy_domain.is_null() {
                    None
                } else {
                    Some(str_arg(config.default_proxy_domain, "default_proxy_domain")?.to_owned())
                },
            }
        };
        // SAFETY: NULL or a valid `CpEventHandler`, copied here (header
        // contract); NULL means no callbacks.
        let callbacks = unsafe { handler.as_ref() }
            .copied()
            .unwrap_or(CEventHandler {
                user_data: ptr::null_mut(),
                on_connection_state_changed: None,
                on_proxy_connected: None,
                on_user_joined: None,
                on_user_left: None,
                on_message: None,
                on_media: None,
                on_warning: None,
            });
        let engine = CloudProxyEngine::new(settings, Box::new(CHandler(callbacks)))?;
        // SAFETY: `out_engine` is non-null and writable (header contract).
        unsafe { out_engine.write(Box::into_raw(Box::new(engine))) };
        Ok(())
    })();
    // SAFETY: `out_error` per the header contract.
    unsafe { report(result, out_error) }
}

/// Applies a parameter string from the guide, verbatim (`setParameters`).
///
/// # Safety
/// `engine` is a live engine from `cloudproxy_engine_create`; `parameters`
/// is a NUL-terminated string; `out_error` as for every call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cloudproxy_engine_set_parameters(
    engine: *const CloudProxyEngine,
    parameters: *const c_char,
    out_error: *mut CError,
) -> ErrorCode {
    // SAFETY: the arguments per this function's contract.
    let result = unsafe { engine_arg(engine) }.and_then(|engine| {
        // SAFETY: NUL-terminated, valid during this call.
        let parameters = unsafe { str_arg(parameters, "parameters") }?;
        engine.set_parameters(parameters.to_owned())
    });
    // SAFETY: `out_error` per the header contract.
    unsafe { report(result, out_error) }
}

/// Selects the proxy mode (`setCloudProxy`): a `CpProxyMode` value.
///
/// # Safety
/// `engine` is a live engine; `out_error` as for every call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cloudproxy_engine_set_cloud_proxy(
    engine: *const CloudProxyEngine,
    mode: u32,
    out_error: *mut CError,
) -> ErrorCode {
    // SAFETY: the arguments per this function's contract.
    let result = unsafe { engine_arg(engine) }.and_then(|engine| {
        let mode =
            ProxyMode::from_u32(mode).ok_or(CloudProxyError::UnknownProxyMode { value: mode })?;
        engine.set_cloud_proxy(mode)
    });
    // SAFETY: `out_error` per the header contract.
    unsafe { report(result, out_error) }
}

/// Joins `channel` as `uid`; returns once joined (or failed).
///
/// # Safety
/// `engine` is a live engine; `channel` is a NUL-terminated string;
/// `out_error` as for every call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cloudproxy_engine_join_channel(
    engine: *const CloudProxyEngine,
    channel: *const c_char,
    uid: u32,
    out_error: *mut CError,
) -> ErrorCode {
    // SAFETY: the arguments per this function's contract.
    let result = unsafe { engine_arg(engine) }.and_then(|engine| {
        // SAFETY: NUL-terminated, valid during this call.
        let channel = unsafe { str_arg(channel, "channel") }?;
        engine.join_channel(channel.to_owned(), uid)
    });
    // SAFETY: `out_error` per the header contract.
    unsafe { report(result, out_error) }
}

/// Sends a reliable message of `len` bytes.
///
/// # Safety
/// `engine` is a live engine; `data` points to `len` readable bytes (or is
/// `NULL` with `len` 0); `out_error` as for every call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cloudproxy_engine_send_message(
    engine: *const CloudProxyEngine,
    data: *const u8,
    len: usize,
    out_error: *mut CError,
) -> ErrorCode {
    // SAFETY: the arguments per this function's contract.
    let result = unsafe { engine_arg(engine) }.and_then(|engine| {
        // SAFETY: `len` readable bytes, valid during this call.
        let payload = unsafe { bytes_arg(data, len) }?;
        engine.send_message(payload.to_vec())
    });
    // SAFETY: `out_error` per the header contract.
    unsafe { report(result, out_error) }
}

/// Sends a media datagram of `len` bytes (unreliable).
///
/// # Safety
/// As `cloudproxy_engine_send_message`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cloudproxy_engine_send_media(
    engine: *const CloudProxyEngine,
    data: *const u8,
    len: usize,
    out_error: *mut CError,
) -> ErrorCode {
    // SAFETY: the arguments per this function's contract.
    let result = unsafe { engine_arg(engine) }.and_then(|engine| {
        // SAFETY: `len` readable bytes, valid during this call.
        let payload = unsafe { bytes_arg(data, len) }?;
        engine.send_media(payload.to_vec())
    });
    // SAFETY: `out_error` per the header contract.
    unsafe { report(result, out_error) }
}

/// Leaves the channel (waits at most 3 s for the connection to close).
///
/// # Safety
/// `engine` is a live engine; `out_error` as for every call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cloudproxy_engine_leave_channel(
    engine: *const CloudProxyEngine,
    out_error: *mut CError,
) -> ErrorCode {
    // SAFETY: the arguments per this function's contract.
    let result = unsafe { engine_arg(engine) }.and_then(CloudProxyEngine::leave_channel);
    // SAFETY: `out_error` per the header contract.
    unsafe { report(result, out_error) }
}

/// A parameter's current value as JSON, or `NULL` when never set. Release
/// it with `cloudproxy_string_free`.
///
/// # Safety
/// `engine` is a live engine; `key` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cloudproxy_engine_parameter(
    engine: *const CloudProxyEngine,
    key: *const c_char,
) -> *mut c_char {
    // SAFETY: the arguments per this function's contract.
    let value = unsafe { engine_arg(engine) }.ok().and_then(|engine| {
        // SAFETY: NUL-terminated, valid during this call.
        let key = unsafe { str_arg(key, "key") }.ok()?;
        engine.parameter(key.to_owned())
    });
    value.map_or(ptr::null_mut(), |v| c_string(v).into_raw())
}

/// Releases a string `cloudproxy_engine_parameter` returned (`NULL` is
/// ignored).
///
/// # Safety
/// `text` is `NULL` or a string from this library not yet released.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cloudproxy_string_free(text: *mut c_char) {
    if !text.is_null() {
        // SAFETY: made by `CString::into_raw` in this library and released
        // once (this function's contract).
        drop(unsafe { CString::from_raw(text) });
    }
}

/// Leaves any channel, stops the engine's threads (delivering the events
/// still queued first) and frees it. `NULL` is ignored. May be called from
/// a callback; the handler is not called after this returns (except, when
/// called from a callback, by the callback already running).
///
/// # Safety
/// `engine` is `NULL` or a live engine, not used by any other thread during
/// or after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cloudproxy_engine_destroy(engine: *mut CloudProxyEngine) {
    if !engine.is_null() {
        // SAFETY: a pointer from `Box::into_raw` in `cloudproxy_engine_create`,
        // destroyed once and no longer used elsewhere (this function's
        // contract).
        let engine = unsafe { Box::from_raw(engine) };
        engine.destroy();
    }
}

/// Frees `error`'s message and resets it to `CP_ERROR_CODE_OK`. `NULL` is
/// ignored.
///
/// # Safety
/// `error` is `NULL` or a `CpError` that is zeroed or was filled by this
/// library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cloudproxy_error_free(error: *mut CError) {
    // SAFETY: NULL or a valid `CpError` (this function's contract).
    if let Some(error) = unsafe { error.as_mut() } {
        free_message(error);
        error.code = ErrorCode::Ok;
    }
}
