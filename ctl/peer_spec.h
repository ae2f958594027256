/* A coordinator as `keyfleetctl init --peer` names it: NAME=HOST[:PORT]. HOST is an IPv4
 * address, an [IPv6] address or a DNS name; PORT (default 7443) is the RPC port and Raft takes
 * the next one. */
#ifndef KFCTL_PEER_SPEC_H
#define KFCTL_PEER_SPEC_H

#include <stdbool.h>
#include <stddef.h>

#include "kf_err.h"

#define KFCTL_DEFAULT_RPC_PORT 7443

typedef struct kfctl_peer {
    char name[64];
    char host[256]; /* as written, with the brackets of an IPv6 address */
    bool numeric;   /* an IP address, not a name */
    int rpc_port;   /* Raft listens on rpc_port + 1 */
} kfctl_peer;

/* Parses spec into *p; -EINVAL with the reason in err when it is malformed. */
int kfctl_peer_parse(const char *spec, kfctl_peer *p, kf_err *err);

/* Checks a list: distinct names, and no two peers on one host with overlapping ports. */
int kfctl_peers_check(const kfctl_peer *peers, size_t n, kf_err *err);

/* A single coordinator's --listen: an IPv4 or [IPv6] address (keyfleetd binds numeric addresses
 * only) and a port 0..65535 (0: the kernel picks, as the tests do). Copies the host, brackets
 * kept, into host; -EINVAL when listen is anything else. */
int kfctl_listen_parse(const char *listen, char *host, size_t size);

/* "HOST:PORT" for the peer's RPC (raft false) or Raft (raft true) address. */
void kfctl_peer_addr(const kfctl_peer *p, bool raft, char *buf, size_t size);

#endif
