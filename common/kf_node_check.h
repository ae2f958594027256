/* What a coordinator accepts in NodeService requests (Enroll, Release, RotateKey, Heartbeat),
 * checked before anything else is done with them; shared with the agent, which must never queue
 * a report that every later Heartbeat would carry and have refused. Fuzzed
 * (tests/fuzz/fuzz_rpc_request.c). Each check returns NULL when the request is valid, else what
 * is wrong (a static text, or one written to buf). */
#ifndef KF_NODE_CHECK_H
#define KF_NODE_CHECK_H

#include <stdbool.h>
#include <stddef.h>

#include "keyfleet/v1/node.pb-c.h"

#define KF_WRAPPED_TEXT_MAX 4096
#define KF_LABELS_MAX 32
#define KF_OFFLINE_UNLOCKS_MAX 1000
#define KF_DEAD_MAN_LOCKS_MAX 100
#define KF_ERASED_MAX 100

/* A request id: 16..64 of [0-9A-Za-z-]. */
bool kf_request_id_valid(const char *s);
/* At most max bytes, none of them a control character. */
bool kf_printable(const char *s, size_t max);
const char *kf_check_volume_ref(const Keyfleet__V1__VolumeRef *v);
const char *kf_check_labels(Keyfleet__V1__Label *const *labels, size_t n);
const char *kf_check_offline_unlock(const Keyfleet__V1__OfflineUnlock *u);
/* An erase report (HeartbeatRequest.erased): a volume id of 1..128 printable bytes, a time, a
 * detail of at most 512. */
const char *kf_check_volume_erased(const Keyfleet__V1__VolumeErased *e);

const char *kf_check_enroll(const Keyfleet__V1__EnrollRequest *req);
const char *kf_check_release(const Keyfleet__V1__ReleaseRequest *req);
const char *kf_check_rotate_key(const Keyfleet__V1__RotateKeyRequest *req);
const char *kf_check_heartbeat(const Keyfleet__V1__HeartbeatRequest *req, char *buf, size_t size);

/* The check of requests of type desc, called on a decoded message of that type; NULL when this
 * file has none for it. */
typedef const char *(*kf_request_check_fn)(const ProtobufCMessage *req, char *buf, size_t size);
kf_request_check_fn kf_node_check_for(const ProtobufCMessageDescriptor *desc);

#endif
