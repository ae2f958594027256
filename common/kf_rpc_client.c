/* The Connect client on nghttp2 (HTTP/2 framing, HPACK, flow control) over an OpenSSL TLS 1.3
 * connection with blocking-style I/O bounded by poll(). libcurl did this before; its Debian
 * dependency tree (gnutls, krb5, ldap, ssh2, rtmp...) cost 9 ms of the agent's 15 ms start-up
 * budget on its own (docs/performance.md), and nghttp2 is the HTTP/2 library libcurl used. */
#include "kf_time.h"
#include "kf_rpc_client.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "kf_hostport.h"
#include "kf_secmem.h"
#include "kf_tls.h"
#include "kf_tpmkey.h"

#define RESPONSE_MAX (16u << 20)
#define MAX_REDIRECTS 2
#define LEADER_MAX 128

typedef struct conn {
    int fd;
    SSL *ssl;
    nghttp2_session *h2;
    size_t server; /* index into servers */
} conn;

struct kf_rpc_client {
    SSL_CTX *ctx;
    char **servers;
    size_t n_servers;
    size_t n_configured; /* servers[0..n_configured) came from the caller; the rest from hints */
    size_t current; /* the server that answered last; tried first */
    long timeout_ms;
    bool has_cert; /* presents a client certificate */
    kf_secbuf *bearer; /* "Bearer TOKEN" */
    conn *conn;        /* the one long-lived connection, or NULL */
    bool pinned;       /* the next call must use conn as it is (kf_rpc_client_export) */
    bool tpm_released; /* the TPM key was let go of: no new connections */
};

/* One request/response exchange on a stream. */
typedef struct call {
    const uint8_t *body;
    size_t body_len, body_off;
    int32_t stream_id;
    long status;
    char ctype[128];
    char leader[LEADER_MAX]; /* the keyfleet-leader header of the answer, if any */
    char *data;
    size_t len;
    bool overflow, closed, got_headers;
    uint32_t reset_code;
} call;

/* Waits for events on fd until deadline; -ETIMEDOUT when it passes. */
static int wait_fd(int fd, short events, uint64_t deadline)
{
    for (;;) {
        uint64_t now = kf_monotonic_ms();
        if (now >= deadline)
            return -ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, (int)(deadline - now));
        if (r > 0)
            return 0;
        if (r < 0 && errno != EINTR)
            return -errno;
    }
}

static const char *ssl_reason(void)
{
    static _Thread_local char buf[256];
    unsigned long e = ERR_peek_last_error();
    if (e == 0)
        return "connection closed";
    ERR_error_string_n(e, buf, sizeof(buf));
    ERR_clear_error();
    return buf;
}

static void conn_free(conn *k)
{
    if (k == NULL)
        return;
    nghttp2_session_del(k->h2);
    if (k->ssl != NULL)
        SSL_free(k->ssl);
    if (k->fd >= 0)
        close(k->fd);
    free(k);
}

static void drop_conn(kf_rpc_client *c)
{
    conn_free(c->conn);
    c->conn = NULL;
}

static int tcp_connect(const char *server, const char *host, const char *port, uint64_t deadline, kf_err *err)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *ai = NULL;
    int g = getaddrinfo(host, port, &hints, &ai);
    if (g != 0)
        return kf_err_set(err, -EHOSTUNREACH, "%s: cannot resolve: %s", server, gai_strerror(g));
    int r = -ECONNREFUSED;
    for (struct addrinfo *a = ai; a != NULL; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            r = -errno;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) {
            r = -errno;
            close(fd);
            continue;
        }
        int soerr = 0;
        socklen_t sl = sizeof(soerr);
        r = wait_fd(fd, POLLOUT, deadline);
        if (r == 0 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
            freeaddrinfo(ai);
            return fd;
        }
        if (r == 0)
            r = -(soerr != 0 ? soerr : ECONNREFUSED);
        close(fd);
        if (r == -ETIMEDOUT)
            break;
    }
    freeaddrinfo(ai);
    return kf_err_set(err, r, "%s: connect: %s", server, strerror(-r));
}

/* The alert a coordinator sent about this client's certificate, as words; set by ssl_step when
 * it returns -EKEYREJECTED. In TLS 1.3 the server judges the client's certificate after the
 * client's side of the handshake is done, so the alert arrives on the first read, where it would
 * otherwise read as "connection lost: Protocol error". */
static _Thread_local const char *peer_alert;

static const char *certificate_alert(unsigned long e)
{
    if (ERR_GET_LIB(e) != ERR_LIB_SSL)
        return NULL;
    switch (ERR_GET_REASON(e)) {
    case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
        return "expired";
    case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
        return "revoked";
    case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
        return "not issued by its fleet CA (unknown CA)";
    case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
        return "bad certificate";
    case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
        return "unsupported certificate";
    case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
        return "certificate unknown";
    case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
        return "a client certificate is required";
    default:
        return NULL;
    }
}

/* Drives a non-blocking TLS call: >0 done, 0 to call again, <0 failed (-EKEYREJECTED: the peer
 * refused this side's certificate, peer_alert says how). */
static int ssl_step(SSL *ssl, int fd, int ret, uint64_t deadline)
{
    if (ret > 0)
        return ret;
    int e = SSL_get_error(ssl, ret);
    if (e == SSL_ERROR_WANT_READ)
        return wait_fd(fd, POLLIN, deadline);
    if (e == SSL_ERROR_WANT_WRITE)
        return wait_fd(fd, POLLOUT, deadline);
    if (e == SSL_ERROR_ZERO_RETURN)
        return -ECONNRESET;
    if (e == SSL_ERROR_SSL && (peer_alert = certificate_alert(ERR_peek_last_error())) != NULL)
        return -EKEYREJECTED;
    if (e == SSL_ERROR_SSL && ERR_GET_REASON(ERR_peek_last_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
        return -ECONNABORTED; /* closed without close_notify or an alert */
    return e == SSL_ERROR_SYSCALL && errno != 0 ? -errno : -EPROTO;
}

static int ssl_write_all(conn *k, const uint8_t *p, size_t n, uint64_t deadline)
{
    while (n > 0) {
        ERR_clear_error();
        int w = SSL_write(k->ssl, p, n > (1u << 30) ? (int)(1u << 30) : (int)n);
        int r = ssl_step(k->ssl, k->fd, w, deadline);
        if (r < 0)
            return r;
        if (w > 0) {
            p += w;
            n -= (size_t)w;
        }
    }
    return 0;
}

/* Writes everything nghttp2 has queued. */
static int flush_out(conn *k, uint64_t deadline)
{
    for (;;) {
        const uint8_t *out = NULL;
        ssize_t n = nghttp2_session_mem_send(k->h2, &out);
        if (n < 0)
            return -EPROTO;
        if (n == 0)
            return 0;
        int r = ssl_write_all(k, out, (size_t)n, deadline);
        /* The frames held a request body (an AppRole secret id) and the bearer token; nghttp2's
         * buffer is its own heap, done with once sent. */
        kf_wipe((void *)out, (size_t)n);
        if (r < 0)
            return r;
    }
}

static int on_header(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                     const uint8_t *value, size_t valuelen, uint8_t flags, void *user)
{
    (void)flags;
    call *x = nghttp2_session_get_stream_user_data(s, frame->hd.stream_id);
    (void)user;
    if (x == NULL || frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    if (namelen == 7 && memcmp(name, ":status", 7) == 0 && valuelen == 3) {
        long st = strtol((const char *)value, NULL, 10);
        if (st >= 200) { /* 1xx answers are interim */
            x->status = st;
            x->got_headers = true;
        }
    } else if (namelen == 12 && memcmp(name, "content-type", 12) == 0 && valuelen < sizeof(x->ctype)) {
        memcpy(x->ctype, value, valuelen);
        x->ctype[valuelen] = '\0';
    } else if (namelen == 15 && memcmp(name, "keyfleet-leader", 15) == 0) {
        bool ok = valuelen > 0 && valuelen < sizeof(x->leader) && memchr(value, ':', valuelen) != NULL;
        for (size_t i = 0; ok && i < valuelen; i++) {
            char ch = (char)value[i];
            ok = (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '.' ||
                 ch == '-' || ch == ':' || ch == '[' || ch == ']';
        }
        if (ok) {
            memcpy(x->leader, value, valuelen);
            x->leader[valuelen] = '\0';
        }
    }
    return 0;
}

static int on_data(nghttp2_session *s, uint8_t flags, int32_t stream_id, const uint8_t *data, size_t len, void *user)
{
    (void)flags, (void)user;
    call *x = nghttp2_session_get_stream_user_data(s, stream_id);
    if (x == NULL)
        return 0;
    if (x->len + len > RESPONSE_MAX) {
        x->overflow = true;
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    char *d = realloc(x->data, x->len + len + 1);
    if (d == NULL)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    memcpy(d + x->len, data, len);
    x->data = d;
    x->len += len;
    d[x->len] = '\0';
    return 0;
}

static int on_close(nghttp2_session *s, int32_t stream_id, uint32_t error_code, void *user)
{
    (void)user;
    call *x = nghttp2_session_get_stream_user_data(s, stream_id);
    if (x != NULL) {
        x->closed = true;
        x->reset_code = error_code;
    }
    return 0;
}

static ssize_t read_body(nghttp2_session *s, int32_t stream_id, uint8_t *buf, size_t length, uint32_t *data_flags,
                         nghttp2_data_source *source, void *user)
{
    (void)s, (void)stream_id, (void)user;
    call *x = source->ptr;
    size_t n = x->body_len - x->body_off;
    if (n > length)
        n = length;
    if (n > 0)
        memcpy(buf, x->body + x->body_off, n);
    x->body_off += n;
    if (x->body_off == x->body_len)
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static int open_conn(kf_rpc_client *c, size_t server, uint64_t deadline, kf_err *err)
{
    const char *name = c->servers[server];
    if (c->tpm_released)
        return kf_err_set(err, -ENOKEY, "%s: the client's TPM key was released; a new client must connect", name);
    char host[256], port[16];
    if (!kf_hostport_split(name, host, sizeof(host), port, sizeof(port)))
        return kf_err_set(err, -EINVAL, "%s: not host:port", name);
    conn *k = calloc(1, sizeof(*k));
    if (k == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    k->server = server;
    k->fd = tcp_connect(name, host, port, deadline, err);
    if (k->fd < 0) {
        int r = k->fd;
        k->fd = -1;
        conn_free(k);
        return r;
    }
    int r;
    struct in6_addr ip;
    bool is_ip = inet_pton(AF_INET, host, &ip) == 1 || inet_pton(AF_INET6, host, &ip) == 1;
    if ((k->ssl = SSL_new(c->ctx)) == NULL || SSL_set_fd(k->ssl, k->fd) != 1 ||
        (is_ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(k->ssl), host) != 1
               : SSL_set1_host(k->ssl, host) != 1 || SSL_set_tlsext_host_name(k->ssl, host) != 1)) {
        r = kf_err_set(err, -ENOMEM, "%s: TLS setup: %s", name, ssl_reason());
        goto fail;
    }
    for (;;) {
        ERR_clear_error();
        int ret = SSL_connect(k->ssl);
        r = ssl_step(k->ssl, k->fd, ret, deadline);
        if (r > 0)
            break;
        if (r < 0) {
            long v = SSL_get_verify_result(k->ssl);
            if (v != X509_V_OK)
                r = kf_err_set(err, -EACCES, "%s: server certificate: %s", name, X509_verify_cert_error_string(v));
            else if (r == -EKEYREJECTED)
                kf_err_set(err, r, "%s: the coordinator rejected this certificate: %s", name, peer_alert);
            else if (r == -ETIMEDOUT)
                kf_err_set(err, r, "%s: TLS handshake timed out", name);
            else
                r = kf_err_set(err, -ECONNREFUSED, "%s: TLS handshake: %s", name, ssl_reason());
            goto fail;
        }
    }
    /* The chain, serverAuth and the address are OpenSSL's checks; that the fleet CA made this
     * certificate for a coordinator (keyfleet://coordinator/NAME) is ours: a node or operator
     * certificate, even one with serverAuth and the right address, is not a coordinator. */
    kf_identity server_id;
    X509 *server_cert = SSL_get0_peer_certificate(k->ssl);
    if (server_cert == NULL || kf_identity_from_cert(server_cert, &server_id, NULL) != 0 ||
        server_id.kind != KF_PEER_COORDINATOR) {
        r = kf_err_set(err, -EACCES, "%s: server certificate: not a coordinator certificate of this fleet", name);
        goto fail;
    }
    const unsigned char *alpn = NULL;
    unsigned alpn_len = 0;
    SSL_get0_alpn_selected(k->ssl, &alpn, &alpn_len);
    if (alpn_len != 2 || memcmp(alpn, "h2", 2) != 0) {
        r = kf_err_set(err, -EPROTO, "%s: the server did not agree to HTTP/2", name);
        goto fail;
    }
    nghttp2_session_callbacks *cbs = NULL;
    if (nghttp2_session_callbacks_new(&cbs) != 0) {
        r = kf_err_set(err, -ENOMEM, "out of memory");
        goto fail;
    }
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_close);
    int hr = nghttp2_session_client_new(&k->h2, cbs, NULL);
    nghttp2_session_callbacks_del(cbs);
    const nghttp2_settings_entry settings[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
                                               {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1u << 20}};
    if (hr != 0 || nghttp2_submit_settings(k->h2, NGHTTP2_FLAG_NONE, settings, 2) != 0) {
        r = kf_err_set(err, -ENOMEM, "out of memory");
        goto fail;
    }
    c->conn = k;
    return 0;
fail:
    conn_free(k);
    return r;
}

/* Reads what the server sent and feeds it to nghttp2. */
static int pump_in(conn *k, uint64_t deadline)
{
    uint8_t buf[16384];
    ERR_clear_error();
    int n = SSL_read(k->ssl, buf, sizeof(buf));
    int r = ssl_step(k->ssl, k->fd, n, deadline);
    if (r < 0 || n <= 0)
        return r < 0 ? r : 0;
    ssize_t fed = nghttp2_session_mem_recv(k->h2, buf, (size_t)n);
    kf_wipe(buf, (size_t)n); /* a login answer carries a bearer token */
    return fed < 0 ? -EPROTO : 0;
}

/* One request on the open connection; 0 with the answer in x, or a negative errno. */
static int exchange(kf_rpc_client *c, const char *path, bool post, call *x, uint64_t deadline)
{
    conn *k = c->conn;
    const char *authority = c->servers[k->server];
    char clen[24];
    snprintf(clen, sizeof(clen), "%zu", x->body_len);
#define NV(n, v, f) {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NO_COPY_NAME | (f)}
    nghttp2_nv hdrs[8] = {
        NV(":method", post ? "POST" : "GET", 0),
        NV(":scheme", "https", 0),
        NV(":authority", authority, 0),
        NV(":path", path, 0),
    };
    size_t n = 4;
    if (post) {
        hdrs[n++] = (nghttp2_nv)NV("content-type", "application/proto", 0);
        hdrs[n++] = (nghttp2_nv)NV("connect-protocol-version", "1", 0);
        hdrs[n++] = (nghttp2_nv)NV("content-length", clen, 0);
        if (c->bearer != NULL) /* never in the HPACK table */
            hdrs[n++] = (nghttp2_nv)NV("authorization", (const char *)c->bearer->data, NGHTTP2_NV_FLAG_NO_INDEX);
    }
#undef NV
    nghttp2_data_provider prov = {.source.ptr = x, .read_callback = read_body};
    x->stream_id = nghttp2_submit_request(k->h2, NULL, hdrs, n, post ? &prov : NULL, x);
    if (x->stream_id < 0)
        return -EPROTO;
    int r;
    while (!x->closed) {
        if ((r = flush_out(k, deadline)) < 0)
            return r;
        if (x->closed)
            break;
        if (!nghttp2_session_want_read(k->h2))
            return -ECONNRESET;
        if ((r = pump_in(k, deadline)) < 0)
            return x->overflow ? -EMSGSIZE : r;
    }
    flush_out(k, deadline); /* WINDOW_UPDATE and the like; a failure shows on the next call */
    if (x->overflow)
        return -EMSGSIZE;
    if (!x->got_headers || x->reset_code != NGHTTP2_NO_ERROR)
        return -ECONNRESET;
    return 0;
}

/* One request to one server. Returns 0 with a response, or a negative errno for a transport error. */
static int perform(kf_rpc_client *c, size_t server, const char *path, const uint8_t *body, size_t body_len,
                   bool post, call *x, kf_err *err)
{
    /* With c->pinned (kf_rpc_client_export): the open connection only, once. */
    const char *name = c->servers[server];
    uint64_t deadline = kf_monotonic_ms() + (uint64_t)c->timeout_ms;
    if (c->conn != NULL && (c->conn->server != server || !nghttp2_session_want_read(c->conn->h2)))
        drop_conn(c);
    if (c->pinned) {
        /* Bound to the connection the caller exported from: that one, once, or nothing. */
        if (c->conn == NULL)
            return kf_err_set(err, -ECONNRESET, "%s: the connection the request is bound to was lost", name);
        free(x->data);
        *x = (call){.body = body, .body_len = body_len};
        int r = exchange(c, path, post, x, deadline);
        if (r != 0) {
            drop_conn(c);
            return kf_err_set(err, -ECONNRESET, "%s: connection lost: %s", name, strerror(-r));
        }
        return 0;
    }
    /* A reused connection may have been closed by the server while idle: one fresh attempt. */
    for (int attempt = 0; attempt < 2; attempt++) {
        bool reused = c->conn != NULL;
        int r = reused ? 0 : open_conn(c, server, deadline, err);
        if (r != 0)
            return r;
        free(x->data);
        *x = (call){.body = body, .body_len = body_len};
        r = exchange(c, path, post, x, deadline);
        if (r == 0)
            return 0;
        drop_conn(c);
        if (r == -EKEYREJECTED)
            return kf_err_set(err, r, "%s: the coordinator rejected this certificate: %s", name, peer_alert);
        /* keyfleetd judges a client's certificate after the TLS 1.3 handshake and, refusing it,
         * closes the connection without a word: on a fresh connection, before any answer, that
         * is what such a close means, whether the client notices it reading (EOF) or writing
         * (EPIPE, ECONNRESET). Its log says why: tls_client_rejected. */
        if ((r == -ECONNABORTED || r == -EPIPE || r == -ECONNRESET) && !reused && !x->got_headers && c->has_cert)
            return kf_err_set(err, -EKEYREJECTED,
                              "%s: the coordinator closed the connection after the TLS handshake: it did not accept "
                              "this certificate (its log says why: tls_client_rejected)",
                              name);
        if (r == -EMSGSIZE)
            return kf_err_set(err, r, "%s: response larger than %u bytes", name, RESPONSE_MAX);
        if (!(reused && !x->got_headers && r != -ETIMEDOUT)) {
            if (r == -ETIMEDOUT)
                return kf_err_set(err, r, "%s: no answer within %ld ms", name, c->timeout_ms);
            return kf_err_set(err, -ECONNREFUSED, "%s: connection lost: %s", name, strerror(-r));
        }
    }
    return kf_err_set(err, -ECONNREFUSED, "%s: connection lost", name);
}

int kf_rpc_client_new(const kf_rpc_opts *opts, kf_rpc_client **ret, kf_err *err)
{
    if (opts->n_servers == 0)
        return kf_err_set(err, -EINVAL, "no coordinator address configured");
    /* A peer that goes away mid-write must be an error, not a kill. */
    struct sigaction old;
    if (sigaction(SIGPIPE, NULL, &old) == 0 && old.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);
    kf_rpc_client *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    kf_tls_opts t = {.role = KF_TLS_CLIENT, .cert_file = opts->cert_file, .key_file = opts->key_file,
                     .tpm_key_file = opts->tpm_key_file, .tpm_tcti = opts->tpm_tcti, .ca_file = opts->ca_file};
    c->has_cert = opts->cert_file != NULL;
    int r = kf_tls_ctx_new(&t, &c->ctx, err);
    if (r != 0) {
        free(c);
        return r;
    }
    if ((c->servers = calloc(opts->n_servers, sizeof(char *))) == NULL) {
        kf_rpc_client_free(c);
        return kf_err_set(err, -ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < opts->n_servers; i++) {
        if ((c->servers[i] = strdup(opts->servers[i])) == NULL) {
            kf_rpc_client_free(c);
            return kf_err_set(err, -ENOMEM, "out of memory");
        }
        c->n_servers++;
    }
    c->n_configured = c->n_servers;
    c->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : 10000;
    *ret = c;
    return 0;
}

void kf_rpc_client_free(kf_rpc_client *c)
{
    if (c == NULL)
        return;
    drop_conn(c);
    SSL_CTX_free(c->ctx);
    for (size_t i = 0; i < c->n_servers; i++)
        free(c->servers[i]);
    free(c->servers);
    kf_secbuf_free(c->bearer);
    free(c);
}

int kf_rpc_client_set_bearer(kf_rpc_client *c, const char *token)
{
    kf_secbuf_free(c->bearer);
    c->bearer = NULL;
    if (token == NULL)
        return 0;
    size_t n = strlen(token);
    if ((c->bearer = kf_secbuf_new(n + 16)) == NULL)
        return -ENOMEM;
    snprintf((char *)c->bearer->data, c->bearer->cap, "Bearer %s", token);
    return 0;
}

int kf_rpc_client_connect(kf_rpc_client *c, kf_err *err)
{
    if (c->conn != NULL)
        return 0;
    int r = open_conn(c, c->current, kf_monotonic_ms() + (uint64_t)c->timeout_ms, err);
    if (r != 0)
        c->current = (c->current + 1) % c->n_servers;
    return r;
}

int kf_rpc_client_export(kf_rpc_client *c, const char *label, unsigned char *out, size_t len, kf_err *err)
{
    int r = kf_rpc_client_connect(c, err);
    if (r != 0)
        return r;
    if (SSL_export_keying_material(c->conn->ssl, out, len, label, strlen(label), NULL, 0, 0) != 1)
        return kf_err_openssl(err, -EIO, "TLS exporter");
    c->pinned = true;
    return 0;
}

void kf_rpc_client_release_tpm(kf_rpc_client *c)
{
    kf_tpmkey_detach(SSL_CTX_get0_privatekey(c->ctx));
    if (c->conn != NULL)
        kf_tpmkey_detach(SSL_get_privatekey(c->conn->ssl));
    kf_tpmkey_unload();
    c->tpm_released = true;
}

bool kf_rpc_client_usable(const kf_rpc_client *c)
{
    return !c->tpm_released || (c->conn != NULL && nghttp2_session_want_read(c->conn->h2));
}

const char *kf_rpc_client_current(const kf_rpc_client *c)
{
    return c->servers[c->current];
}

static int server_index(kf_rpc_client *c, const char *addr);

int kf_rpc_client_prefer(kf_rpc_client *c, const char *server)
{
    int i = server_index(c, server);
    if (i < 0)
        return i;
    c->current = (size_t)i;
    return 0;
}

int kf_rpc_client_identity(const kf_rpc_client *c, kf_identity *ret, kf_err *err)
{
    X509 *cert = SSL_CTX_get0_certificate(c->ctx);
    if (cert == NULL)
        return kf_err_set(err, -ENOENT, "no client certificate");
    return kf_identity_from_cert(cert, ret, err) == 0 ? 0 : -EACCES;
}

/* The index of server addr, added to the list when it is new: -ENOMEM, or -ENOSPC when
 * KF_RPC_MAX_HINTED addresses were added already (review rev40 F7: every hint to a new address
 * grew the list, so a coordinator could grow a long-lived client, the agent's watch, without
 * bound; a cluster has at most 9 voters, so a real one never fills it). A hint to an address
 * with no room is not followed: the answer naming it is the answer. */
static int server_index(kf_rpc_client *c, const char *addr)
{
    for (size_t i = 0; i < c->n_servers; i++)
        if (strcmp(c->servers[i], addr) == 0)
            return (int)i;
    if (c->n_servers - c->n_configured >= KF_RPC_MAX_HINTED)
        return -ENOSPC;
    char **v = realloc(c->servers, (c->n_servers + 1) * sizeof(char *));
    if (v == NULL)
        return -ENOMEM;
    c->servers = v;
    if ((v[c->n_servers] = strdup(addr)) == NULL)
        return -ENOMEM;
    return (int)c->n_servers++;
}

static int perform_pinned(kf_rpc_client *c, size_t server, const char *path, const uint8_t *body, size_t body_len,
                          bool post, call *x, kf_err *err)
{
    c->pinned = true;
    int r = perform(c, server, path, body, body_len, post, x, err);
    c->pinned = false;
    return r;
}

/* Tries each server, starting with the one that answered last, and follows a leader hint (an
 * `unavailable` answer naming the leader) at most MAX_REDIRECTS times. An `unavailable` answer
 * naming no leader moves on to the next server; when none answers better, it is the answer. */
static int request(kf_rpc_client *c, const char *path, const uint8_t *body, size_t body_len, bool post, call *x,
                   char *ret_server, size_t server_size, kf_err *err)
{
    int r = -ECONNREFUSED, redirects = 0;
    if (c->pinned) {
        c->pinned = false;
        size_t i = c->conn != NULL ? c->conn->server : c->current;
        if ((r = perform_pinned(c, i, path, body, body_len, post, x, err)) != 0)
            return r;
        snprintf(ret_server, server_size, "%s", c->servers[i]);
        int next;
        if (x->status == 503 && x->leader[0] != '\0' && strcmp(x->leader, c->servers[i]) != 0 &&
            (next = server_index(c, x->leader)) >= 0) {
            /* A follower: the caller's next (rebuilt) request goes to the leader. */
            drop_conn(c);
            c->current = (size_t)next;
        }
        return 0;
    }
    /* The first `unavailable` answer that names no leader, kept while the other servers are
     * asked: its replica cannot serve (its store failed, its audit log diverged) but another may. */
    call held = {0};
    size_t held_at = 0;
    bool holding = false;
    /* The servers in turn from start: c->current moves only with the answer taken (review rev40
     * F4: moved with each held one, the turn skipped a server and asked another twice). */
    size_t start = c->current;
    bool taken = false; /* x is the answer: none after it is asked */
    uint64_t unready = 0; /* servers (the first 64) that answered so: not asked again, even after a hint */
    for (size_t k = 0; k < c->n_servers; k++) {
        size_t i = (start + k) % c->n_servers;
        if (i < 64 && (unready >> i & 1))
            continue;
        r = perform(c, i, path, body, body_len, post, x, err);
        if (r == 0) {
            c->current = i;
            snprintf(ret_server, server_size, "%s", c->servers[i]);
            int next;
            bool hint = x->leader[0] != '\0' && strcmp(x->leader, c->servers[i]) != 0;
            /* A hint to a server that answered so is no better: it was asked; asking it again
             * would send it the same request again (review rev40 F3). */
            int named = x->status == 503 && hint ? server_index(c, x->leader) : -1;
            if (x->status == 503 && named >= 0 && named < 64 && (unready >> named & 1))
                hint = false;
            if (x->status == 503 && hint && redirects < MAX_REDIRECTS && (next = server_index(c, x->leader)) >= 0) {
                redirects++;
                c->current = start = (size_t)next;
                k = (size_t)-1; /* start over from the leader */
                continue;
            }
            if (x->status == 503 && !hint) {
                if (i < 64)
                    unready |= (uint64_t)1 << i;
                if (!holding) {
                    held = *x;
                    held_at = i;
                    holding = true;
                } else {
                    free(x->data);
                }
                x->data = NULL;
                continue;
            }
            taken = true;
            break;
        }
        if (r == -EMSGSIZE)
            break;
    }
    if (holding && taken) {
        free(held.data);
    } else if (holding) {
        free(x->data);
        *x = held;
        c->current = held_at;
        snprintf(ret_server, server_size, "%s", c->servers[held_at]);
        r = 0;
    }
    return r;
}

int kf_rpc_call(kf_rpc_client *c, const char *method, const ProtobufCMessage *req,
                const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **ret_resp, kf_rpc_status *st,
                kf_err *err)
{
    *ret_resp = NULL;
    memset(st, 0, sizeof(*st));
    size_t len = protobuf_c_message_get_packed_size(req);
    uint8_t *body = malloc(len > 0 ? len : 1);
    if (body == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    protobuf_c_message_pack(req, body);
    char path[256];
    snprintf(path, sizeof(path), "/%s", method);
    call x = {0};
    int r = request(c, path, body, len, true, &x, st->server, sizeof(st->server), err);
    /* The request may carry secrets (a secret id); wipe our copy. */
    kf_wipe(body, len);
    free(body);
    if (r != 0) {
        free(x.data);
        return r;
    }
    st->http_status = (int)x.status;
    st->http_version = 2;
    if (x.status == 200) {
        if (strncmp(x.ctype, "application/proto", 17) != 0) {
            free(x.data);
            return kf_err_set(err, -EPROTO, "%s: unexpected content type '%s'", st->server, x.ctype);
        }
        ProtobufCMessage *m = protobuf_c_message_unpack(resp_desc, NULL, x.len, (const uint8_t *)x.data);
        if (x.data != NULL)
            kf_wipe(x.data, x.len); /* a released key travels in it */
        free(x.data);
        if (m == NULL)
            return kf_err_set(err, -EPROTO, "%s: malformed response body", st->server);
        st->code = KF_CONNECT_OK;
        *ret_resp = m;
        return 0;
    }
    char *msg = NULL;
    kf_connect_code code;
    if (x.data != NULL && kf_connect_error_parse(x.data, x.len, &code, &msg) == 0) {
        st->code = code;
        snprintf(st->message, sizeof(st->message), "%s", msg);
        free(msg);
    } else {
        st->code = kf_connect_code_from_http((int)x.status);
        snprintf(st->message, sizeof(st->message), "HTTP %ld", x.status);
    }
    free(x.data);
    return 0;
}

int kf_rpc_get(kf_rpc_client *c, const char *path, long *ret_status, char **ret_body, kf_err *err)
{
    call x = {0};
    char server[128];
    int r = request(c, path, NULL, 0, false, &x, server, sizeof(server), err);
    if (r != 0) {
        free(x.data);
        return r;
    }
    *ret_status = x.status;
    if (x.data == NULL && (x.data = strdup("")) == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    *ret_body = x.data;
    return 0;
}
