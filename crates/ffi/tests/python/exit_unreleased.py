"""Exits with two joined engines never released while callbacks are still
arriving (media from bob to alice): the package's atexit hook must release
them before the interpreter finalizes. Without it, a callback arriving
during finalization ended the event thread with a forced unwind through
the library and the process aborted (`FATAL: exception not rethrown`).
`cargo xtask sdk` runs it 10 times against the loopback rig; the exit
status must be 0 every time."""

import os
import threading

from cloudproxy_ffi import CloudProxyEngine, EngineConfig, EngineEventHandler

MEDIA_PACKETS = 200


class Counter(EngineEventHandler):
    def __init__(self):
        self.media = threading.Event()

    def on_connection_state_changed(self, state, reason):
        pass

    def on_proxy_connected(self, proxy_type, elapsed_ms):
        pass

    def on_user_joined(self, uid):
        pass

    def on_user_left(self, uid):
        pass

    def on_message(self, uid, payload):
        pass

    def on_media(self, uid, payload):
        self.media.set()

    def on_warning(self, kind, message):
        pass


def engine(handler):
    e = CloudProxyEngine(
        EngineConfig(
            app_id=os.environ["CLOUDPROXY_APP_ID"],
            credential_hex=os.environ["CLOUDPROXY_CREDENTIAL"],
            media_tcp=os.environ["CLOUDPROXY_MEDIA_TCP"],
            media_udp=os.environ["CLOUDPROXY_MEDIA_UDP"],
            default_proxy_domain="localhost",
        ),
        handler,
    )
    e.set_parameters('{"rtc.enable_proxy":true}')
    ip, port = os.environ["CLOUDPROXY_PROXY_IP"], os.environ["CLOUDPROXY_PROXY_PORT"]
    e.set_parameters('{"rtc.proxy_server":[2, "[\\"%s\\"]", %s]}' % (ip, port))
    return e


alice_handler = Counter()
alice = engine(alice_handler)
bob = engine(Counter())
alice.join_channel("exit", 1)
bob.join_channel("exit", 2)
for _ in range(MEDIA_PACKETS):
    bob.send_media(b"still arriving at exit")
assert alice_handler.media.wait(20), "no media within 20 s"
# No release, no leave: the interpreter exits with both engines joined.
print("Python: exiting with two joined engines never released", flush=True)
