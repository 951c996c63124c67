// The guide's flow from Kotlin (the Android language) on the JVM through the
// UniFFI-generated bindings (JNA), against the loopback rig (`cargo run -p
// cloudproxy-ffi --example loopback_rig`, whose KEY=value lines are this
// program's environment). `cargo xtask ci` compiles it with kotlinc and runs
// it; it exits non-zero on the first failed check.

import java.util.concurrent.TimeUnit
import java.util.concurrent.locks.ReentrantLock
import kotlin.concurrent.withLock
import kotlin.system.exitProcess
import uniffi.cloudproxy_ffi.*

const val WAIT_MS = 20_000L

fun check(ok: Boolean, what: () -> String) {
    if (!ok) {
        System.err.println("Kotlin: FAILED: ${what()}")
        exitProcess(1)
    }
}

class Recorder(private val name: String) : EngineEventHandler {
    private val lock = ReentrantLock()
    private val changed = lock.newCondition()
    val seen = mutableListOf<List<Any?>>()
    // Native thread ids: JNA attaches the event thread to the JVM for each
    // callback, so the Java `Thread` object differs from call to call.
    val threads = mutableSetOf<String>()

    private fun record(vararg event: Any?) {
        lock.withLock {
            threads.add(nativeThreadId())
            seen.add(event.toList())
            changed.signalAll()
            if (event[0] != "media" || seen.count { it[0] == "media" } == 1) {
                println("Kotlin: $name ${event.toList()}")
            }
        }
    }

    override fun onConnectionStateChanged(state: ConnectionState, reason: StateReason) = record("state", state, reason)
    override fun onProxyConnected(proxyType: ProxyType, elapsedMs: ULong) = record("proxy_connected", proxyType, elapsedMs)
    override fun onUserJoined(uid: UInt) = record("user_joined", uid)
    override fun onUserLeft(uid: UInt) = record("user_left", uid)
    override fun onMessage(uid: UInt?, payload: ByteArray) = record("message", uid, String(payload))
    override fun onMedia(uid: UInt?, payload: ByteArray) = record("media", uid, String(payload))
    override fun onWarning(kind: WarningKind, message: String) = record("warning", kind, message)

    fun waitFor(what: String, timeoutMs: Long = WAIT_MS, predicate: (List<Any?>) -> Boolean): Boolean {
        val deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMs)
        lock.withLock {
            while (seen.none(predicate)) {
                val left = deadline - System.nanoTime()
                if (left <= 0) return false
                changed.awaitNanos(left)
            }
        }
        return true
    }

    fun expect(what: String, predicate: (List<Any?>) -> Boolean) =
        check(waitFor(what, WAIT_MS, predicate)) { "$name: no $what within $WAIT_MS ms; seen ${lock.withLock { seen.toList() }}" }
}

/** This thread's Linux thread id (`/proc/thread-self` is `<pid>/task/<tid>`). */
fun nativeThreadId(): String =
    java.nio.file.Files.readSymbolicLink(java.nio.file.Paths.get("/proc/thread-self")).toString()

fun env(key: String): String = System.getenv(key) ?: run {
    check(false) { "$key is not set: run under the loopback rig" }
    ""
}

fun engine(name: String): Pair<CloudProxyEngine, Recorder> {
    val recorder = Recorder(name)
    val config = EngineConfig(
        appId = env("CLOUDPROXY_APP_ID"),
        credentialHex = env("CLOUDPROXY_CREDENTIAL"),
        mediaTcp = env("CLOUDPROXY_MEDIA_TCP"),
        mediaUdp = env("CLOUDPROXY_MEDIA_UDP"),
        defaultProxyDomain = "localhost",
    )
    val engine = CloudProxyEngine(config, recorder)
    // The guide's two lines: enable, then the server (here the rig's).
    engine.setParameters("{\"rtc.enable_proxy\":true}")
    engine.setParameters(
        "{\"rtc.proxy_server\":[2, \"[\\\"${env("CLOUDPROXY_PROXY_IP")}\\\"]\", ${env("CLOUDPROXY_PROXY_PORT")}]}"
    )
    return engine to recorder
}

fun main() {
    val (alice, a) = engine("alice")
    val (bob, b) = engine("bob")
    check(alice.parameter("rtc.enable_proxy") == "true") { "rtc.enable_proxy" }

    try {
        alice.setParameters("{\"rtc.enable_proxy\":tru}")
        check(false) { "bad JSON accepted" }
    } catch (e: CloudProxyException.InvalidParameters) {
        println("Kotlin: typed error ${e.javaClass.simpleName}: ${e.message}")
    }

    alice.joinChannel("guide", 1u)
    bob.joinChannel("guide", 2u)
    a.expect("Connecting") { it == listOf("state", ConnectionState.CONNECTING, StateReason.JOINING) }
    a.expect("onProxyConnected") { it[0] == "proxy_connected" && it[1] == ProxyType.UDP }
    a.expect("Connected") { it == listOf("state", ConnectionState.CONNECTED, StateReason.JOINED) }
    a.expect("bob joining") { it == listOf("user_joined", 2u) }

    // The guide: parameters only before joining or after leaving.
    try {
        alice.setParameters("{\"rtc.enable_proxy\":false}")
        check(false) { "set_parameters accepted in a channel" }
    } catch (e: CloudProxyException.InvalidState) {
        println("Kotlin: typed error ${e.javaClass.simpleName}: ${e.message}")
    }

    val texts = listOf("hello bob", "through the cloud proxy", "in order, exactly once")
    texts.forEach { alice.sendMessage(it.toByteArray()) }
    b.expect("3 messages") { it == listOf("message", 1u, texts.last()) }
    val got = synchronized(b) { b.seen.filter { it[0] == "message" }.map { it[2] } }
    check(got == texts) { "messages in order: $got" }

    // Media is unreliable: send until a datagram arrives.
    for (i in 0 until 1000) {
        bob.sendMedia("an RTP packet".toByteArray())
        if (a.waitFor("media", 20) { it[0] == "media" }) break
    }
    a.expect("media from bob") { it == listOf("media", 2u, "an RTP packet") }

    bob.leaveChannel()
    a.expect("bob leaving") { it == listOf("user_left", 2u) }
    alice.leaveChannel()
    alice.release()
    bob.close()
    val left = listOf("state", ConnectionState.DISCONNECTED, StateReason.LEFT)
    check(a.seen.contains(left) && b.seen.contains(left)) { "Disconnected/Left delivered before release returned" }
    try {
        alice.sendMessage("late".toByteArray())
        check(false) { "a released engine accepted a call" }
    } catch (e: CloudProxyException.Destroyed) {
    }
    alice.close()
    for (r in listOf(a, b)) {
        check(r.threads.size == 1 && nativeThreadId() !in r.threads) { "callback threads ${r.threads}" }
    }
    val elapsed = a.seen.first { it[0] == "proxy_connected" }[2]
    println("Kotlin: the guide's flow passed (onProxyConnected over UDP in $elapsed ms; 3 messages; media; callbacks on one event thread, not the caller's)")
}
