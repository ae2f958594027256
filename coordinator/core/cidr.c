#include "core/cidr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int kfd_cidr_parse(const char *s, kfd_cidr *out)
{
    char buf[64];
    snprintf(buf, sizeof(buf), "%s", s);
    char *slash = strchr(buf, '/');
    unsigned max;
    if (slash != NULL)
        *slash = '\0';
    if (inet_pton(AF_INET, buf, out->addr) == 1) {
        out->family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
        out->family = AF_INET6;
        max = 128;
    } else {
        return -EINVAL;
    }
    out->prefix = max;
    if (slash != NULL) {
        char *end;
        unsigned long p = strtoul(slash + 1, &end, 10);
        if (slash[1] == '\0' || *end != '\0' || p > max)
            return -EINVAL;
        out->prefix = (unsigned)p;
    }
    return 0;
}

bool kfd_cidr_contains(const kfd_cidr *c, const char *addr)
{
    uint8_t a[16];
    if (inet_pton(c->family, addr, a) != 1)
        return false;
    unsigned full = c->prefix / 8, rest = c->prefix % 8;
    if (memcmp(a, c->addr, full) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[full] & mask) == (c->addr[full] & mask);
}

void kfd_source_key(const char *addr, unsigned v6_prefix, char *buf, size_t size)
{
    static const uint8_t v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    uint8_t a[16];
    char text[INET6_ADDRSTRLEN];
    if (v6_prefix >= 128 || inet_pton(AF_INET6, addr, a) != 1 || memcmp(a, v4_mapped, sizeof(v4_mapped)) == 0) {
        snprintf(buf, size, "%s", addr);
        return;
    }
    unsigned full = v6_prefix / 8, rest = v6_prefix % 8;
    if (rest != 0)
        a[full++] &= (uint8_t)(0xff << (8 - rest));
    memset(a + full, 0, sizeof(a) - full);
    inet_ntop(AF_INET6, a, text, sizeof(text));
    snprintf(buf, size, "%s/%u", text, v6_prefix);
}
