/* unlock-floor: the least work any boot-unlock client of this design does, with nothing of
 * keyfleet's own: an mTLS 1.3 handshake (OpenSSL, ALPN h2) with the coordinator, then a LUKS2
 * keyslot check through libcryptsetup with no activation name. No request is sent: the
 * coordinator's release time is not in the floor. scripts/bench-agent times it beside the agent,
 * so the agent's own overhead is agent minus floor (docs/performance.md).
 *   unlock-floor CERT KEY CA HOST PORT LUKS_FILE KEYSLOT PASSPHRASE_FILE
 * Exit 0 when both steps succeed, 1 otherwise (with a message on stderr). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <libcryptsetup.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

static int fail(const char *what)
{
    fprintf(stderr, "unlock-floor: %s\n", what);
    ERR_print_errors_fp(stderr);
    return 1;
}

static int handshake(const char *cert, const char *key, const char *ca, const char *host, int port)
{
    static const unsigned char alpn[] = "\x02h2";
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL || SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 ||
        SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1 || SSL_CTX_set_alpn_protos(ctx, alpn, 3) != 0) {
        SSL_CTX_free(ctx);
        return fail("TLS context");
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    SSL *ssl = NULL;
    int r = 1;
    if (inet_pton(AF_INET, host, &sa.sin_addr) == 1 && fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        (ssl = SSL_new(ctx)) != NULL && SSL_set_fd(ssl, fd) == 1 && SSL_connect(ssl) == 1)
        r = 0;
    else
        fail("connect and handshake");
    SSL_free(ssl);
    if (fd >= 0)
        close(fd);
    SSL_CTX_free(ctx);
    return r;
}

static int keyslot_check(const char *path, int slot, const char *pass_file)
{
    char pass[512];
    int fd = open(pass_file, O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, pass, sizeof(pass)) : -1;
    if (fd >= 0)
        close(fd);
    if (n <= 0) {
        OPENSSL_cleanse(pass, sizeof(pass));
        return fail("passphrase file");
    }
    struct crypt_device *cd = NULL;
    int r = crypt_init(&cd, path);
    if (r == 0)
        r = crypt_load(cd, CRYPT_LUKS2, NULL);
    if (r == 0)
        r = crypt_activate_by_passphrase(cd, NULL, slot, pass, (size_t)n, 0);
    OPENSSL_cleanse(pass, sizeof(pass));
    crypt_free(cd);
    return r == slot ? 0 : fail("keyslot check");
}

/* A whole decimal number in [lo, hi], or -1. */
static long number(const char *s, long lo, long hi)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    return errno == 0 && end != s && *end == '\0' && v >= lo && v <= hi ? v : -1;
}

int main(int argc, char **argv)
{
    if (argc != 9) {
        fprintf(stderr, "usage: unlock-floor CERT KEY CA HOST PORT LUKS_FILE KEYSLOT PASSPHRASE_FILE\n");
        return 2;
    }
    long port = number(argv[5], 1, 65535), slot = number(argv[7], 0, 31);
    if (port < 0 || slot < 0) {
        fprintf(stderr, "unlock-floor: PORT must be 1..65535 and KEYSLOT 0..31\n");
        return 2;
    }
    if (handshake(argv[1], argv[2], argv[3], argv[4], (int)port) != 0)
        return 1;
    return keyslot_check(argv[6], (int)slot, argv[8]);
}
