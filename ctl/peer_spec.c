#include "peer_spec.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <arpa/inet.h>

#include "kf_identity.h"

/* RFC 1123 host name: labels of [A-Za-z0-9-], not starting or ending with '-'. */
static bool dns_name_valid(const char *s, size_t len)
{
    if (len == 0 || len > 253)
        return false;
    size_t label = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '.') {
            if (label == 0 || s[i - 1] == '-')
                return false;
            label = 0;
        } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                   (c == '-' && label > 0)) {
            if (++label > 63)
                return false;
        } else {
            return false;
        }
    }
    return label > 0 && s[len - 1] != '-';
}

/* An IPv4 address, or an IPv6 one in brackets (len: the host's length, brackets included). */
static bool ip_literal(const char *host, size_t len)
{
    char inner[64];
    unsigned char bin[16];
    bool v6 = len >= 2 && host[0] == '[' && host[len - 1] == ']';
    if (v6 ? len - 2 >= sizeof(inner) : len >= sizeof(inner))
        return false;
    snprintf(inner, sizeof(inner), "%.*s", (int)(v6 ? len - 2 : len), v6 ? host + 1 : host);
    return inet_pton(v6 ? AF_INET6 : AF_INET, inner, bin) == 1;
}

static int parse_port(const char *s, const char *spec, int *ret, kf_err *err)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    /* The next port is Raft's, so the RPC port stops one short of 65535. */
    if (errno != 0 || end == s || *end != '\0' || v < 1 || v > 65534)
        return kf_err_set(err, -EINVAL, "--peer %s: the port must be 1..65534 (Raft takes the next one)", spec);
    *ret = (int)v;
    return 0;
}

int kfctl_peer_parse(const char *spec, kfctl_peer *p, kf_err *err)
{
    memset(p, 0, sizeof(*p));
    const char *eq = strchr(spec, '=');
    if (eq == NULL)
        return kf_err_set(err, -EINVAL, "--peer %s: expected NAME=HOST[:PORT]", spec);
    size_t nlen = (size_t)(eq - spec);
    if (!kf_name_valid(spec, nlen))
        return kf_err_set(err, -EINVAL, "--peer %s: the name must be 1..63 of [A-Za-z0-9._-], starting alphanumeric",
                          spec);
    memcpy(p->name, spec, nlen);
    const char *addr = eq + 1, *port = NULL;
    size_t hlen;
    p->rpc_port = KFCTL_DEFAULT_RPC_PORT;
    if (addr[0] == '[') {
        const char *close = strchr(addr, ']');
        if (close == NULL || (close[1] != '\0' && close[1] != ':'))
            return kf_err_set(err, -EINVAL, "--peer %s: an IPv6 address is written [ADDR] or [ADDR]:PORT", spec);
        hlen = (size_t)(close - addr) + 1;
        port = close[1] == ':' ? close + 2 : NULL;
        p->numeric = true;
    } else {
        const char *colon = strchr(addr, ':');
        if (colon != NULL && strchr(colon + 1, ':') != NULL)
            return kf_err_set(err, -EINVAL, "--peer %s: write an IPv6 address in brackets, [ADDR]:PORT", spec);
        hlen = colon != NULL ? (size_t)(colon - addr) : strlen(addr);
        port = colon != NULL ? colon + 1 : NULL;
    }
    if (hlen == 0 || hlen >= sizeof(p->host))
        return kf_err_set(err, -EINVAL, "--peer %s: no host, or one too long", spec);
    memcpy(p->host, addr, hlen);
    if (port != NULL && parse_port(port, spec, &p->rpc_port, err) != 0)
        return -EINVAL;
    if (p->numeric && !ip_literal(p->host, hlen))
        return kf_err_set(err, -EINVAL, "--peer %s: '%s' is not an IPv6 address", spec, p->host);
    if (!p->numeric && !(p->numeric = ip_literal(p->host, hlen)) && !dns_name_valid(p->host, hlen))
        return kf_err_set(err, -EINVAL, "--peer %s: '%s' is neither an IPv4 address nor a host name", spec, p->host);
    if (p->numeric && (strcmp(p->host, "0.0.0.0") == 0 || strcmp(p->host, "[::]") == 0))
        return kf_err_set(err, -EINVAL, "--peer %s: name the address the others reach it at, not a wildcard", spec);
    return 0;
}

int kfctl_peers_check(const kfctl_peer *peers, size_t n, kf_err *err)
{
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < i; j++) {
            const kfctl_peer *a = &peers[j], *b = &peers[i];
            if (strcmp(a->name, b->name) == 0)
                return kf_err_set(err, -EINVAL, "--peer: '%s' is named twice", a->name);
            if (strcasecmp(a->host, b->host) == 0 && abs(a->rpc_port - b->rpc_port) < 2)
                return kf_err_set(err, -EINVAL,
                                  "--peer: '%s' and '%s' share %s and their ports overlap (each takes PORT and PORT+1)",
                                  a->name, b->name, a->host);
        }
    return 0;
}

int kfctl_listen_parse(const char *listen, char *host, size_t size)
{
    const char *colon = strrchr(listen, ':');
    size_t hlen = colon != NULL ? (size_t)(colon - listen) : 0;
    if (hlen == 0 || hlen >= size || !ip_literal(listen, hlen))
        return -EINVAL;
    char *end = NULL;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (errno != 0 || end == colon + 1 || *end != '\0' || port < 0 || port > 65535)
        return -EINVAL;
    snprintf(host, size, "%.*s", (int)hlen, listen);
    return 0;
}

void kfctl_peer_addr(const kfctl_peer *p, bool raft, char *buf, size_t size)
{
    snprintf(buf, size, "%s:%d", p->host, p->rpc_port + (raft ? 1 : 0));
}
