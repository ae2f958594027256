/* Raft's transport (struct raft_uv_transport) over mutual TLS. raft_uv_tcp is plaintext and
 * unauthenticated, so instead raft is handed one end of a socketpair for each connection and
 * a pump thread carries the other end through TLS 1.3 (ALPN keyfleet-raft/1) to the peer.
 *
 * Both ends must present a certificate from the fleet CA naming a coordinator
 * (keyfleet://coordinator/NAME); the connecting side checks it names the member it dialed. The
 * connecting side then sends its member address; the accepting side takes the peer's Raft id
 * from the certificate's NAME, never from the wire, refuses an address naming anyone else, and
 * hands the connection to raft only if NAME is a member of raft's current configuration; it cuts
 * open connections of members removed since. Nothing reaches raft before all of that holds.
 *
 * Member addresses are "name=NAME raft=HOST:PORT rpc=HOST:PORT": raft stores them opaquely in its
 * configuration, so every replica knows each member's name and RPC address (for leader hints). */
#ifndef KFD_RAFT_TRANSPORT_H
#define KFD_RAFT_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <raft.h>
#include <raft/uv.h>
#include <uv.h>

#include "kf_err.h"

typedef struct kfd_raft_transport_opts {
    const char *cert_file, *key_file, *ca_file;
    const char *listen; /* host:port, or NULL for no listener (a cluster of one) */
} kfd_raft_transport_opts;

/* Fills t (zeroed by the caller) with a transport on loop. */
int kfd_raft_transport_init(struct raft_uv_transport *t, uv_loop_t *loop, const kfd_raft_transport_opts *opts,
                            kf_err *err);
/* Frees what init allocated; call after raft's close callback. */
void kfd_raft_transport_release(struct raft_uv_transport *t);
/* cb runs on the loop when a connection with peer id ended from the peer's side (it closed,
 * reset, or its process died), as opposed to raft closing it. */
void kfd_raft_transport_on_peer_lost(struct raft_uv_transport *t, void (*cb)(void *data, raft_id id), void *data);
/* Inbound peers must be named in conf, raft's own current configuration (read on the loop at
 * each accept and every 200 ms; it must outlive the transport). An empty one (a replica that
 * waits to be added) accepts any coordinator. Until this is called, every inbound peer is refused. */
void kfd_raft_transport_set_members(struct raft_uv_transport *t, const struct raft_configuration *conf);
/* A member's certificate that still may not talk to raft: cb (on the loop, at each accept, each
 * connect and every 200 ms for open inbound connections) returns why, or NULL. serial is the
 * certificate's (normalized), not_before its notBefore (INT64_MIN when unreadable). */
typedef const char *(*kfd_raft_peer_check)(void *data, const char *name, const char *serial, int64_t not_before);
void kfd_raft_transport_set_peer_check(struct raft_uv_transport *t, kfd_raft_peer_check cb, void *data);
/* Connections refused because the peer was not a coordinator or not a member (for metrics and tests). */
uint64_t kfd_raft_transport_refused(const struct raft_uv_transport *t);

/* The Raft id of the coordinator called name (stable: derived from the name). */
raft_id kfd_raft_id(const char *name);
/* Writes "name=N raft=R rpc=P" into buf. */
int kfd_raft_address(char *buf, size_t size, const char *name, const char *raft_addr, const char *rpc_addr);
/* Copies field ("name", "raft" or "rpc") of a member address into out; false when absent. */
bool kfd_raft_address_field(const char *address, const char *field, char *out, size_t size);

#endif
