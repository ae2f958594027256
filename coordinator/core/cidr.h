/* IPv4 and IPv6 address/prefix matching, shared by policy rules and AppRole bound CIDRs. */
#ifndef KFD_CIDR_H
#define KFD_CIDR_H

#include <stdbool.h>
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

#endif
