/* keyfleet-tls-floor: the floor a coordinator's fresh-connection Release is measured against.
 * A TLS server of exactly keyfleetd's shape (the same SSL_CTX, built by kf_tls_ctx_new from the
 * same certificate, key and fleet CA: TLS 1.3 only, client certificate required and verified with
 * X509_STRICT, no tickets, no session cache), that does nothing after the handshake but answer
 * one HTTP/1.1 request with 200 and close. Its CPU per connection, read from /proc by
 * keyfleet-bench, is what OpenSSL itself costs for keyfleetd's handshake (scripts/bench-peers).
 *
 *   keyfleet-tls-floor --cert FILE --key FILE --ca FILE --listen 127.x.y.z:PORT [--port-file FILE] [--stock]
 *
 * --stock builds the same SSL_CTX in OpenSSL's default library context instead of the one
 * keyfleetd's servers use (kf_tls_libctx.h): what the same handshake costs stock OpenSSL 3.0.
 *
 * One connection at a time, blocking: the least a server can do per handshake. It listens only
 * on 127.0.0.0/8 and exits on SIGTERM or SIGINT. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "kf_hostport.h"
#include "kf_tls.h"

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
    (void)sig;
    stop = 1;
}

/* keyfleetd would choose h2; the floor speaks HTTP/1.1 so that it needs no HTTP/2 code. The
 * difference is a few hundred bytes of framing, not handshake work. */
static int pick_http11(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    static const unsigned char want[] = "\x08http/1.1";
    unsigned char *sel = NULL;
    if (SSL_select_next_proto(&sel, outlen, want, sizeof(want) - 1, in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

/* One connection: handshake, read the request head, answer, close. */
static void serve(SSL_CTX *ctx, int fd)
{
    SSL *ssl = SSL_new(ctx);
    if (ssl == NULL || SSL_set_fd(ssl, fd) != 1) {
        SSL_free(ssl);
        return;
    }
    if (SSL_accept(ssl) == 1) {
        char buf[4096];
        size_t have = 0;
        int n;
        /* Bounded: the head must fit in buf. */
        while (have < sizeof(buf) - 1 && (n = SSL_read(ssl, buf + have, (int)(sizeof(buf) - 1 - have))) > 0) {
            have += (size_t)n;
            buf[have] = '\0';
            if (strstr(buf, "\r\n\r\n") != NULL)
                break;
        }
        static const char answer[] = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";
        if (strstr(buf, "\r\n\r\n") != NULL && SSL_write(ssl, answer, (int)sizeof(answer) - 1) > 0)
            SSL_shutdown(ssl);
    }
    ERR_clear_error();
    SSL_free(ssl);
}

int main(int argc, char **argv)
{
    const char *cert = NULL, *key = NULL, *ca = NULL, *listen_at = NULL, *port_file = NULL;
    bool stock = false;
    static const struct option lo[] = {{"cert", required_argument, NULL, 'c'},   {"key", required_argument, NULL, 'k'},
                                       {"ca", required_argument, NULL, 'a'},     {"listen", required_argument, NULL, 'l'},
                                       {"port-file", required_argument, NULL, 'p'}, {"stock", no_argument, NULL, 's'},
                                       {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'c': cert = optarg; break;
        case 'k': key = optarg; break;
        case 'a': ca = optarg; break;
        case 'l': listen_at = optarg; break;
        case 'p': port_file = optarg; break;
        case 's': stock = true; break;
        default: return 2;
        }
    }
    char host[64], port_s[8], *end = NULL;
    struct in_addr a;
    long port = -1;
    if (listen_at != NULL && kf_hostport_split(listen_at, host, sizeof(host), port_s, sizeof(port_s)))
        port = strtol(port_s, &end, 10);
    if (cert == NULL || key == NULL || ca == NULL || port < 0 || port > 65535 || end == NULL || *end != '\0' ||
        inet_pton(AF_INET, host, &a) != 1 || (ntohl(a.s_addr) >> 24) != 127) {
        fprintf(stderr, "usage: keyfleet-tls-floor --cert FILE --key FILE --ca FILE --listen 127.x.y.z:PORT "
                        "[--port-file FILE] [--stock]\n");
        return 2;
    }
    kf_tls_opts to = {.role = KF_TLS_SERVER, .cert_file = cert, .key_file = key, .ca_file = ca,
                      .peer_mode = KF_TLS_PEER_REQUIRED, .server_accept_http11 = true, .default_libctx = stock};
    SSL_CTX *ctx = NULL;
    kf_err err = {0};
    if (kf_tls_ctx_new(&to, &ctx, &err) != 0) {
        fprintf(stderr, "keyfleet-tls-floor: %s\n", err.msg);
        return 1;
    }
    SSL_CTX_set_alpn_select_cb(ctx, pick_http11, NULL);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr = a};
    socklen_t sl = sizeof(sa);
    if (ls < 0 || setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(ls, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(ls, 4096) != 0 ||
        getsockname(ls, (struct sockaddr *)&sa, &sl) != 0) {
        fprintf(stderr, "keyfleet-tls-floor: %s: %s\n", listen_at, strerror(errno));
        return 1;
    }
    if (port_file != NULL) {
        FILE *f = fopen(port_file, "w");
        if (f == NULL || fprintf(f, "%u\n", ntohs(sa.sin_port)) < 0 || fclose(f) != 0) {
            fprintf(stderr, "keyfleet-tls-floor: %s: cannot write\n", port_file);
            return 1;
        }
    }
    /* No SA_RESTART: a signal interrupts accept() so the loop sees `stop`. */
    struct sigaction sg = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sg, NULL);
    sigaction(SIGINT, &sg, NULL);
    signal(SIGPIPE, SIG_IGN);
    while (!stop) {
        int fd = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            continue;
        /* A client that stalls must not hold the floor for ever. */
        struct timeval tv = {.tv_sec = 10};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        serve(ctx, fd);
        close(fd);
    }
    close(ls);
    SSL_CTX_free(ctx);
    return 0;
}
