"""The guide's flow from Python through the UniFFI-generated module
(ctypes only), against the loopback rig (`cargo run -p cloudproxy-ffi
--example loopback_rig`, whose KEY=value lines are this script's
environment). `cargo xtask ci` puts `cloudproxy_ffi.py` and the library in
one directory on PYTHONPATH and runs it; it exits non-zero on the first
failed check."""

import os
import threading

from cloudproxy_ffi import (
    CloudProxyEngine,
    CloudProxyError,
    ConnectionState,
    EngineConfig,
    EngineEventHandler,
    ProxyType,
    StateReason,
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


def engine(name):
    recorder = Recorder(name)
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
    for r in (a, b):
        assert len(r.threads) == 1 and main_thread not in r.threads, r.threads
    elapsed = next(e[2] for e in a.seen if e[0] == "proxy_connected")
    print(
        f"Python: the guide's flow passed (onProxyConnected over UDP in {elapsed} ms; "
        "3 messages; media; callbacks on one event thread, not the caller's)",
        flush=True,
    )


if __name__ == "__main__":
    main()
