"""The guide's flow from Python through the UniFFI-generated module
(ctypes only), against the loopback rig (`cargo run -p cloudproxy-ffi
--example loopback_rig`, whose KEY=value lines are this script's
environment). `cargo xtask ci` puts `cloudproxy_ffi.py` and the library in
one directory on PYTHONPATH and runs it; it exits non-zero on the first
failed check."""

import os
import socket
import tempfile
import threading

from cloudproxy_ffi import (
    CloudProxyEngine,
    CloudProxyError,
    ConnectionState,
    EngineConfig,
    EngineEventHandler,
    ProxyMode,
    ProxyType,
    StateReason,
    WarningKind,
)

WAIT_SECONDS = 20


class Recorder(EngineEventHandler):
    """Records every callback and the thread it came from."""

    def __init__(self, name):
        self.name = name
        self.changed = threading.Condition()
        self.seen = []
        self.threads = set()

    def _record(self, *event):
        with self.changed:
            self.threads.add(threading.get_ident())
            self.seen.append(event)
            self.changed.notify_all()
        if event[0] != "media" or sum(1 for e in self.seen if e[0] == "media") == 1:
            print(f"Python: {self.name} {event}", flush=True)

    def on_connection_state_changed(self, state, reason):
        self._record("state", state, reason)

    def on_proxy_connected(self, proxy_type, elapsed_ms):
        self._record("proxy_connected", proxy_type, elapsed_ms)

    def on_user_joined(self, uid):
        self._record("user_joined", uid)

    def on_user_left(self, uid):
        self._record("user_left", uid)

    def on_message(self, uid, payload):
        self._record("message", uid, bytes(payload))

    def on_media(self, uid, payload):
        self._record("media", uid, bytes(payload))

    def on_warning(self, kind, message):
        self._record("warning", kind, message)

    def wait_for(self, what, predicate, timeout=WAIT_SECONDS):
        with self.changed:
            found = self.changed.wait_for(
                lambda: any(predicate(e) for e in self.seen), timeout
            )
        assert found, f"{self.name}: no {what} within {timeout} s; seen {self.seen}"


class ThrowsOnce(Recorder):
    """Raises from the first state callback, as an app bug would."""

    def __init__(self, name):
        super().__init__(name)
        self.thrown = False

    def on_connection_state_changed(self, state, reason):
        if not self.thrown:
            self.thrown = True
            raise RuntimeError("app bug in callback")
        super().on_connection_state_changed(state, reason)


def engine(name, recorder=None):
    recorder = recorder or Recorder(name)
    config = EngineConfig(
        app_id=os.environ["CLOUDPROXY_APP_ID"],
        credential_hex=os.environ["CLOUDPROXY_CREDENTIAL"],
        media_tcp=os.environ["CLOUDPROXY_MEDIA_TCP"],
        media_udp=os.environ["CLOUDPROXY_MEDIA_UDP"],
        default_proxy_domain="localhost",
    )
    e = CloudProxyEngine(config, recorder)
    # The guide's two lines: enable, then the server (here the rig's).
    e.set_parameters('{"rtc.enable_proxy":true}')
    ip, port = os.environ["CLOUDPROXY_PROXY_IP"], os.environ["CLOUDPROXY_PROXY_PORT"]
    e.set_parameters('{"rtc.proxy_server":[2, "[\\"%s\\"]", %s]}' % (ip, port))
    return e, recorder


def main():
    alice, a = engine("alice")
    bob, b = engine("bob")
    assert alice.parameter("rtc.enable_proxy") == "true"

    try:
        alice.set_parameters('{"rtc.enable_proxy":tru}')
        raise AssertionError("bad JSON accepted")
    except CloudProxyError.InvalidParameters as e:
        print(f"Python: typed error {type(e).__name__}: {e}", flush=True)

    alice.join_channel("guide", 1)
    bob.join_channel("guide", 2)
    a.wait_for("Connecting", lambda e: e == ("state", ConnectionState.CONNECTING, StateReason.JOINING))
    a.wait_for("onProxyConnected", lambda e: e[:2] == ("proxy_connected", ProxyType.UDP))
    a.wait_for("Connected", lambda e: e == ("state", ConnectionState.CONNECTED, StateReason.JOINED))
    a.wait_for("bob joining", lambda e: e == ("user_joined", 2))

    # The guide: parameters only before joining or after leaving.
    try:
        alice.set_parameters('{"rtc.enable_proxy":false}')
        raise AssertionError("set_parameters accepted in a channel")
    except CloudProxyError.InvalidState as e:
        print(f"Python: typed error {type(e).__name__}: {e}", flush=True)

    texts = [b"hello bob", b"through the cloud proxy", b"in order, exactly once"]
    for text in texts:
        alice.send_message(text)
    b.wait_for("3 messages", lambda e: e == ("message", 1, texts[-1]))
    got = [e[2] for e in b.seen if e[0] == "message"]
    assert got == texts, got

    # Media is unreliable: send until a datagram arrives.
    for _ in range(WAIT_SECONDS * 50):
        bob.send_media(b"an RTP packet")
        with a.changed:
            if a.changed.wait_for(lambda: any(e[0] == "media" for e in a.seen), 0.02):
                break
    a.wait_for("media", lambda e: e == ("media", 2, b"an RTP packet"), timeout=0)

    bob.leave_channel()
    a.wait_for("bob leaving", lambda e: e == ("user_left", 2))
    alice.leave_channel()
    alice.release()
    bob.release()
    left = ("state", ConnectionState.DISCONNECTED, StateReason.LEFT)
    assert left in a.seen and left in b.seen, "Disconnected/Left delivered before release returned"
    try:
        alice.send_message(b"late")
        raise AssertionError("a destroyed engine accepted a call")
    except CloudProxyError.Destroyed:
        pass
    main_thread = threading.get_ident()
    throwing_callback_then_events_still_delivered()
    release_during_a_join_on_another_thread()
    the_with_statement_releases()
    for r in (a, b):
        assert len(r.threads) == 1 and main_thread not in r.threads, r.threads
    elapsed = next(e[2] for e in a.seen if e[0] == "proxy_connected")
    print(
        f"Python: the guide's flow passed (onProxyConnected over UDP in {elapsed} ms; "
        "3 messages; media; callbacks on one event thread, not the caller's)",
        flush=True,
    )


def throwing_callback_then_events_still_delivered():
    # The process's stderr, captured while the callback throws: the failure
    # is reported through on_warning, not printed as a Rust panic.
    captured = tempfile.TemporaryFile()
    saved_stderr = os.dup(2)
    os.dup2(captured.fileno(), 2)
    try:
        carol, c = engine("carol", ThrowsOnce("carol"))
        carol.join_channel("throwing", 3)
        c.wait_for("the failure reported", lambda e: e[:2] == ("warning", WarningKind.CALLBACK_FAILED))
    finally:
        os.dup2(saved_stderr, 2)
        os.close(saved_stderr)
    captured.seek(0)
    printed = captured.read()
    assert b"panicked" not in printed, f"a thrown callback printed a panic: {printed!r}"
    c.wait_for("Connected after the failure", lambda e: e == ("state", ConnectionState.CONNECTED, StateReason.JOINED))
    dave, _ = engine("dave")
    dave.join_channel("throwing", 4)
    c.wait_for("dave joining", lambda e: e == ("user_joined", 4))
    dave.send_message(b"after the failure")
    c.wait_for("a message", lambda e: e == ("message", 4, b"after the failure"))
    dave.release()
    carol.leave_channel()
    carol.release()
    assert ("state", ConnectionState.DISCONNECTED, StateReason.LEFT) in c.seen, c.seen
    warning = next(e for e in c.seen if e[0] == "warning")
    assert "app bug in callback" in warning[2], warning
    print(f"Python: a throwing callback was reported ({warning[2]!r}) and events went on", flush=True)


def release_during_a_join_on_another_thread():
    # A proxy that accepts and never answers: the join blocks.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        erin, e = engine("erin")
        erin.set_cloud_proxy(ProxyMode.ON)
        erin.set_parameters('{"rtc.proxy_server":[2, "[\\"127.0.0.1\\"]", %d]}' % port)
        outcome = []

        def join():
            try:
                erin.join_channel("silent", 5)
                outcome.append("joined")
            except CloudProxyError as error:
                outcome.append(error)

        joiner = threading.Thread(target=join)
        joiner.start()
        e.wait_for("Connecting", lambda ev: ev == ("state", ConnectionState.CONNECTING, StateReason.JOINING))
        erin.release()
        joiner.join(WAIT_SECONDS)
        assert not joiner.is_alive(), "the join still blocks after release"
        assert len(outcome) == 1 and isinstance(outcome[0], CloudProxyError.Destroyed), outcome
        print(f"Python: release during a join: {type(outcome[0]).__name__}: {outcome[0]}", flush=True)


def the_with_statement_releases():
    with engine("frank")[0] as frank:
        assert frank.parameter("rtc.enable_proxy") == "true"
    try:
        frank.send_message(b"late")
        raise AssertionError("an engine released by `with` accepted a call")
    except CloudProxyError.Destroyed:
        pass


if __name__ == "__main__":
    main()
