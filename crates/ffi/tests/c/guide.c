/*
 * The guide's flow from C, against the loopback rig (`cargo run -p
 * cloudproxy-ffi --example loopback_rig`, whose KEY=value lines are this
 * program's environment): two engines enable the proxy with the guide's
 * strings, join one channel, exchange messages and media, see
 * onProxyConnected, leave and are destroyed. `cargo xtask ci` runs it under
 * valgrind; it exits non-zero on the first failed check.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cloudproxy.h"

#define WAIT_SECONDS 20

#define CHECK(cond, ...)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "C: FAILED %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                    \
            fprintf(stderr, "\n");                                           \
            exit(1);                                                         \
        }                                                                    \
    } while (0)

typedef struct {
    const char *name;
    pthread_t caller;
    pthread_mutex_t lock;
    pthread_cond_t changed;
    int connecting, connected, left;
    int proxy_connected;
    CpProxyType proxy_type;
    uint64_t proxy_elapsed_ms;
    uint32_t joined_uid, left_uid;
    int messages;
    char text[256];
    int media;
    uint32_t media_uid;
    int event_thread_known, misplaced;
    pthread_t event_thread;
} App;

/* Every callback: the event thread, never the caller's, always the same. */
static void on_event_thread(App *app) {
    pthread_t self = pthread_self();
    if (pthread_equal(self, app->caller)) {
        app->misplaced++;
    }
#ifdef __linux__
    /* Linux keeps 15 bytes of "cloudproxy-events". */
    char name[16] = {0};
    pthread_getname_np(self, name, sizeof name);
    if (strncmp(name, "cloudproxy-ev", 13) != 0) {
        app->misplaced++;
    }
#endif
    if (!app->event_thread_known) {
        app->event_thread = self;
        app->event_thread_known = 1;
    } else if (!pthread_equal(self, app->event_thread)) {
        app->misplaced++;
    }
}

static void on_state(void *user_data, CpConnectionState state, CpStateReason reason) {
    App *app = user_data;
    pthread_mutex_lock(&app->lock);
    on_event_thread(app);
    printf("C: %s onConnectionStateChanged(state=%u, reason=%u)\n", app->name, state, reason);
    if (state == CP_CONNECTION_STATE_CONNECTING && reason == CP_STATE_REASON_JOINING) app->connecting++;
    if (state == CP_CONNECTION_STATE_CONNECTED && reason == CP_STATE_REASON_JOINED) app->connected++;
    if (state == CP_CONNECTION_STATE_DISCONNECTED && reason == CP_STATE_REASON_LEFT) app->left++;
    pthread_cond_broadcast(&app->changed);
    pthread_mutex_unlock(&app->lock);
}

static void on_proxy_connected(void *user_data, CpProxyType proxy_type, uint64_t elapsed_ms) {
    App *app = user_data;
    pthread_mutex_lock(&app->lock);
    on_event_thread(app);
    printf("C: %s onProxyConnected(type=%s, elapsed=%llu ms)\n", app->name,
           proxy_type == CP_PROXY_TYPE_UDP ? "UDP" : "TCP", (unsigned long long)elapsed_ms);
    app->proxy_connected++;
    app->proxy_type = proxy_type;
    app->proxy_elapsed_ms = elapsed_ms;
    pthread_cond_broadcast(&app->changed);
    pthread_mutex_unlock(&app->lock);
}

static void on_user_joined(void *user_data, uint32_t uid) {
    App *app = user_data;
    pthread_mutex_lock(&app->lock);
    on_event_thread(app);
    printf("C: %s onUserJoined(uid=%u)\n", app->name, uid);
    app->joined_uid = uid;
    pthread_cond_broadcast(&app->changed);
    pthread_mutex_unlock(&app->lock);
}

static void on_user_left(void *user_data, uint32_t uid) {
    App *app = user_data;
    pthread_mutex_lock(&app->lock);
    on_event_thread(app);
    printf("C: %s onUserLeft(uid=%u)\n", app->name, uid);
    app->left_uid = uid;
    pthread_cond_broadcast(&app->changed);
    pthread_mutex_unlock(&app->lock);
}

static void on_message(void *user_data, uint32_t uid, bool uid_known, const uint8_t *data, size_t len) {
    App *app = user_data;
    pthread_mutex_lock(&app->lock);
    on_event_thread(app);
    printf("C: %s onMessage(uid=%u, \"%.*s\")\n", app->name, uid_known ? uid : 0, (int)len, (const char *)data);
    size_t used = strlen(app->text);
    if (used + len + 2 < sizeof app->text) {
        memcpy(app->text + used, data, len);
        app->text[used + len] = '|';
        app->text[used + len + 1] = '\0';
    }
    app->messages++;
    pthread_cond_broadcast(&app->changed);
    pthread_mutex_unlock(&app->lock);
}

static void on_media(void *user_data, uint32_t uid, bool uid_known, const uint8_t *data, size_t len) {
    App *app = user_data;
    (void)data;
    pthread_mutex_lock(&app->lock);
    on_event_thread(app);
    if (app->media == 0) {
        printf("C: %s onMedia(uid=%u, %zu bytes)\n", app->name, uid_known ? uid : 0, len);
    }
    app->media++;
    app->media_uid = uid;
    pthread_cond_broadcast(&app->changed);
    pthread_mutex_unlock(&app->lock);
}

static void on_warning(void *user_data, CpWarningKind kind, const char *message) {
    App *app = user_data;
    pthread_mutex_lock(&app->lock);
    on_event_thread(app);
    printf("C: %s onWarning(%u, %s)\n", app->name, kind, message);
    pthread_mutex_unlock(&app->lock);
}

/* Waits (with the lock held by the caller) until `cond` holds, at most
 * `ms` milliseconds; returns whether it holds. */
#define WAIT_UNTIL(app, cond, ms)                                                    \
    ({                                                                               \
        struct timespec deadline;                                                    \
        clock_gettime(CLOCK_REALTIME, &deadline);                                    \
        long long ns = deadline.tv_nsec + (long long)(ms) * 1000000LL;               \
        deadline.tv_sec += ns / 1000000000LL;                                        \
        deadline.tv_nsec = ns % 1000000000LL;                                        \
        int timed_out = 0;                                                           \
        while (!(cond) && !timed_out) {                                              \
            timed_out = pthread_cond_timedwait(&(app)->changed, &(app)->lock, &deadline) == ETIMEDOUT; \
        }                                                                            \
        (cond);                                                                      \
    })

static const char *env(const char *key) {
    const char *value = getenv(key);
    CHECK(value != NULL && *value, "%s is not set: run under the loopback rig", key);
    return value;
}

static CpEngine *create(App *app, const char *name, CpError *err) {
    memset(app, 0, sizeof *app);
    app->name = name;
    app->caller = pthread_self();
    pthread_mutex_init(&app->lock, NULL);
    pthread_cond_init(&app->changed, NULL);
    CpEngineConfig config = {
        .app_id = env("CLOUDPROXY_APP_ID"),
        .credential_hex = env("CLOUDPROXY_CREDENTIAL"),
        .media_tcp = env("CLOUDPROXY_MEDIA_TCP"),
        .media_udp = env("CLOUDPROXY_MEDIA_UDP"),
        .default_proxy_domain = "localhost",
    };
    CpEventHandler handler = {
        .user_data = app,
        .on_connection_state_changed = on_state,
        .on_proxy_connected = on_proxy_connected,
        .on_user_joined = on_user_joined,
        .on_user_left = on_user_left,
        .on_message = on_message,
        .on_media = on_media,
        .on_warning = on_warning,
    };
    CpEngine *engine = NULL;
    CpErrorCode code = cloudproxy_engine_create(&config, &handler, &engine, err);
    CHECK(code == CP_ERROR_CODE_OK && engine != NULL, "create: %d %s", code, err->message);

    /* The guide's two lines: enable, then the server (here the rig's). */
    code = cloudproxy_engine_set_parameters(engine, "{\"rtc.enable_proxy\":true}", err);
    CHECK(code == CP_ERROR_CODE_OK, "enable: %s", err->message);
    char server[128];
    snprintf(server, sizeof server, "{\"rtc.proxy_server\":[2, \"[\\\"%s\\\"]\", %s]}",
             env("CLOUDPROXY_PROXY_IP"), env("CLOUDPROXY_PROXY_PORT"));
    code = cloudproxy_engine_set_parameters(engine, server, err);
    CHECK(code == CP_ERROR_CODE_OK, "server %s: %s", server, err->message);
    return engine;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    CpError err = {0};
    App alice, bob;
    CpEngine *a = create(&alice, "alice", &err);
    CpEngine *b = create(&bob, "bob", &err);

    char *enabled = cloudproxy_engine_parameter(a, "rtc.enable_proxy");
    CHECK(enabled != NULL && strcmp(enabled, "true") == 0, "rtc.enable_proxy is %s", enabled);
    cloudproxy_string_free(enabled);

    /* A typed error with its message. */
    CpErrorCode code = cloudproxy_engine_set_parameters(a, "{\"rtc.enable_proxy\":tru}", &err);
    CHECK(code == CP_ERROR_CODE_INVALID_PARAMETERS && err.code == code && err.message != NULL,
          "bad JSON gave %d", code);
    printf("C: typed error %d: %s\n", err.code, err.message);
    code = cloudproxy_engine_set_cloud_proxy(a, 42, &err);
    CHECK(code == CP_ERROR_CODE_INVALID_ARGUMENT, "mode 42 gave %d", code);

    code = cloudproxy_engine_join_channel(a, "guide", 1, &err);
    CHECK(code == CP_ERROR_CODE_OK, "alice joins: %s", err.message);
    CHECK(err.message == NULL, "a success clears the message");
    code = cloudproxy_engine_join_channel(b, "guide", 2, &err);
    CHECK(code == CP_ERROR_CODE_OK, "bob joins: %s", err.message);

    pthread_mutex_lock(&alice.lock);
    CHECK(WAIT_UNTIL(&alice, alice.connecting && alice.proxy_connected && alice.connected, WAIT_SECONDS * 1000),
          "alice: Connecting, onProxyConnected, Connected");
    CHECK(alice.proxy_type == CP_PROXY_TYPE_UDP, "media over UDP");
    CHECK(WAIT_UNTIL(&alice, alice.joined_uid == 2, WAIT_SECONDS * 1000), "alice sees bob join");
    pthread_mutex_unlock(&alice.lock);

    /* The guide: parameters only before joining or after leaving. */
    code = cloudproxy_engine_set_parameters(a, "{\"rtc.enable_proxy\":false}", &err);
    CHECK(code == CP_ERROR_CODE_INVALID_STATE, "in a channel gave %d", code);
    printf("C: typed error %d: %s\n", err.code, err.message);

    const char *texts[] = {"hello bob", "through the cloud proxy", "in order, exactly once"};
    for (int i = 0; i < 3; i++) {
        code = cloudproxy_engine_send_message(a, (const uint8_t *)texts[i], strlen(texts[i]), &err);
        CHECK(code == CP_ERROR_CODE_OK, "send_message: %s", err.message);
    }
    pthread_mutex_lock(&bob.lock);
    CHECK(WAIT_UNTIL(&bob, bob.messages == 3, WAIT_SECONDS * 1000), "bob gets 3 messages (%d)", bob.messages);
    CHECK(strcmp(bob.text, "hello bob|through the cloud proxy|in order, exactly once|") == 0, "in order: %s",
          bob.text);
    pthread_mutex_unlock(&bob.lock);

    /* Media is unreliable: send until a datagram arrives. */
    const char rtp[] = "an RTP packet";
    pthread_mutex_lock(&alice.lock);
    for (int i = 0; i < WAIT_SECONDS * 50 && alice.media == 0; i++) {
        pthread_mutex_unlock(&alice.lock);
        code = cloudproxy_engine_send_media(b, (const uint8_t *)rtp, strlen(rtp), &err);
        CHECK(code == CP_ERROR_CODE_OK, "send_media: %s", err.message);
        pthread_mutex_lock(&alice.lock);
        WAIT_UNTIL(&alice, alice.media > 0, 20);
    }
    CHECK(alice.media > 0 && alice.media_uid == 2, "alice gets bob's media");
    pthread_mutex_unlock(&alice.lock);

    code = cloudproxy_engine_leave_channel(b, &err);
    CHECK(code == CP_ERROR_CODE_OK, "bob leaves: %s", err.message);
    pthread_mutex_lock(&alice.lock);
    CHECK(WAIT_UNTIL(&alice, alice.left_uid == 2, WAIT_SECONDS * 1000), "alice sees bob leave");
    pthread_mutex_unlock(&alice.lock);
    code = cloudproxy_engine_leave_channel(a, &err);
    CHECK(code == CP_ERROR_CODE_OK, "alice leaves: %s", err.message);

    cloudproxy_engine_destroy(a);
    cloudproxy_engine_destroy(b);
    /* Destroy delivered everything queued and ended the event threads. */
    CHECK(alice.left == 1 && bob.left == 1, "Disconnected/Left before destroy returned");
    CHECK(alice.misplaced == 0 && bob.misplaced == 0, "callbacks only on the event thread (%d, %d)",
          alice.misplaced, bob.misplaced);
    cloudproxy_error_free(&err);
    pthread_mutex_destroy(&alice.lock);
    pthread_cond_destroy(&alice.changed);
    pthread_mutex_destroy(&bob.lock);
    pthread_cond_destroy(&bob.changed);
    printf("C: the guide's flow passed (onProxyConnected over %s in %llu ms; 3 messages; media; callbacks on one "
           "event thread, not the caller's)\n",
           alice.proxy_type == CP_PROXY_TYPE_UDP ? "UDP" : "TCP", (unsigned long long)alice.proxy_elapsed_ms);
    return 0;
}
