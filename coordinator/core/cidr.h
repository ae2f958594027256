/* IPv4 and IPv6 address/prefix matching, shared by policy rules and AppRole bound CIDRs. */
#ifndef KFD_CIDR_H
#define KFD_CIDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct kfd_cidr {
    int family;
    uint8_t addr[16];
    unsigned prefix;
} kfd_cidr;

/* "10.0.0.0/8", "2001:db8::/32" or a single address. Returns 0 or -EINVAL. */
int kfd_cidr_parse(const char *s, kfd_cidr *out);
/* Whether the textual address addr lies in c. */
bool kfd_cidr_contains(const kfd_cidr *c, const char *addr);

/* The key the per-source limits count textual address addr under (front/server.c): an IPv6
 * address (not a v4-mapped one) by its first v6_prefix bits, as "prefix/len" (review rev26 R9:
 * a client with a /64 has 2^64 addresses); any other address, or v6_prefix 128, as itself. */
void kfd_source_key(const char *addr, unsigned v6_prefix, char *buf, size_t size);

#endif
