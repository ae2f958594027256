#include "kf_node_check.h"

#include <stdio.h>
#include <string.h>

bool kf_request_id_valid(const char *s)
{
    size_t n = strlen(s);
    if (n < 16 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-'))
            return false;
    }
    return true;
}

static bool id_char(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '.' || c == '_' ||
           c == ':' || c == '-';
}

bool kf_printable(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n > max)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return false;
    return true;
}

const char *kf_check_volume_ref(const Keyfleet__V1__VolumeRef *v)
{
    if (v == NULL)
        return "volume is required";
    size_t n = strlen(v->id);
    if (n == 0 || n > 128)
        return "volume.id must be 1..128 characters";
    for (size_t i = 0; i < n; i++)
        if (!id_char(v->id[i]))
            return "volume.id may hold only [0-9A-Za-z._:-]";
    if (v->kind != KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_LUKS2 && v->kind != KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_ZFS)
        return "volume.kind must be LUKS2 or ZFS";
    if (!kf_printable(v->name, 255))
        return "volume.name must be at most 255 printable characters";
    return NULL;
}

const char *kf_check_labels(Keyfleet__V1__Label *const *labels, size_t n)
{
    if (n > KF_LABELS_MAX)
        return "at most 32 labels";
    for (size_t i = 0; i < n; i++) {
        size_t kl = strlen(labels[i]->key);
        if (kl == 0 || kl > 63)
            return "label keys must be 1..63 characters";
        for (size_t k = 0; k < kl; k++) {
            char c = labels[i]->key[k];
            if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '.' ||
                  c == '_' || c == '/' || c == '-'))
                return "label keys may hold only [0-9A-Za-z._/-]";
        }
        if (!kf_printable(labels[i]->value, 255))
            return "label values must be at most 255 printable characters";
        for (size_t j = 0; j < i; j++)
            if (strcmp(labels[j]->key, labels[i]->key) == 0)
                return "duplicate label key";
    }
    return NULL;
}

const char *kf_check_offline_unlock(const Keyfleet__V1__OfflineUnlock *u)
{
    const char *bad = kf_check_volume_ref(u->volume);
    if (bad == NULL && (u->at == NULL || !kf_printable(u->reason, 512)))
        bad = "offline unlocks need a time and a printable reason of at most 512 characters";
    return bad;
}

static bool wrapped_ok(const char *w) { return w[0] != '\0' && strlen(w) <= KF_WRAPPED_TEXT_MAX; }

const char *kf_check_enroll(const Keyfleet__V1__EnrollRequest *req)
{
    const char *bad = kf_check_volume_ref(req->volume);
    if (bad == NULL)
        bad = kf_check_labels(req->labels, req->n_labels);
    if (bad == NULL && req->ephemeral_public_key.len != 32)
        bad = "ephemeral_public_key must be 32 bytes (X25519)";
    if (bad == NULL && !kf_request_id_valid(req->request_id))
        bad = "request_id is required: 16..64 of [0-9A-Za-z-]";
    return bad;
}

const char *kf_check_release(const Keyfleet__V1__ReleaseRequest *req)
{
    const char *bad = kf_check_volume_ref(req->volume);
    if (bad == NULL && !wrapped_ok(req->wrapped_key))
        bad = "wrapped_key must be 1..4096 characters";
    if (bad == NULL && req->ephemeral_public_key.len != 32)
        bad = "ephemeral_public_key must be 32 bytes (X25519)";
    if (bad == NULL && req->request_id[0] != '\0' && !kf_request_id_valid(req->request_id))
        bad = "request_id must be 16..64 of [0-9A-Za-z-]";
    return bad;
}

const char *kf_check_rotate_key(const Keyfleet__V1__RotateKeyRequest *req)
{
    bool begin = req->step == KEYFLEET__V1__ROTATE_STEP__ROTATE_STEP_BEGIN;
    const char *bad = kf_check_volume_ref(req->volume);
    if (bad == NULL && !begin && req->step != KEYFLEET__V1__ROTATE_STEP__ROTATE_STEP_COMMIT)
        bad = "step must be BEGIN or COMMIT";
    if (bad == NULL && begin && req->ephemeral_public_key.len != 32)
        bad = "ephemeral_public_key must be 32 bytes (X25519)";
    if (bad == NULL && begin && !kf_request_id_valid(req->request_id))
        bad = "request_id is required: 16..64 of [0-9A-Za-z-]";
    if (bad == NULL && !begin && req->request_id[0] != '\0' && !kf_request_id_valid(req->request_id))
        bad = "request_id must be 16..64 of [0-9A-Za-z-]";
    if (bad == NULL && !begin && !wrapped_ok(req->wrapped_key))
        bad = "wrapped_key must be 1..4096 characters";
    return bad;
}

const char *kf_check_volume_erased(const Keyfleet__V1__VolumeErased *e)
{
    if (e->volume_id[0] == '\0' || !kf_printable(e->volume_id, 128))
        return "volume_id must be 1..128 printable bytes";
    if (e->at == NULL)
        return "needs a time";
    if (!kf_printable(e->detail, 512))
        return "detail must be at most 512 printable bytes";
    return NULL;
}

const char *kf_check_heartbeat(const Keyfleet__V1__HeartbeatRequest *req, char *buf, size_t size)
{
    if (req->n_erased > KF_ERASED_MAX)
        return "at most 100 erase reports per heartbeat";
    for (size_t i = 0; i < req->n_erased; i++) {
        const char *bad = kf_check_volume_erased(req->erased[i]);
        if (bad != NULL) {
            snprintf(buf, size, "erased[%zu]: %s", i, bad);
            return buf;
        }
    }
    if (req->n_offline_unlocks > KF_OFFLINE_UNLOCKS_MAX)
        return "at most 1000 offline unlocks per heartbeat";
    if (req->n_dead_man_locks > KF_DEAD_MAN_LOCKS_MAX)
        return "at most 100 dead-man locks per heartbeat";
    for (size_t i = 0; i < req->n_dead_man_locks; i++) {
        if (req->dead_man_locks[i]->at == NULL) {
            snprintf(buf, size, "dead_man_locks[%zu]: needs a time", i);
            return buf;
        }
    }
    for (size_t i = 0; i < req->n_offline_unlocks; i++) {
        const char *bad = kf_check_offline_unlock(req->offline_unlocks[i]);
        if (bad != NULL) {
            snprintf(buf, size, "offline_unlocks[%zu]: %s", i, bad);
            return buf;
        }
    }
    return NULL;
}

static const char *enroll_fn(const ProtobufCMessage *m, char *buf, size_t size)
{
    (void)buf, (void)size;
    return kf_check_enroll((const Keyfleet__V1__EnrollRequest *)m);
}
static const char *release_fn(const ProtobufCMessage *m, char *buf, size_t size)
{
    (void)buf, (void)size;
    return kf_check_release((const Keyfleet__V1__ReleaseRequest *)m);
}
static const char *rotate_key_fn(const ProtobufCMessage *m, char *buf, size_t size)
{
    (void)buf, (void)size;
    return kf_check_rotate_key((const Keyfleet__V1__RotateKeyRequest *)m);
}
static const char *heartbeat_fn(const ProtobufCMessage *m, char *buf, size_t size)
{
    return kf_check_heartbeat((const Keyfleet__V1__HeartbeatRequest *)m, buf, size);
}

kf_request_check_fn kf_node_check_for(const ProtobufCMessageDescriptor *desc)
{
    if (desc == &keyfleet__v1__enroll_request__descriptor)
        return enroll_fn;
    if (desc == &keyfleet__v1__release_request__descriptor)
        return release_fn;
    if (desc == &keyfleet__v1__rotate_key_request__descriptor)
        return rotate_key_fn;
    if (desc == &keyfleet__v1__heartbeat_request__descriptor)
        return heartbeat_fn;
    return NULL;
}
