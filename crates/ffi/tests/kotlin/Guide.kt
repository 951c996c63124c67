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
    // Native thread ids, and the Java `Thread` objects: the SDK keeps its
    // event thread attached to the JVM, so both are one per engine.
    val threads = mutableSetOf<String>()
    val javaThreads: MutableSet<Thread> = java.util.Collections.newSetFromMap(java.util.IdentityHashMap())
    // Throw from the next state callback, as an app bug would.
    @Volatile var throwOnState = false

    private fun record(vararg event: Any?) {
        lock.withLock {
            threads.add(nativeThreadId())
            javaThreads.add(Thread.currentThread())
            seen.add(event.toList())
            changed.signalAll()
            if (event[0] != "media" || seen.count { it[0] == "media" } == 1) {
                println("Kotlin: $name ${event.toList()}")
            }
        }
    }

    override fun onConnectionStateChanged(state: ConnectionState, reason: StateReason) {
        if (throwOnState) {
            throwOnState = false
            throw RuntimeException("app bug in callback")
        }
        record("state", state, reason)
    }
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

fun engine(name: String, throwOnFirstState: Boolean = false): Pair<CloudProxyEngine, Recorder> {
    val recorder = Recorder(name)
    recorder.throwOnState = throwOnFirstState
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
    // close() is release(): a later call is the SDK's Destroyed.
    try {
        bob.sendMessage("late".toByteArray())
        check(false) { "a closed engine accepted a call" }
    } catch (e: CloudProxyException.Destroyed) {
        println("Kotlin: after close(): ${e.javaClass.simpleName}: ${e.message}")
    }
    alice.close()
    for (r in listOf(a, b)) {
        check(r.threads.size == 1 && nativeThreadId() !in r.threads) { "callback threads ${r.threads}" }
        check(r.javaThreads.size == 1) { "callbacks on ${r.javaThreads.size} Thread objects: ${r.javaThreads.map { it.name }}" }
        val thread = r.javaThreads.single()
        check(thread.name == "cloudproxy-events") { "callbacks on Thread ${thread.name}" }
    }
    println("Kotlin: ${a.seen.size} callbacks of alice on one Thread object, ${a.javaThreads.single().name}")
    aThrowingCallbackThenEventsStillDelivered()
    aLoneSurrogateIsTheSdksError()
    closeDuringAJoinOnAnotherThread()
    val elapsed = a.seen.first { it[0] == "proxy_connected" }[2]
    println("Kotlin: the guide's flow passed (onProxyConnected over UDP in $elapsed ms; 3 messages; media; callbacks on one event thread, not the caller's)")
}

fun aThrowingCallbackThenEventsStillDelivered() {
    val (carol, c) = engine("carol", throwOnFirstState = true)
    carol.joinChannel("throwing", 3u)
    c.expect("the failure reported") { it[0] == "warning" && it[1] == WarningKind.CALLBACK_FAILED }
    c.expect("Connected after the failure") { it == listOf("state", ConnectionState.CONNECTED, StateReason.JOINED) }
    val (dave, _) = engine("dave")
    dave.joinChannel("throwing", 4u)
    c.expect("dave joining") { it == listOf("user_joined", 4u) }
    dave.sendMessage("after the failure".toByteArray())
    c.expect("a message") { it == listOf("message", 4u, "after the failure") }
    dave.close()
    carol.leaveChannel()
    carol.close()
    check(c.seen.contains(listOf("state", ConnectionState.DISCONNECTED, StateReason.LEFT))) { "no Left after the failure: ${c.seen}" }
    val warning = c.seen.first { it[0] == "warning" }
    check((warning[2] as String).contains("app bug in callback")) { "warning $warning" }
    println("Kotlin: a throwing callback was reported and events went on")
}

fun aLoneSurrogateIsTheSdksError() {
    val (erin, _) = engine("erin")
    try {
        erin.joinChannel("room\uD800", 5u)
        check(false) { "a lone surrogate was accepted" }
    } catch (e: CloudProxyException.InvalidArgument) {
        println("Kotlin: lone surrogate: ${e.javaClass.simpleName}: ${e.message}")
    }
    erin.close()
}

fun closeDuringAJoinOnAnotherThread() {
    // A proxy that accepts and never answers: the join blocks.
    java.net.ServerSocket(0, 50, java.net.InetAddress.getByName("127.0.0.1")).use { silent ->
        val (frank, f) = engine("frank")
        frank.setCloudProxy(ProxyMode.ON)
        frank.setParameters("{\"rtc.proxy_server\":[2, \"[\\\"127.0.0.1\\\"]\", ${silent.localPort}]}")
        val outcome = java.util.concurrent.atomic.AtomicReference<Any?>()
        val joiner = Thread {
            try {
                frank.joinChannel("silent", 6u)
                outcome.set("joined")
            } catch (e: Exception) {
                outcome.set(e)
            }
        }
        joiner.start()
        f.expect("Connecting") { it == listOf("state", ConnectionState.CONNECTING, StateReason.JOINING) }
        frank.close()
        joiner.join(WAIT_MS)
        check(!joiner.isAlive) { "the join still blocks after close()" }
        check(outcome.get() is CloudProxyException.Destroyed) { "join after close(): ${outcome.get()}" }
        println("Kotlin: close() during a join: ${(outcome.get() as Exception).message}")
    }
}
