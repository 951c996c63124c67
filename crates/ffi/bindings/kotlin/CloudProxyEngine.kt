// Hand-written; compile it with the file UniFFI generates (same package,
// same module). It is the `CloudProxyEngine` apps use, over the generated
// class (renamed `GeneratedCloudProxyEngine` in crates/ffi/uniffi.toml), and
// adds what the generator cannot: `close()` is `release()`, the event thread
// stays attached to the JVM, and text Kotlin cannot encode fails with the
// SDK's exception. See docs/sdk-kotlin.md.

package uniffi.cloudproxy_ffi

import com.sun.jna.CallbackThreadInitializer
import com.sun.jna.Native
import java.nio.charset.CharacterCodingException

/**
 * A cloud proxy engine (the guide's `RtcEngine`): set the proxy up with the
 * guide's strings, join a channel, send messages and media; events go to
 * the [EngineEventHandler] given here, on the engine's one event thread
 * (a `Thread` named `cloudproxy-events`, the same object for every
 * callback of the engine's life).
 *
 * Every method blocks until done. [release], [close] and [destroy] are the
 * guide's `destroy`; afterwards every call throws
 * [CloudProxyException.Destroyed].
 */
class CloudProxyEngine(config: EngineConfig, handler: EngineEventHandler) : AutoCloseable {
    private val generated: GeneratedCloudProxyEngine

    init {
        EventThread.keepAttached()
        generated = text("config") { GeneratedCloudProxyEngine(config, handler) }
    }

    /** Applies a parameter string from the guide, verbatim (`setParameters`). */
    fun setParameters(parameters: String) = text("parameters") { generated.setParameters(parameters) }

    /** Selects how the media network is reached (`setCloudProxy`). */
    fun setCloudProxy(mode: ProxyMode) = generated.setCloudProxy(mode)

    /** A parameter's current value as JSON; `null` when never set or after release. */
    fun parameter(key: String): String? = text("key") { generated.parameter(key) }

    /** Joins [channel] as [uid]; returns once joined (`joinChannel`). */
    fun joinChannel(channel: String, uid: UInt) = text("channel") { generated.joinChannel(channel, uid) }

    /** Sends a reliable message to the channel. */
    fun sendMessage(payload: ByteArray) = generated.sendMessage(payload)

    /** Sends a media datagram (unreliable). */
    fun sendMedia(payload: ByteArray) = generated.sendMedia(payload)

    /** Leaves the channel (`leaveChannel`). */
    fun leaveChannel() = generated.leaveChannel()

    /**
     * The guide's `destroy`: ends a join blocked on another thread (it
     * throws [CloudProxyException.Destroyed]), leaves, delivers the queued
     * events and ends the event thread. Idempotent.
     */
    fun release() = generated.release()

    /** The same as [release] (the guide's name). */
    fun destroy() = release()

    /**
     * The same as [release], for `use {}`. The native object itself is freed
     * when this one is garbage-collected, so a late call still gets
     * [CloudProxyException.Destroyed] rather than an `IllegalStateException`.
     */
    override fun close() = release()
}

/**
 * Runs [call], turning a string Kotlin cannot encode as UTF-8 (a lone
 * surrogate) into the SDK's [CloudProxyException.InvalidArgument].
 */
private fun <T> text(what: String, call: () -> T): T =
    try {
        call()
    } catch (e: CharacterCodingException) {
        throw CloudProxyException.InvalidArgument(
            "$what: expected text that is valid UTF-16 (every surrogate paired), " +
                "found an unpaired surrogate that UTF-8 cannot encode (${e.javaClass.simpleName})",
        )
    }

/**
 * JNA attaches a native thread to the JVM for each callback and detaches it
 * after, so each callback would see a new `Thread` (no ThreadLocal, no
 * Looper, an attach per media packet). Registered once for every callback
 * of the handler interface: the event thread is attached on its first
 * callback, as a daemon named `cloudproxy-events`, and stays attached until
 * it ends with its engine.
 */
private object EventThread {
    private val initializer = CallbackThreadInitializer(true, false, "cloudproxy-events")

    fun keepAttached() {
        // Touching the object runs its initializer, once.
    }

    init {
        val callbacks = listOf(
            uniffiCallbackInterfaceEngineEventHandler.onConnectionStateChanged,
            uniffiCallbackInterfaceEngineEventHandler.onProxyConnected,
            uniffiCallbackInterfaceEngineEventHandler.onUserJoined,
            uniffiCallbackInterfaceEngineEventHandler.onUserLeft,
            uniffiCallbackInterfaceEngineEventHandler.onMessage,
            uniffiCallbackInterfaceEngineEventHandler.onMedia,
            uniffiCallbackInterfaceEngineEventHandler.onWarning,
            uniffiCallbackInterfaceEngineEventHandler.uniffiFree,
            uniffiCallbackInterfaceEngineEventHandler.uniffiClone,
        )
        for (callback in callbacks) {
            Native.setCallbackThreadInitializer(callback, initializer)
        }
    }
}
