#include "cluster/raft_transport.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "kf_time.h"
#include "kf_hostport.h"
#include "kf_log.h"
#include "kf_tls.h"

#define HANDSHAKE_MS 3000
#define MAX_HANDSHAKES 32 /* inbound handshakes in progress at once; more are dropped */
#define ADDRESS_MAX 300
#define PUMP_BUF 16384
#define SWEEP_MS 200 /* how soon a removed member's open connections are cut */

typedef struct lost_ev {
    raft_id id;
    struct lost_ev *next;
} lost_ev;

/* Shared between the loop and the pump threads; freed by whoever drops the last reference. */
typedef struct hub {
    lost_ev *lost; /* peers whose connection ended from their side, for the loop */
    pthread_mutex_t lock;
    atomic_int refs;
    bool closed;
    uv_async_t *async;
    struct conn *done_head, *done_tail; /* handshakes finished, waiting for the loop */
    struct conn *live;                  /* inbound connections delivered and still pumping */
    int stop_pipe[2];                   /* written once at close: every pump sees it readable */
    SSL_CTX *server_ctx, *client_ctx;
    char self_address[ADDRESS_MAX];
    atomic_int handshakes;
    atomic_uint_fast64_t refused;
} hub;

typedef struct conn {
    hub *hub;
    atomic_int refs; /* the thread's, plus the loop's while it may still look at it */
    bool outbound;
    /* outbound: raft's request */
    struct raft_uv_connect *req;
    raft_uv_connect_cb cb;
    bool canceled; /* loop only: the transport closed first and cb already had RAFT_CANCELED */
    struct conn *pending_next;
    char host[256], port[8], expect_name[64];
    /* result */
    raft_id id;
    char name[64]; /* the peer's coordinator name, from its certificate */
    char serial[KF_SERIAL_MAX]; /* and that certificate's serial and notBefore, for peer_check */
    int64_t not_before;
    char address[ADDRESS_MAX];
    int status; /* 0 or a RAFT_* code */
    int tls_fd, loop_fd, pump_fd;
    SSL *ssl;
    struct conn *done_next;
    struct conn *live_prev, *live_next; /* in hub->live (inbound), under hub->lock */
    bool live;
    bool accepted, evicted; /* loop only: handed to raft; cut by the sweep */
} conn;

typedef struct transport {
    uv_loop_t *loop;
    hub *hub;
    uv_async_t async;
    uv_poll_t listen_poll;
    int listen_fd;
    uv_timer_t sweep;
    bool sweeping;
    const struct raft_configuration *members; /* raft's own, read on the loop only */
    raft_uv_accept_cb accept_cb;
    raft_uv_transport_close_cb close_cb;
    struct raft_uv_transport *t;
    conn *pending; /* outbound connects not yet completed */
    void (*peer_lost)(void *data, raft_id id);
    void *peer_lost_data;
    kfd_raft_peer_check peer_check;
    void *peer_check_data;
    int open_handles;
    char listen_addr[ADDRESS_MAX];
} transport;

raft_id kfd_raft_id(const char *name)
{
    raft_id id = raft_digest(name, 0);
    return id != 0 ? id : 1;
}

int kfd_raft_address(char *buf, size_t size, const char *name, const char *raft_addr, const char *rpc_addr)
{
    int n = snprintf(buf, size, "name=%s raft=%s rpc=%s", name, raft_addr, rpc_addr);
    return n > 0 && (size_t)n < size ? 0 : -ENAMETOOLONG;
}

bool kfd_raft_address_field(const char *address, const char *field, char *out, size_t size)
{
    size_t fl = strlen(field);
    for (const char *p = address; p != NULL && *p != '\0';) {
        const char *end = strchr(p, ' ');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        if (len > fl && p[fl] == '=' && strncmp(p, field, fl) == 0) {
            size_t vl = len - fl - 1;
            if (vl == 0 || vl >= size)
                return false;
            memcpy(out, p + fl + 1, vl);
            out[vl] = '\0';
            return true;
        }
        p = end != NULL ? end + 1 : NULL;
    }
    return false;
}

static void hub_unref(hub *h)
{
    if (atomic_fetch_sub(&h->refs, 1) != 1)
        return;
    SSL_CTX_free(h->server_ctx);
    SSL_CTX_free(h->client_ctx);
    close(h->stop_pipe[0]);
    close(h->stop_pipe[1]);
    pthread_mutex_destroy(&h->lock);
    free(h);
}

static void conn_unref(conn *c)
{
    if (atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    hub_unref(c->hub);
    free(c);
}

/* Waits for fd to become ready for events; false on timeout, the stop signal or an error. */
static bool wait_fd(hub *h, int fd, short events, uint64_t deadline)
{
    uint64_t now = kf_monotonic_ms();
    if (now >= deadline)
        return false;
    struct pollfd p[2] = {{fd, events, 0}, {h->stop_pipe[0], POLLIN, 0}};
    int r = poll(p, 2, (int)(deadline - now));
    return r > 0 && p[1].revents == 0 && p[0].revents != 0;
}

static int tcp_connect(conn *c, uint64_t deadline)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    if (getaddrinfo(c->host, c->port, &hints, &ai) != 0 || ai == NULL)
        return -1;
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
        close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    if (fd < 0)
        return -1;
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    if (!wait_fd(c->hub, fd, POLLOUT, deadline) || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 ||
        soerr != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* What a non-blocking TLS call that returned r waits for: POLLIN, POLLOUT, or 0 when the
 * connection is over (EOF, reset, TLS error). */
static short ssl_wants(SSL *ssl, int r)
{
    int e = SSL_get_error(ssl, r);
    return e == SSL_ERROR_WANT_READ ? POLLIN : e == SSL_ERROR_WANT_WRITE ? POLLOUT : 0;
}

static bool tls_handshake(conn *c, uint64_t deadline)
{
    for (;;) {
        ERR_clear_error();
        int r = c->outbound ? SSL_connect(c->ssl) : SSL_accept(c->ssl);
        if (r == 1)
            return true;
        short ev = ssl_wants(c->ssl, r);
        if (ev == 0 || !wait_fd(c->hub, c->tls_fd, ev, deadline))
            return false;
    }
}

/* Moves len bytes through TLS in either direction before the deadline. */
static bool tls_io(conn *c, void *buf, size_t len, bool write, uint64_t deadline)
{
    size_t done = 0;
    while (done < len) {
        size_t n = 0;
        int r = write ? SSL_write_ex(c->ssl, (char *)buf + done, len - done, &n)
                      : SSL_read_ex(c->ssl, (char *)buf + done, len - done, &n);
        if (r == 1) {
            done += n;
            continue;
        }
        short ev = ssl_wants(c->ssl, r);
        if (ev == 0 || !wait_fd(c->hub, c->tls_fd, ev, deadline))
            return false;
    }
    return true;
}

/* A member address goes into raft's configuration and from there into leader-hint headers:
 * printable ASCII only. */
static bool address_printable(const char *s)
{
    for (; *s != '\0'; s++)
        if (*s < 0x20 || *s > 0x7e)
            return false;
    return true;
}

/* The peer must be a coordinator; outbound, the one we meant to reach; inbound, its hello must
 * name itself. Returns false with the reason logged. */
static bool check_peer(conn *c, uint64_t deadline)
{
    const unsigned char *alpn = NULL;
    unsigned alpn_len = 0;
    SSL_get0_alpn_selected(c->ssl, &alpn, &alpn_len);
    const kf_identity *id = NULL;
    const char *why = NULL;
    if (alpn_len != strlen(KF_ALPN_RAFT) || memcmp(alpn, KF_ALPN_RAFT, alpn_len) != 0)
        why = "peer does not speak keyfleet-raft/1";
    else if (kf_tls_peer_identity(c->ssl, &id) != 0)
        why = "no valid certificate from the fleet CA";
    else if (id->kind != KF_PEER_COORDINATOR)
        why = "certificate is not a coordinator's";
    else if (c->outbound && strcmp(id->name, c->expect_name) != 0)
        why = "certificate names another coordinator than the member address";
    if (id != NULL) {
        snprintf(c->name, sizeof(c->name), "%s", id->name);
        memcpy(c->serial, id->serial, sizeof(c->serial));
        c->not_before = kf_cert_not_before(SSL_get0_peer_certificate(c->ssl));
    }
    if (why == NULL && c->outbound) {
        uint8_t hdr[2];
        size_t len = strlen(c->hub->self_address);
        hdr[0] = (uint8_t)(len >> 8);
        hdr[1] = (uint8_t)len;
        if (!tls_io(c, hdr, 2, true, deadline) || !tls_io(c, c->hub->self_address, len, true, deadline))
            why = "sending the member address failed";
        c->id = kfd_raft_id(id->name);
    } else if (why == NULL) {
        uint8_t hdr[2];
        char name[64];
        size_t len = 0;
        if (!tls_io(c, hdr, 2, false, deadline) || (len = (size_t)hdr[0] << 8 | hdr[1]) == 0 ||
            len >= sizeof(c->address) || !tls_io(c, c->address, len, false, deadline))
            why = "no member address received";
        else if ((c->address[len] = '\0', !address_printable(c->address)) ||
                 !kfd_raft_address_field(c->address, "name", name, sizeof(name)) || strcmp(name, id->name) != 0)
            why = "member address names another coordinator than the certificate";
        else
            c->id = kfd_raft_id(id->name);
    }
    if (why != NULL) {
        atomic_fetch_add(&c->hub->refused, 1);
        kf_log_warn("raft_peer_refused", "direction=%s name=%s reason=%s", c->outbound ? "out" : "in",
                    kf_log_q(id != NULL ? id->name : "-"), kf_log_q(why));
        return false;
    }
    return true;
}

/* Carries bytes between raft's socketpair end and TLS until either side closes. */
/* Returns true when the peer's side ended it (EOF, reset, TLS error), false when raft closed
 * its end or the transport stopped. */
static bool pump(conn *c)
{
    char *t2p = malloc(PUMP_BUF), *p2t = malloc(PUMP_BUF);
    size_t t2p_len = 0, t2p_off = 0, p2t_len = 0;
    bool peer_gone = false;
    while (t2p != NULL && p2t != NULL) {
        bool progress = false;
        short tls_ev = 0, pair_ev = 0;
        if (t2p_len == 0) {
            size_t n = 0;
            int r = SSL_read_ex(c->ssl, t2p, PUMP_BUF, &n);
            if (r == 1) {
                t2p_len = n;
                t2p_off = 0;
                progress = true;
            } else {
                short ev = ssl_wants(c->ssl, r);
                if (ev == 0) {
                    peer_gone = true;
                    break;
                }
                tls_ev |= ev;
            }
        }
        if (t2p_len > 0) {
            ssize_t w = write(c->pump_fd, t2p + t2p_off, t2p_len - t2p_off);
            if (w > 0) {
                t2p_off += (size_t)w;
                if (t2p_off == t2p_len)
                    t2p_len = 0;
                progress = true;
            } else if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
                pair_ev |= POLLOUT;
            } else {
                break;
            }
        }
        if (p2t_len == 0) {
            ssize_t n = read(c->pump_fd, p2t, PUMP_BUF);
            if (n > 0) {
                p2t_len = (size_t)n;
                progress = true;
            } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
                pair_ev |= POLLIN;
            } else {
                break;
            }
        }
        if (p2t_len > 0) {
            size_t n = 0;
            int r = SSL_write_ex(c->ssl, p2t, p2t_len, &n);
            if (r == 1) {
                p2t_len = 0;
                progress = true;
            } else {
                short ev = ssl_wants(c->ssl, r);
                if (ev == 0) {
                    peer_gone = true;
                    break;
                }
                tls_ev |= ev;
            }
        }
        if (progress)
            continue;
        struct pollfd p[3] = {{c->tls_fd, tls_ev, 0}, {c->pump_fd, pair_ev, 0}, {c->hub->stop_pipe[0], POLLIN, 0}};
        if (poll(p, 3, 1000) < 0 && errno != EINTR)
            break;
        if (p[2].revents != 0 || (p[1].revents & (POLLERR | POLLNVAL)))
            break;
        if (p[0].revents & (POLLERR | POLLNVAL)) {
            peer_gone = true;
            break;
        }
    }
    free(t2p);
    free(p2t);
    return peer_gone;
}

/* Tells the loop that the peer id's connection ended from its side. */
static void report_lost(hub *h, raft_id id)
{
    lost_ev *ev = malloc(sizeof(*ev));
    if (ev == NULL)
        return;
    ev->id = id;
    pthread_mutex_lock(&h->lock);
    if (h->closed) {
        free(ev);
    } else {
        ev->next = h->lost;
        h->lost = ev;
        uv_async_send(h->async);
    }
    pthread_mutex_unlock(&h->lock);
}

/* Hands a finished handshake to the loop; false when the transport has closed meanwhile. */
static bool deliver(conn *c)
{
    hub *h = c->hub;
    pthread_mutex_lock(&h->lock);
    bool ok = !h->closed;
    if (ok) {
        atomic_fetch_add(&c->refs, 1); /* the loop's, dropped when it has taken the result */
        c->done_next = NULL;
        if (h->done_tail != NULL)
            h->done_tail->done_next = c;
        else
            h->done_head = c;
        h->done_tail = c;
        if (!c->outbound && c->status == 0) {
            c->live_next = h->live;
            if (h->live != NULL)
                h->live->live_prev = c;
            h->live = c;
            c->live = true;
        }
        uv_async_send(h->async);
    }
    pthread_mutex_unlock(&h->lock);
    return ok;
}

/* Leaves the live list before tls_fd closes: the sweep may shut it down until then. */
static void live_remove(conn *c)
{
    hub *h = c->hub;
    pthread_mutex_lock(&h->lock);
    if (c->live) {
        if (c->live_prev != NULL)
            c->live_prev->live_next = c->live_next;
        else
            h->live = c->live_next;
        if (c->live_next != NULL)
            c->live_next->live_prev = c->live_prev;
        c->live = false;
    }
    pthread_mutex_unlock(&h->lock);
}

static void *conn_thread(void *arg)
{
    conn *c = arg;
    hub *h = c->hub;
    uint64_t deadline = kf_monotonic_ms() + HANDSHAKE_MS;
    c->status = RAFT_NOCONNECTION;
    c->loop_fd = c->pump_fd = -1;
    if (c->outbound)
        c->tls_fd = tcp_connect(c, deadline);
    int pair[2] = {-1, -1};
    if (c->tls_fd >= 0 && (c->ssl = SSL_new(c->outbound ? h->client_ctx : h->server_ctx)) != NULL &&
        SSL_set_fd(c->ssl, c->tls_fd) == 1 && tls_handshake(c, deadline) && check_peer(c, deadline) &&
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0) {
        int one = 1;
        setsockopt(c->tls_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        c->loop_fd = pair[0];
        c->pump_fd = pair[1];
        fcntl(c->pump_fd, F_SETFL, O_NONBLOCK);
        c->status = 0;
    }
    if (!c->outbound)
        atomic_fetch_sub(&h->handshakes, 1);
    /* An inbound failure concerns nobody on the loop; an outbound one answers raft's request. */
    bool delivered = (c->status == 0 || c->outbound) && deliver(c);
    if (c->status == 0 && !delivered)
        close(c->loop_fd);
    if (c->status == 0 && delivered && pump(c))
        report_lost(h, c->id);
    live_remove(c);
    if (c->ssl != NULL) {
        SSL_shutdown(c->ssl);
        SSL_free(c->ssl);
    }
    if (c->tls_fd >= 0)
        close(c->tls_fd);
    if (c->pump_fd >= 0)
        close(c->pump_fd);
    conn_unref(c);
    return NULL;
}

static int spawn(conn *c)
{
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    pthread_t th;
    int r = pthread_create(&th, &attr, conn_thread, c);
    pthread_attr_destroy(&attr);
    return r;
}

static conn *conn_new(transport *tr, bool outbound)
{
    conn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->hub = tr->hub;
    atomic_fetch_add(&tr->hub->refs, 1);
    atomic_init(&c->refs, 1);
    c->outbound = outbound;
    c->tls_fd = -1;
    return c;
}

/* Why a peer called name may not talk to raft here, or NULL. Membership is raft's current
 * configuration (with members added or removed since start), not the config file's peers. An
 * empty one is a replica started to join, which has yet to hear from the leader that adds it:
 * it accepts any coordinator until then. */
static const char *member_refusal(const transport *tr, const char *name)
{
    if (tr->members == NULL)
        return "cluster membership is not known yet";
    if (tr->members->n == 0)
        return NULL;
    for (unsigned i = 0; i < tr->members->n; i++) {
        char member[64];
        if (kfd_raft_address_field(tr->members->servers[i].address, "name", member, sizeof(member)) &&
            strcmp(member, name) == 0)
            return NULL;
    }
    return "not a member of the cluster's current configuration";
}

/* Why this member's certificate may not talk to raft here (denylisted, or issued before its
 * coordinator was removed and added back: review rev17, R1), or NULL. Membership alone would let a
 * stolen, revoked or pre-removal certificate of a current member vote and send entries. */
static const char *peer_refusal(const transport *tr, const conn *c)
{
    const char *why = member_refusal(tr, c->name);
    if (why == NULL && tr->peer_check != NULL)
        why = tr->peer_check(tr->peer_check_data, c->name, c->serial, c->not_before);
    return why;
}

static void refuse_member(transport *tr, const conn *c, const char *why)
{
    atomic_fetch_add(&tr->hub->refused, 1);
    kf_log_warn("raft_peer_refused", "direction=in name=%s reason=%s", kf_log_q(c->name), kf_log_q(why));
}

/* Cuts the connections of peers that left the configuration since they connected: raft keeps
 * using an open connection, so checking only at accept would let a removed member talk on. */
static void on_sweep(uv_timer_t *t)
{
    transport *tr = t->data;
    hub *h = tr->hub;
    pthread_mutex_lock(&h->lock);
    for (conn *c = h->live; c != NULL; c = c->live_next) {
        const char *why;
        if (!c->accepted || c->evicted || (why = peer_refusal(tr, c)) == NULL)
            continue;
        c->evicted = true;
        shutdown(c->tls_fd, SHUT_RDWR); /* its pump sees the end and closes raft's side */
        refuse_member(tr, c, member_refusal(tr, c->name) != NULL
                                 ? "no longer a member of the cluster's current configuration" : why);
    }
    pthread_mutex_unlock(&h->lock);
}

static void free_pipe(uv_handle_t *h) { raft_free(h); }

/* Raft's end of a connection as a pipe on the loop; NULL (fd closed) on failure. */
static uv_pipe_t *open_pipe(transport *tr, int fd)
{
    uv_pipe_t *pipe = raft_malloc(sizeof(*pipe));
    if (pipe != NULL) {
        uv_pipe_init(tr->loop, pipe, 0);
        if (uv_pipe_open(pipe, fd) == 0)
            return pipe;
        uv_close((uv_handle_t *)pipe, free_pipe); /* initialized: the loop lists it until closed */
    }
    close(fd);
    return NULL;
}

/* An inbound connection whose handshake finished: to raft if the peer is a member now. */
static void take_inbound(transport *tr, conn *c)
{
    if (c->status != 0)
        return;
    const char *why = peer_refusal(tr, c);
    if (why != NULL) {
        refuse_member(tr, c, why);
        close(c->loop_fd); /* its pump sees EOF and ends the TLS connection */
        return;
    }
    uv_pipe_t *pipe = open_pipe(tr, c->loop_fd);
    if (pipe == NULL)
        return;
    c->accepted = true;
    tr->accept_cb(tr->t, c->id, c->address, (uv_stream_t *)pipe);
}

/* An outbound connect finished: answers raft's request, unless it was canceled. */
static void take_outbound(transport *tr, conn *c)
{
    uv_pipe_t *pipe = NULL;
    const char *why = NULL;
    if (c->status == 0 && c->canceled) {
        close(c->loop_fd);
    } else if (c->status == 0 && tr->peer_check != NULL &&
               (why = tr->peer_check(tr->peer_check_data, c->name, c->serial, c->not_before)) != NULL) {
        /* Whoever answered at the member's address holds a certificate that may not speak for it. */
        atomic_fetch_add(&tr->hub->refused, 1);
        kf_log_warn("raft_peer_refused", "direction=out name=%s reason=%s", kf_log_q(c->name), kf_log_q(why));
        close(c->loop_fd);
    } else if (c->status == 0) {
        pipe = open_pipe(tr, c->loop_fd);
    }
    for (conn **p = &tr->pending; *p != NULL; p = &(*p)->pending_next)
        if (*p == c) {
            *p = c->pending_next;
            break;
        }
    if (!c->canceled)
        c->cb(c->req, (uv_stream_t *)pipe, pipe != NULL ? 0 : RAFT_NOCONNECTION);
    conn_unref(c); /* the pending list's reference */
}

static void on_async(uv_async_t *a)
{
    transport *tr = a->data;
    hub *h = tr->hub;
    pthread_mutex_lock(&h->lock);
    conn *list = h->done_head;
    h->done_head = h->done_tail = NULL;
    lost_ev *lost = h->lost;
    h->lost = NULL;
    pthread_mutex_unlock(&h->lock);
    while (lost != NULL) {
        lost_ev *ev = lost;
        lost = ev->next;
        if (tr->peer_lost != NULL)
            tr->peer_lost(tr->peer_lost_data, ev->id);
        free(ev);
    }
    while (list != NULL) {
        conn *c = list;
        list = c->done_next;
        if (c->outbound)
            take_outbound(tr, c);
        else
            take_inbound(tr, c);
        conn_unref(c); /* the delivery's reference */
    }
}

static void on_listen_ready(uv_poll_t *p, int status, int events)
{
    (void)events;
    transport *tr = p->data;
    if (status < 0)
        return;
    for (int i = 0; i < 64; i++) {
        int fd = accept4(tr->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        conn *c = NULL;
        if (atomic_fetch_add(&tr->hub->handshakes, 1) >= MAX_HANDSHAKES || (c = conn_new(tr, false)) == NULL) {
            atomic_fetch_sub(&tr->hub->handshakes, 1);
            close(fd);
            continue;
        }
        c->tls_fd = fd;
        if (spawn(c) != 0) {
            atomic_fetch_sub(&tr->hub->handshakes, 1);
            close(fd);
            conn_unref(c);
        }
    }
}

static int t_init(struct raft_uv_transport *t, raft_id id, const char *address)
{
    (void)id;
    transport *tr = t->impl;
    snprintf(tr->hub->self_address, sizeof(tr->hub->self_address), "%s", address);
    return 0;
}

static int t_listen(struct raft_uv_transport *t, raft_uv_accept_cb cb)
{
    transport *tr = t->impl;
    tr->accept_cb = cb;
    if (tr->listen_addr[0] == '\0')
        return 0;
    char host[256], port[8];
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
    if (!kf_hostport_split(tr->listen_addr, host, sizeof(host), port, sizeof(port)) ||
        getaddrinfo(host, port, &hints, &ai) != 0) {
        snprintf(t->errmsg, sizeof(t->errmsg), "raft_listen %.200s: cannot resolve", tr->listen_addr);
        return RAFT_IOERR;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    if (fd >= 0)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 64) != 0) {
        snprintf(t->errmsg, sizeof(t->errmsg), "raft_listen %.160s: %.60s", tr->listen_addr, strerror(errno));
        if (fd >= 0)
            close(fd);
        freeaddrinfo(ai);
        return RAFT_IOERR;
    }
    freeaddrinfo(ai);
    tr->listen_fd = fd;
    uv_poll_init(tr->loop, &tr->listen_poll, fd);
    tr->listen_poll.data = tr;
    tr->open_handles++;
    uv_poll_start(&tr->listen_poll, UV_READABLE, on_listen_ready);
    uv_timer_init(tr->loop, &tr->sweep);
    tr->sweep.data = tr;
    tr->open_handles++;
    tr->sweeping = true;
    uv_timer_start(&tr->sweep, on_sweep, SWEEP_MS, SWEEP_MS);
    return 0;
}

static int t_connect(struct raft_uv_transport *t, struct raft_uv_connect *req, raft_id id, const char *address,
                     raft_uv_connect_cb cb)
{
    (void)id;
    transport *tr = t->impl;
    char raft_addr[ADDRESS_MAX];
    conn *c = conn_new(tr, true);
    if (c == NULL)
        return RAFT_NOMEM;
    if (!kfd_raft_address_field(address, "raft", raft_addr, sizeof(raft_addr)) ||
        !kfd_raft_address_field(address, "name", c->expect_name, sizeof(c->expect_name)) ||
        !kf_hostport_split(raft_addr, c->host, sizeof(c->host), c->port, sizeof(c->port))) {
        conn_unref(c);
        snprintf(t->errmsg, sizeof(t->errmsg), "bad member address '%.200s'", address);
        return RAFT_NOCONNECTION;
    }
    c->req = req;
    c->cb = cb;
    atomic_fetch_add(&c->refs, 1); /* the pending list's */
    c->pending_next = tr->pending;
    tr->pending = c;
    if (spawn(c) != 0) {
        tr->pending = c->pending_next;
        conn_unref(c);
        conn_unref(c);
        return RAFT_NOCONNECTION;
    }
    return 0;
}

static void on_handle_closed(uv_handle_t *h)
{
    transport *tr = h->data;
    if (--tr->open_handles == 0 && tr->close_cb != NULL)
        tr->close_cb(tr->t);
}

static void t_close(struct raft_uv_transport *t, raft_uv_transport_close_cb cb)
{
    transport *tr = t->impl;
    hub *h = tr->hub;
    tr->close_cb = cb;
    pthread_mutex_lock(&h->lock);
    h->closed = true;
    conn *list = h->done_head;
    h->done_head = h->done_tail = NULL;
    lost_ev *lost = h->lost;
    h->lost = NULL;
    pthread_mutex_unlock(&h->lock);
    while (lost != NULL) {
        lost_ev *ev = lost;
        lost = ev->next;
        free(ev);
    }
    if (write(h->stop_pipe[1], "x", 1) < 0)
        kf_log_warn("raft_transport_stop_failed", "error=%s", kf_log_q(strerror(errno)));
    for (; list != NULL;) {
        conn *c = list;
        list = c->done_next;
        if (c->status == 0)
            close(c->loop_fd);
        conn_unref(c);
    }
    while (tr->pending != NULL) {
        conn *c = tr->pending;
        tr->pending = c->pending_next;
        c->canceled = true;
        c->cb(c->req, NULL, RAFT_CANCELED);
        conn_unref(c);
    }
    if (tr->listen_fd >= 0) {
        uv_poll_stop(&tr->listen_poll);
        uv_close((uv_handle_t *)&tr->listen_poll, on_handle_closed);
    }
    if (tr->sweeping) {
        uv_timer_stop(&tr->sweep);
        uv_close((uv_handle_t *)&tr->sweep, on_handle_closed);
        tr->sweeping = false;
    }
    uv_close((uv_handle_t *)&tr->async, on_handle_closed);
}

int kfd_raft_transport_init(struct raft_uv_transport *t, uv_loop_t *loop, const kfd_raft_transport_opts *opts,
                            kf_err *err)
{
    transport *tr = calloc(1, sizeof(*tr));
    hub *h = calloc(1, sizeof(*h));
    if (tr == NULL || h == NULL) {
        free(tr);
        free(h);
        return kf_err_set(err, -ENOMEM, "out of memory");
    }
    pthread_mutex_init(&h->lock, NULL);
    atomic_init(&h->refs, 1);
    h->stop_pipe[0] = h->stop_pipe[1] = -1;
    kf_tls_opts so = {.role = KF_TLS_SERVER, .cert_file = opts->cert_file, .key_file = opts->key_file,
                      .ca_file = opts->ca_file, .peer_mode = KF_TLS_PEER_REQUIRED, .alpn_raft = true};
    kf_tls_opts co = so;
    co.role = KF_TLS_CLIENT;
    int r = pipe2(h->stop_pipe, O_CLOEXEC) != 0 ? kf_err_set(err, -errno, "pipe: %s", strerror(errno)) : 0;
    if (r == 0)
        r = kf_tls_ctx_new(&so, &h->server_ctx, err);
    if (r == 0)
        r = kf_tls_ctx_new(&co, &h->client_ctx, err);
    if (r != 0) {
        hub_unref(h);
        free(tr);
        return kf_err_wrap(err, "raft transport");
    }
    tr->loop = loop;
    tr->hub = h;
    tr->t = t;
    tr->listen_fd = -1;
    snprintf(tr->listen_addr, sizeof(tr->listen_addr), "%s", opts->listen != NULL ? opts->listen : "");
    uv_async_init(loop, &tr->async, on_async);
    tr->async.data = tr;
    tr->listen_poll.data = tr;
    tr->open_handles = 1;
    h->async = &tr->async;
    t->impl = tr;
    t->init = t_init;
    t->listen = t_listen;
    t->connect = t_connect;
    t->close = t_close;
    return 0;
}

void kfd_raft_transport_release(struct raft_uv_transport *t)
{
    transport *tr = t->impl;
    if (tr == NULL)
        return;
    if (tr->listen_fd >= 0)
        close(tr->listen_fd);
    hub_unref(tr->hub);
    free(tr);
    t->impl = NULL;
}

void kfd_raft_transport_on_peer_lost(struct raft_uv_transport *t, void (*cb)(void *data, raft_id id), void *data)
{
    transport *tr = t->impl;
    tr->peer_lost = cb;
    tr->peer_lost_data = data;
}

void kfd_raft_transport_set_peer_check(struct raft_uv_transport *t, kfd_raft_peer_check cb, void *data)
{
    transport *tr = t->impl;
    tr->peer_check = cb;
    tr->peer_check_data = data;
}

void kfd_raft_transport_set_members(struct raft_uv_transport *t, const struct raft_configuration *conf)
{
    transport *tr = t->impl;
    tr->members = conf;
}

uint64_t kfd_raft_transport_refused(const struct raft_uv_transport *t)
{
    const transport *tr = t->impl;
    return tr != NULL ? (uint64_t)atomic_load(&tr->hub->refused) : 0;
}
