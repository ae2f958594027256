/* LUKS2 through libcryptsetup. The LUKS UUID is the volume id. The keyfleet key gets its own
 * keyslot (PBKDF2 with a low iteration count: the key is 256 random bits, as systemd-cryptenroll
 * does for TPM keys; SHA-512, which LUKS2 also uses for the keyslot's anti-forensic split, so a
 * 512-bit volume key takes one hash per stripe instead of two: 1.5 ms less per unlock here),
 * and a LUKS2 token of type "keyfleet" records it:
 *   {"type":"keyfleet","keyslots":["N"],"keyfleet_volume_id":UUID,
 *    "keyfleet_wrapped_key":"kf:...","keyfleet_coordinators":["host:port",...],
 *    "keyfleet_tpm_sealed":"kftpm1:..." (only where policy allows offline unlock; a rotating
 *    token's seals the new key),
 *    "keyfleet_rotating":true, "keyfleet_replaces":"N", "keyfleet_replaces_salt":BASE64 (a
 *    rotation's new key until COMMIT; the old key's keyslot and its KDF salt until it is killed)}
 * A rotation adds a second token, marked rotating, with its own keyslot; probe prefers the
 * unmarked one and keeps the marked one as wrapped_next (docs/agent.md, "Key rotation").
 * Unlock activates the mapping, or with luks.activate=false only verifies the key (no
 * device-mapper, as in the tests). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include "cryptsetup_dl.h"
#include "kf_log.h"
#include "kf_time.h"
#include "luks2_slots.h"
#include "luks2_token.h"
#include "volume.h"

#define TOKEN_TYPE KFA_TOKEN_TYPE
#define MAX_TOKENS 32

static void quiet(int level, const char *msg, void *usrptr)
{
    (void)level, (void)msg, (void)usrptr;
}

/* The device loaded at probe, reused by the calls that follow (one header read per run). */
static int open_device(const char *path, struct crypt_device **ret, kf_err *err);

static int device_of(kfa_volume *v, struct crypt_device **ret, kf_err *err)
{
    if (v->handle != NULL) {
        *ret = v->handle;
        return 0;
    }
    int r = open_device(v->path, ret, err);
    if (r == 0)
        v->handle = *ret;
    return r;
}

static int open_device(const char *path, struct crypt_device **ret, kf_err *err)
{
    if (access(path, F_OK) != 0)
        return kf_err_set(err, -ENOENT, "%s: no such device or file", path);
    int r = kfa_cryptsetup_load(err);
    if (r != 0)
        return r;
    struct crypt_device *cd = NULL;
    r = sym_crypt_init(&cd, path);
    if (r < 0)
        return kf_err_set(err, r, "%s: cannot open: %s", path, strerror(-r));
    sym_crypt_set_log_callback(cd, quiet, NULL);
    r = sym_crypt_load(cd, CRYPT_LUKS2, NULL);
    if (r < 0) {
        sym_crypt_free(cd);
        return kf_err_set(err, -EINVAL, "%s: not a LUKS2 volume", path);
    }
    *ret = cd;
    return 0;
}

/* The rotation's new key becomes v's key, still marked rotating (COMMIT to come). */
static void next_becomes_key(kfa_volume *v, int replaces)
{
    v->wrapped = v->wrapped_next;
    v->wrapped_next = NULL;
    free(v->tpm_blob); /* it sealed the old key */
    v->tpm_blob = v->tpm_blob_next;
    v->tpm_blob_next = NULL;
    if (v->tpm_part_next != NULL) { /* tpm_and_network: the new key's TPM part */
        free(v->tpm_part);
        v->tpm_part = v->tpm_part_next;
        v->tpm_part_next = NULL;
    }
    v->keyslot = v->next_keyslot;
    v->token = v->next_token;
    v->next_keyslot = v->next_token = -1;
    v->replaces_keyslot = replaces;
    v->rotating = true;
}

/* Finds the keyfleet tokens: the unmarked one is the volume's key, a marked one a rotation's new
 * key (wrapped_next; or, alone, the key: rotating). -ENOENT when there is none, -EBADMSG when one
 * is malformed (luks2_token.c checks every field, as the token plugin does). */
static int read_token(struct crypt_device *cd, kfa_volume *v, kf_err *err)
{
    bool found = false;
    for (int t = 0; t < MAX_TOKENS; t++) {
        const char *type = NULL;
        crypt_token_info info = sym_crypt_token_status(cd, t, &type);
        if (info == CRYPT_TOKEN_INACTIVE || info == CRYPT_TOKEN_INVALID || type == NULL || strcmp(type, TOKEN_TYPE) != 0)
            continue;
        const char *json = NULL;
        if (sym_crypt_token_json_get(cd, t, &json) < 0)
            return kf_err_set(err, -EBADMSG, "%s: keyfleet token %d unreadable", v->path, t);
        kfa_token tok;
        int r = kfa_token_parse(json, v->id, &tok, err);
        if (r != 0)
            return kf_err_wrap(err, "%s: keyfleet token %d", v->path, t);
        if (tok.rotating && v->wrapped_next == NULL) {
            v->wrapped_next = tok.wrapped;
            v->tpm_blob_next = tok.tpm_blob;
            v->tpm_part_next = tok.tpm_part;
            tok.wrapped = tok.tpm_blob = tok.tpm_part = NULL;
            v->next_keyslot = tok.keyslot;
            v->next_token = t;
            v->replaces_keyslot = tok.replaces;
            snprintf(v->replaces_salt, sizeof(v->replaces_salt), "%s", tok.replaces_salt);
        } else if (!tok.rotating && v->wrapped == NULL) {
            v->wrapped = tok.wrapped;
            v->tpm_blob = tok.tpm_blob;
            v->tpm_part = tok.tpm_part;
            tok.wrapped = tok.tpm_blob = tok.tpm_part = NULL;
            v->keyslot = tok.keyslot;
            v->token = t;
        } else {
            kfa_token_clear(&tok);
            return kf_err_set(err, -EBADMSG, "%s: more than one keyfleet token %s", v->path,
                              tok.rotating ? "marked rotating" : "without the rotating mark");
        }
        kfa_token_clear(&tok);
        found = true;
    }
    if (found && v->wrapped == NULL) /* the old one was removed before COMMIT was known to be done */
        next_becomes_key(v, v->replaces_keyslot);
    return found ? 0 : -ENOENT;
}

static int luks_probe(const kfa_config *cfg, kfa_volume *v, kf_err *err)
{
    (void)cfg;
    struct crypt_device *cd = NULL;
    if (v->handle != NULL) {
        sym_crypt_free(v->handle);
        v->handle = NULL;
    }
    free(v->wrapped);
    v->wrapped = NULL;
    free(v->tpm_blob);
    v->tpm_blob = NULL;
    free(v->tpm_part);
    v->tpm_part = NULL;
    free(v->wrapped_next);
    v->wrapped_next = NULL;
    free(v->tpm_blob_next);
    v->tpm_blob_next = NULL;
    free(v->tpm_part_next);
    v->tpm_part_next = NULL;
    v->rotating = false;
    int r = device_of(v, &cd, err);
    if (r != 0)
        return r;
    const char *uuid = sym_crypt_get_uuid(cd);
    snprintf(v->id, sizeof(v->id), "%s", uuid != NULL ? uuid : "");
    if (v->name[0] == '\0')
        snprintf(v->name, sizeof(v->name), "keyfleet-%.64s", v->id);
    v->keyslot = v->token = v->next_keyslot = v->next_token = v->replaces_keyslot = -1;
    v->replaces_salt[0] = '\0';
    r = read_token(cd, v, err);
    if (r == -ENOENT)
        r = 0;
    if (r == 0 && cfg->luks_activate)
        v->unlocked = sym_crypt_status(cd, v->name) == CRYPT_ACTIVE;
    return r;
}

/* rotating: the token of a rotation's new key, which replaces v's keyslot. tpm_blob: the TPM copy
 * of the token's key (NULL: none). */
static char *token_json_as(const kfa_config *cfg, const kfa_volume *v, int slot, const char *wrapped, bool rotating,
                           const char *tpm_blob)
{
    json_t *coords = json_array();
    for (size_t i = 0; coords != NULL && i < cfg->coordinators.n; i++)
        json_array_append_new(coords, json_string(cfg->coordinators.v[i]));
    char slot_s[16];
    snprintf(slot_s, sizeof(slot_s), "%d", slot);
    json_t *o = json_pack("{s:s, s:[s], s:s, s:s, s:o}", "type", TOKEN_TYPE, "keyslots", slot_s, "keyfleet_volume_id",
                          v->id, "keyfleet_wrapped_key", wrapped, "keyfleet_coordinators", coords);
    if (o != NULL && tpm_blob != NULL)
        json_object_set_new(o, "keyfleet_tpm_sealed", json_string(tpm_blob));
    int replaces = v->rotating ? v->replaces_keyslot : v->keyslot;
    if (o != NULL && rotating)
        json_object_set_new(o, "keyfleet_rotating", json_true());

    if (o != NULL && rotating && replaces >= 0 && replaces != slot) {
        char old_s[16];
        snprintf(old_s, sizeof(old_s), "%d", replaces);
        json_object_set_new(o, "keyfleet_replaces", json_string(old_s));
        if (v->replaces_salt[0] != '\0')
            json_object_set_new(o, "keyfleet_replaces_salt", json_string(v->replaces_salt));
    }
    char *s = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return s;
}

static char *token_json(const kfa_config *cfg, const kfa_volume *v, int slot, const char *wrapped)
{
    return token_json_as(cfg, v, slot, wrapped, v->rotating, v->tpm_blob != NULL ? v->tpm_blob : v->tpm_part);
}

/* The PBKDF2 cost of the digest that checks keyslot slot's volume key, from the LUKS2 metadata:
 *   "digests":{"0":{"type":"pbkdf2","keyslots":["0","1"],"hash":"sha256","iterations":N,...}} */
static void digest_cost(struct crypt_device *cd, int slot, kfa_volume *v)
{
    const char *dump = NULL;
    v->digest_iterations = 0;
    v->digest_hash[0] = '\0';
    json_t *o = sym_crypt_dump_json(cd, &dump, 0) == 0 ? json_loads(dump, 0, NULL) : NULL;
    char want[16];
    snprintf(want, sizeof(want), "%d", slot);
    const char *id;
    json_t *d;
    json_object_foreach(json_object_get(o, "digests"), id, d) {
        size_t i;
        json_t *ks;
        bool covers = false;
        json_array_foreach(json_object_get(d, "keyslots"), i, ks)
            covers |= json_is_string(ks) && strcmp(json_string_value(ks), want) == 0;
        json_int_t n = json_integer_value(json_object_get(d, "iterations"));
        const char *hash = json_string_value(json_object_get(d, "hash"));
        if (covers && n > 0 && n <= UINT32_MAX) {
            v->digest_iterations = (uint32_t)n;
            snprintf(v->digest_hash, sizeof(v->digest_hash), "%s", hash != NULL ? hash : "?");
            break;
        }
    }
    json_decref(o);
}

/* Keyslot slot's KDF salt as the LUKS2 header holds it (base64), or "" when it has none: random
 * for each keyslot made, so it tells the keyslot a rotation replaces from one an operator added
 * later under the same number. */
static void keyslot_salt(struct crypt_device *cd, int slot, char *ret, size_t size)
{
    const char *dump = NULL;
    ret[0] = '\0';
    json_t *o = sym_crypt_dump_json(cd, &dump, 0) == 0 ? json_loads(dump, 0, NULL) : NULL;
    char id[16];
    snprintf(id, sizeof(id), "%d", slot);
    json_t *kdf = json_object_get(json_object_get(json_object_get(o, "keyslots"), id), "kdf");
    const char *salt = json_string_value(json_object_get(kdf, "salt"));
    if (salt != NULL && strlen(salt) < size)
        snprintf(ret, size, "%s", salt);
    json_decref(o);
}

/* A keyslot for key, authorised by auth (a passphrase or key that opens another keyslot), under
 * number slot (CRYPT_ANY_SLOT: the first free): PBKDF2 with few iterations, as the key is 256
 * random bits (keyfleet's KDF, luks2_slots.h). The slot, or a negative errno. */
static int add_keyslot(struct crypt_device *cd, int slot, const kf_secbuf *auth, const kf_secbuf *key)
{
    struct crypt_pbkdf_type pbkdf = {.type = CRYPT_KDF_PBKDF2,
                                     .hash = KFA_LUKS2_KDF_HASH,
                                     .iterations = KFA_LUKS2_KDF_ITERATIONS,
                                     .flags = CRYPT_PBKDF_NO_BENCHMARK};
    int r = sym_crypt_set_pbkdf_type(cd, &pbkdf);
    return r < 0 ? r
                 : sym_crypt_keyslot_add_by_passphrase(cd, slot, (const char *)auth->data, auth->len,
                                                       (const char *)key->data, key->len);
}

static int find_adding(struct crypt_device *cd, int *ret_token);
static int write_adding(struct crypt_device *cd, const kfa_volume *v, int *token, int slot);
static void drop_adding(struct crypt_device *cd, int *token);

/* The enrolled keyslot's number is recorded (a keyfleet-adding token) before it is added, as a
 * rotation's is: an enroll cut off before its token left an unnamed keyslot whose key the
 * coordinators hold, which no erase could then kill or confirm (review rev26e E1). A recorded
 * keyslot an earlier run left is killed first (only while keyfleet's: luks2_slots.h). */
static int enroll_keyslot(struct crypt_device *cd, kfa_volume *v, int *at, const kf_secbuf *auth,
                          const kf_secbuf *key, kf_err *err)
{
    int prev = find_adding(cd, at), r;
    if (prev >= 0 && (r = kfa_luks2_kill_adding(cd, v->path, prev, NULL, err)) != 0)
        return r;
    int slot = kfa_luks2_free_slot(cd);
    if (slot < 0)
        return kf_err_set(err, slot, "%s: no free keyslot", v->path);
    /* The record in the highest free token, so the keyfleet token takes the lowest as before. */
    for (int t = MAX_TOKENS - 1; *at < 0 && t >= 0; t--)
        if (sym_crypt_token_status(cd, t, NULL) == CRYPT_TOKEN_INACTIVE)
            *at = t;
    if ((r = write_adding(cd, v, at, slot)) != 0)
        return kf_err_set(err, -EIO, "%s: cannot record the new keyslot: %s", v->path, strerror(-r));
    r = add_keyslot(cd, slot, auth, key);
    if (r < 0) {
        drop_adding(cd, at);
        return kf_err_set(err, r == -EPERM ? -EACCES : r, "%s: cannot add a keyslot: %s", v->path,
                          r == -EPERM ? "the existing passphrase is wrong" : strerror(-r));
    }
    kfa_test_crash_point("enroll_keyslot"); /* the keyslot written, recorded, no keyfleet token yet */
    return r;
}

static int luks_enroll(const kfa_config *cfg, kfa_volume *v, const kf_secbuf *key, const char *wrapped,
                       const kf_secbuf *auth, kf_err *err)
{
    if (auth == NULL)
        return kf_err_set(err, -EINVAL, "%s: enrolling needs an existing passphrase or key file", v->path);
    struct crypt_device *cd = NULL;
    int r = device_of(v, &cd, err);
    if (r != 0)
        return r;
    int at = -1;
    int slot = enroll_keyslot(cd, v, &at, auth, key, err);
    if (slot < 0)
        return slot;
    /* Seal, then verify: the new keyslot must open with the key before anything points at it. */
    uint64_t t0 = kf_thread_cpu_ms(); /* CPU time: a busy machine must not look like a slow digest */
    r = sym_crypt_activate_by_passphrase(cd, NULL, slot, (const char *)key->data, key->len, 0);
    v->enroll_verify_ms = (uint32_t)(kf_thread_cpu_ms() - t0);
    if (r == slot)
        digest_cost(cd, slot, v);
    char *json = r == slot ? token_json(cfg, v, slot, wrapped) : NULL;
    int token = json != NULL ? sym_crypt_token_json_set(cd, CRYPT_ANY_TOKEN, json) : -EIO;
    free(json);
    if (token < 0) {
        sym_crypt_keyslot_destroy(cd, slot);
        drop_adding(cd, &at);
        return kf_err_set(err, -EIO, "%s: the new keyslot did not verify or the token could not be written", v->path);
    }
    drop_adding(cd, &at); /* the keyfleet token names the keyslot now */
    /* A re-enrollment replaces the previous keyfleet slot and token. */
    if (v->token >= 0 && v->token != token) {
        sym_crypt_token_json_set(cd, v->token, NULL);
        if (v->keyslot >= 0 && v->keyslot != slot)
            sym_crypt_keyslot_destroy(cd, v->keyslot);
    }
    v->keyslot = slot;
    v->token = token;
    free(v->wrapped);
    v->wrapped = strdup(wrapped);
    return 0;
}

/* libcryptsetup answers -ENOTSUP when it cannot reach device-mapper (cryptsetup itself then asks
 * "Is dm_mod kernel module loaded?"); without the kernel's device-mapper misc device that is the
 * cause, and saying so beats "Operation not supported". */
static int activation_failed(const kfa_volume *v, int r, kf_err *err)
{
    if (r == -ENOTSUP && access("/sys/class/misc/device-mapper", F_OK) != 0)
        return kf_err_set(err, r, "%s: activation failed: no device-mapper in this kernel (is dm_mod loaded? "
                                  "modprobe dm_mod)", v->path);
    return kf_err_set(err, r, "%s: activation failed: %s", v->path, strerror(-r));
}

static int luks_unlock(const kfa_config *cfg, kfa_volume *v, const kf_secbuf *key, kf_err *err)
{
    struct crypt_device *cd = NULL;
    int r = device_of(v, &cd, err);
    if (r != 0)
        return r;
    const char *name = cfg->luks_activate ? v->name : NULL;
    r = sym_crypt_activate_by_passphrase(cd, name, v->keyslot >= 0 ? v->keyslot : CRYPT_ANY_SLOT, (const char *)key->data,
                                     key->len, 0);
    if (r == -EPERM)
        return kf_err_set(err, -EKEYREJECTED, "%s: the released key does not open the volume", v->path);
    if (r < 0)
        return activation_failed(v, r, err);
    v->unlocked = true;
    return 0;
}

static int luks_store_wrapped(const kfa_config *cfg, kfa_volume *v, const char *wrapped, kf_err *err)
{
    struct crypt_device *cd = NULL;
    int r = device_of(v, &cd, err);
    if (r != 0)
        return r;
    char *json = token_json(cfg, v, v->keyslot, wrapped);
    r = json != NULL ? sym_crypt_token_json_set(cd, v->token, json) : -ENOMEM;
    free(json);
    if (r < 0)
        return kf_err_set(err, -EIO, "%s: cannot update the keyfleet token", v->path);
    free(v->wrapped);
    v->wrapped = strdup(wrapped);
    return 0;
}

static int luks_store_tpm(const kfa_config *cfg, kfa_volume *v, const char *blob, kf_err *err)
{
    if (v->tpm_part != NULL) /* the one place holds the TPM part: no whole copy may exist */
        return kf_err_set(err, -EPERM, "%s needs TPM and network (require: [tpm_and_network]): no TPM copy of its "
                          "key can be stored", v->path);
    char *old = v->tpm_blob;
    if ((v->tpm_blob = strdup(blob)) == NULL) {
        v->tpm_blob = old;
        return kf_err_set(err, -ENOMEM, "out of memory");
    }
    char *wrapped = strdup(v->wrapped);
    int r = wrapped != NULL ? luks_store_wrapped(cfg, v, wrapped, err) : -ENOMEM;
    free(wrapped);
    if (r != 0) {
        free(v->tpm_blob);
        v->tpm_blob = old;
        return r;
    }
    free(old);
    return 0;
}

/* The kill switch: closes the mapping this agent opened. A mapping still in use (a mounted
 * filesystem) is marked for deferred removal, closed by the kernel when its last user goes, and
 * reported as an error until then. */
static int luks_lock(const kfa_config *cfg, kfa_volume *v, bool *changed, kf_err *err)
{
    *changed = false;
    if (!cfg->luks_activate || !v->unlocked)
        return 0; /* nothing mapped: the key was only verified, or never loaded */
    int r = kfa_cryptsetup_load(err);
    if (r != 0)
        return r;
    struct crypt_device *cd = NULL;
    r = sym_crypt_init_by_name(&cd, v->name);
    if (r == -ENODEV)
        return 0;
    if (r < 0)
        return kf_err_set(err, r, "%s: cannot open mapping %s: %s", v->path, v->name, strerror(-r));
    sym_crypt_set_log_callback(cd, quiet, NULL);
    r = sym_crypt_deactivate_by_name(cd, v->name, 0);
    if (r == -EBUSY && sym_crypt_deactivate_by_name(cd, v->name, CRYPT_DEACTIVATE_DEFERRED) == 0) {
        sym_crypt_free(cd);
        return kf_err_set(err, -EBUSY, "%s: mapping %s is in use; it closes when its last user does", v->path,
                          v->name);
    }
    sym_crypt_free(cd);
    if (r < 0)
        return kf_err_set(err, r, "%s: cannot close mapping %s: %s", v->path, v->name, strerror(-r));
    v->unlocked = false;
    *changed = true;
    return 0;
}

/* A rotation's new keyslot is recorded before it exists in a token of its own type, which the
 * keyfleet token's strict parser, older agents and token plugins skip (a new field in the keyfleet
 * token would stop them unlocking):
 *   {"type":"keyfleet-adding","keyslots":[],"keyfleet_volume_id":UUID,"keyfleet_adding":"N"}
 * A run cut off before the token marked rotating names the keyslot leaves a number that the next
 * rotation and an erase look at (review rev26c R4; luks2_slots.h). */
#define ADDING_TOKEN_TYPE "keyfleet-adding"

/* The recorded keyslot (-1: none) and its token in *ret_token (-1: none). */
static int find_adding(struct crypt_device *cd, int *ret_token)
{
    *ret_token = -1;
    for (int t = 0; t < MAX_TOKENS; t++) {
        const char *type = NULL, *json = NULL;
        crypt_token_info info = sym_crypt_token_status(cd, t, &type);
        if (info == CRYPT_TOKEN_INACTIVE || type == NULL || strcmp(type, ADDING_TOKEN_TYPE) != 0)
            continue;
        json_t *o = sym_crypt_token_json_get(cd, t, &json) >= 0 ? json_loads(json, 0, NULL) : NULL;
        const char *n = json_string_value(json_object_get(o, "keyfleet_adding"));
        char *end = NULL;
        long k = n != NULL ? strtol(n, &end, 10) : -1;
        /* Read while o (which owns n) lives (review rev26e K4: read after json_decref, it was
         * garbage, and the record was mostly ignored). */
        bool valid = n != NULL && *n != '\0' && *end == '\0' && k >= 0 && k < 32;
        json_decref(o);
        *ret_token = t;
        return valid ? (int)k : -1;
    }
    return -1;
}

/* Writes the record of keyslot slot into token *token (-1: a new one). 0 or a negative errno. */
static int write_adding(struct crypt_device *cd, const kfa_volume *v, int *token, int slot)
{
    char n[16];
    snprintf(n, sizeof(n), "%d", slot);
    json_t *o = json_pack("{s:s, s:[], s:s, s:s}", "type", ADDING_TOKEN_TYPE, "keyslots", "keyfleet_volume_id", v->id,
                          "keyfleet_adding", n);
    char *json = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    int r = json != NULL ? sym_crypt_token_json_set(cd, *token >= 0 ? *token : CRYPT_ANY_TOKEN, json) : -ENOMEM;
    free(json);
    if (r < 0)
        return r;
    *token = r;
    return 0;
}

static void drop_adding(struct crypt_device *cd, int *token)
{
    if (*token >= 0)
        sym_crypt_token_json_set(cd, *token, NULL);
    *token = -1;
}

/* The new key's keyslot, its number recorded before it exists (token *at). The slot, or a
 * negative errno with err set. */
static int add_recorded(struct crypt_device *cd, kfa_volume *v, int *at, const kf_secbuf *old_key,
                        const kf_secbuf *new_key, kf_err *err)
{
    int slot = kfa_luks2_free_slot(cd);
    if (slot < 0)
        return kf_err_set(err, slot, "%s: no free keyslot for the new key", v->path);
    int r = write_adding(cd, v, at, slot);
    if (r != 0)
        return kf_err_set(err, -EIO, "%s: cannot record the new keyslot: %s", v->path, strerror(-r));
    kfa_test_crash_point("adding_record"); /* the number recorded, no keyslot yet */
    r = add_keyslot(cd, slot, old_key, new_key);
    if (r < 0) {
        drop_adding(cd, at);
        return kf_err_set(err, r == -EPERM ? -EKEYREJECTED : r, "%s: cannot add a keyslot for the new key: %s",
                          v->path, r == -EPERM ? "the current key does not open the volume" : strerror(-r));
    }
    return r;
}

static int luks_rotate_stage(const kfa_config *cfg, kfa_volume *v, const kf_secbuf *old_key,
                             const kf_secbuf *new_key, const char *wrapped, kf_err *err)
{
    struct crypt_device *cd = NULL;
    int r = device_of(v, &cd, err);
    if (r != 0)
        return r;
    int at;
    int prev = find_adding(cd, &at);
    /* A run cut off after adding the keyslot but before its token left a keyslot the new key
     * opens (BEGIN hands out the same key again): use it rather than add another. One it does not
     * open holds a key the coordinators dropped: killed, if keyfleet's. */
    int slot = sym_crypt_activate_by_passphrase(cd, NULL, CRYPT_ANY_SLOT, (const char *)new_key->data, new_key->len, 0);
    if (slot < 0 && prev >= 0 && (r = kfa_luks2_kill_adding(cd, v->path, prev, NULL, err)) != 0)
        return r;
    if (slot < 0 && (slot = add_recorded(cd, v, &at, old_key, new_key, err)) < 0)
        return slot;
    kfa_test_crash_point("keyslot");
    keyslot_salt(cd, v->keyslot, v->replaces_salt, sizeof(v->replaces_salt));
    const char *tpm = v->tpm_blob_next != NULL ? v->tpm_blob_next : v->tpm_part_next; /* a copy, or a part */
    char *json = token_json_as(cfg, v, slot, wrapped, true, tpm);
    int token = json != NULL ? sym_crypt_token_json_set(cd, CRYPT_ANY_TOKEN, json) : -ENOMEM;
    free(json);
    char *copy = token >= 0 ? strdup(wrapped) : NULL;
    if (copy == NULL) {
        if (token >= 0)
            sym_crypt_token_json_set(cd, token, NULL);
        sym_crypt_keyslot_destroy(cd, slot);
        drop_adding(cd, &at);
        return kf_err_set(err, -EIO, "%s: cannot write the new keyfleet token", v->path);
    }
    /* The token marked rotating names the keyslot now; a record left (its removal failing) names
     * the same keyslot, which an erase kills anyway and the next rotation reuses or kills. */
    kfa_test_crash_point("rotating_token"); /* the token names the keyslot, its record is not dropped yet */
    drop_adding(cd, &at);
    free(v->wrapped_next);
    v->wrapped_next = copy;
    v->next_keyslot = slot;
    v->next_token = token;
    return 0;
}

/* Kills keyslot slot when it is still there and still the one recorded (its KDF salt, expect):
 * once killed, its number is free, and an operator's passphrase added before a resumed run must
 * not die in its place. A keyslot that cannot be told apart is kept, and logged. */
static int kill_recorded(struct crypt_device *cd, const char *path, int slot, const char *expect, kf_err *err)
{
    crypt_keyslot_info ki = sym_crypt_keyslot_status(cd, slot);
    if (ki != CRYPT_SLOT_ACTIVE && ki != CRYPT_SLOT_ACTIVE_LAST)
        return 0;
    char salt[65];
    keyslot_salt(cd, slot, salt, sizeof(salt));
    if (expect[0] == '\0' || strcmp(salt, expect) != 0) {
        kf_log_warn("old_keyslot_kept", "volume=%s keyslot=%d reason=%s", kf_log_q(path), slot,
                    expect[0] == '\0' ? "\"no salt recorded to tell it is the old key's\""
                                     : "\"another keyslot now has its number\"");
        return 0;
    }
    int r = sym_crypt_keyslot_destroy(cd, slot);
    return r < 0 ? kf_err_set(err, r, "%s: cannot kill the old keyslot %d: %s", path, slot, strerror(-r)) : 0;
}

/* Kills the old key's keyslot (a rotation's), as kill_recorded. */
static int kill_replaced(struct crypt_device *cd, kfa_volume *v, int slot, kf_err *err)
{
    if (slot < 0 || slot == v->keyslot)
        return 0;
    return kill_recorded(cd, v->path, slot, v->replaces_salt, err);
}

/* Rewrites the rotating token without keyfleet_replaces once the old keyslot is gone, so a later
 * run has no keyslot number left to kill. */
static int drop_replaces(const kfa_config *cfg, kfa_volume *v, kf_err *err)
{
    if (v->replaces_keyslot < 0)
        return 0;
    int slot = v->replaces_keyslot;
    char salt[sizeof(v->replaces_salt)];
    snprintf(salt, sizeof(salt), "%s", v->replaces_salt);
    v->replaces_keyslot = -1;
    v->replaces_salt[0] = '\0';
    char *wrapped = strdup(v->wrapped);
    int r = wrapped != NULL ? luks_store_wrapped(cfg, v, wrapped, err) : kf_err_set(err, -ENOMEM, "out of memory");
    free(wrapped);
    if (r != 0) {
        v->replaces_keyslot = slot;
        snprintf(v->replaces_salt, sizeof(v->replaces_salt), "%s", salt);
    }
    return r;
}

static int luks_rotate_retire(const kfa_config *cfg, kfa_volume *v, const kf_secbuf *old_key,
                              const kf_secbuf *new_key, kf_err *err)
{
    (void)old_key; /* the new keyslot is checked with the new key; the old one was needed at stage */
    struct crypt_device *cd = NULL;
    int r = device_of(v, &cd, err);
    if (r != 0)
        return r;
    if (v->rotating) { /* the old token is gone (and the new keyslot was verified before it went) */
        r = kill_replaced(cd, v, v->replaces_keyslot, err);
        return r == 0 ? drop_replaces(cfg, v, err) : r;
    }
    if (v->wrapped_next == NULL || v->next_keyslot < 0 || new_key == NULL)
        return kf_err_set(err, -EINVAL, "%s: no rotation in progress", v->path);
    /* Verify: the new keyslot opens with the new key before the old one goes. */
    r = sym_crypt_activate_by_passphrase(cd, NULL, v->next_keyslot, (const char *)new_key->data, new_key->len, 0);
    if (r != v->next_keyslot)
        return kf_err_set(err, -EKEYREJECTED, "%s: the new key does not open its keyslot %d; the old key stays",
                          v->path, v->next_keyslot);
    /* The old token first, then its keyslot (killing a keyslot unassigns it from its token,
     * which the strict parser would refuse): the new token names the old keyslot, so a run cut
     * off between the two kills it later. */
    int old_slot = v->keyslot;
    if (v->token >= 0 && v->token != v->next_token && (r = sym_crypt_token_json_set(cd, v->token, NULL)) < 0)
        return kf_err_set(err, r, "%s: cannot remove the old keyfleet token %d", v->path, v->token);
    free(v->wrapped);
    next_becomes_key(v, old_slot);
    kfa_test_crash_point("old-token");
    if ((r = kill_replaced(cd, v, old_slot, err)) != 0)
        return r;
    kfa_test_crash_point("old-slot");
    return drop_replaces(cfg, v, err);
}

static int luks_rotate_finish(const kfa_config *cfg, kfa_volume *v, kf_err *err)
{
    if (!v->rotating)
        return 0;
    v->rotating = false;
    char *wrapped = strdup(v->wrapped);
    int r = wrapped != NULL ? luks_store_wrapped(cfg, v, wrapped, err) : kf_err_set(err, -ENOMEM, "out of memory");
    free(wrapped);
    if (r != 0)
        v->rotating = true;
    return r;
}

/* The recovery keyslot's token type (its format: "recovery keyslot" below). */
#define RECOVERY_TOKEN_TYPE "keyfleet-recovery"

static bool erased_type(const char *type)
{
    return type != NULL && (strcmp(type, TOKEN_TYPE) == 0 || strcmp(type, RECOVERY_TOKEN_TYPE) == 0 ||
                            strcmp(type, ADDING_TOKEN_TYPE) == 0);
}

/* What an erase destroys: the tokens (keyfleet's, the recovery one; with all, every token), the
 * keyslots keyfleet's tokens name, the keyslots they record as replaced (a rotation's old key,
 * a replaced recovery key), those only while their KDF salt is the recorded one, and the keyslots
 * they record as being added (keyfleet_adding: a run cut off before naming its new keyslot),
 * those only while they are keyfleet's (luks2_slots.h). */
typedef struct erase_plan {
    int tokens[MAX_TOKENS], named[2 * MAX_TOKENS], replaced[MAX_TOKENS], adding[MAX_TOKENS];
    char replaced_salt[MAX_TOKENS][65];
    size_t n_tokens, n_named, n_replaced, n_adding;
    bool recovery; /* a keyfleet-recovery token was among them */
} erase_plan;

static void plan_token(const char *json, erase_plan *p)
{
    json_t *o = json_loads(json, 0, NULL);
    json_t *a = json_object_get(o, "keyslots");
    for (size_t i = 0; json_is_array(a) && i < json_array_size(a) && p->n_named < 2 * MAX_TOKENS; i++) {
        const char *t = json_string_value(json_array_get(a, i));
        char *end = NULL;
        long k = t != NULL ? strtol(t, &end, 10) : -1;
        if (t != NULL && *t != '\0' && *end == '\0' && k >= 0 && k < 32)
            p->named[p->n_named++] = (int)k;
    }
    const char *rep = json_string_value(json_object_get(o, "keyfleet_replaces"));
    const char *salt = json_string_value(json_object_get(o, "keyfleet_replaces_salt"));
    char *end = NULL;
    long k = rep != NULL ? strtol(rep, &end, 10) : -1;
    if (rep != NULL && *rep != '\0' && *end == '\0' && k >= 0 && k < 32 && salt != NULL && strlen(salt) < 65 &&
        p->n_replaced < MAX_TOKENS) {
        p->replaced[p->n_replaced] = (int)k;
        snprintf(p->replaced_salt[p->n_replaced++], 65, "%s", salt);
    }
    const char *add = json_string_value(json_object_get(o, "keyfleet_adding"));
    k = add != NULL ? strtol(add, &end, 10) : -1;
    if (add != NULL && *add != '\0' && *end == '\0' && k >= 0 && k < 32 && p->n_adding < MAX_TOKENS)
        p->adding[p->n_adding++] = (int)k;
    json_decref(o);
}

static void plan_erase(struct crypt_device *cd, bool all, erase_plan *p)
{
    memset(p, 0, sizeof(*p));
    for (int t = 0; t < MAX_TOKENS; t++) {
        const char *type = NULL, *json = NULL;
        crypt_token_info info = sym_crypt_token_status(cd, t, &type);
        if (info == CRYPT_TOKEN_INACTIVE || (!all && (info == CRYPT_TOKEN_INVALID || !erased_type(type))))
            continue;
        p->tokens[p->n_tokens++] = t;
        p->recovery |= type != NULL && strcmp(type, RECOVERY_TOKEN_TYPE) == 0;
        if (erased_type(type) && sym_crypt_token_json_get(cd, t, &json) >= 0 && json != NULL)
            plan_token(json, p);
    }
}

static bool slot_active(struct crypt_device *cd, int slot)
{
    crypt_keyslot_info ki = sym_crypt_keyslot_status(cd, slot);
    return ki == CRYPT_SLOT_ACTIVE || ki == CRYPT_SLOT_ACTIVE_LAST;
}

/* The keyslots first, then the tokens: a run cut off in between finds the tokens again (naming
 * no keyslot now: probe calls them malformed, and an erase takes those too) and finishes; the
 * other order would leave a keyslot no token names any more (review rev26b F10). */
static int erase_keyslots(struct crypt_device *cd, const kfa_volume *v, const erase_plan *p, size_t *ret_killed,
                          kf_err *err)
{
    *ret_killed = 0;
    for (size_t i = 0; i < p->n_named; i++) {
        if (!slot_active(cd, p->named[i]))
            continue; /* named twice, or gone already */
        int r = sym_crypt_keyslot_destroy(cd, p->named[i]);
        if (r < 0)
            return kf_err_set(err, r, "%s: cannot kill keyfleet keyslot %d: %s", v->path, p->named[i], strerror(-r));
        (*ret_killed)++;
    }
    for (size_t i = 0; i < p->n_replaced; i++) {
        bool was = slot_active(cd, p->replaced[i]);
        int r = kill_recorded(cd, v->path, p->replaced[i], p->replaced_salt[i], err);
        if (r != 0)
            return r;
        *ret_killed += was && !slot_active(cd, p->replaced[i]);
    }
    for (size_t i = 0; i < p->n_adding; i++) {
        bool killed = false;
        int r = kfa_luks2_kill_adding(cd, v->path, p->adding[i], &killed, err);
        if (r != 0)
            return r;
        *ret_killed += killed;
    }
    return 0;
}

/* After the erase: no keyfleet or recovery token left, no keyslot one named still active, and no
 * keyslot with keyfleet's KDF that no token names (an orphan of a run cut off before keyslots
 * were recorded before they were added: not killed without a record, but not confirmed as erased
 * either; an operator's keyslots have another KDF, and systemd-cryptenroll's a token). */
static int erase_verify(struct crypt_device *cd, const kfa_volume *v, const erase_plan *p, kf_err *err)
{
    int orphan = kfa_luks2_orphan_slot(cd);
    if (orphan >= 0)
        return kf_err_set(err, -EIO, "%s: keyslot %d survived the erase: it has keyfleet's KDF and no token names it "
                          "(left by an interrupted keyfleet run?); check it and kill it (cryptsetup luksKillSlot) or "
                          "give it a token of its own", v->path, orphan);
    for (int t = 0; t < MAX_TOKENS; t++) {
        const char *type = NULL;
        crypt_token_info info = sym_crypt_token_status(cd, t, &type);
        if (info != CRYPT_TOKEN_INACTIVE && erased_type(type))
            return kf_err_set(err, -EIO, "%s: the %s token %d survived the erase", v->path, type, t);
    }
    for (size_t i = 0; i < p->n_named; i++)
        if (slot_active(cd, p->named[i]))
            return kf_err_set(err, -EIO, "%s: keyslot %d survived the erase", v->path, p->named[i]);
    return 0;
}

static int luks_erase(const kfa_config *cfg, kfa_volume *v, bool all, char *ret_what, size_t what_size, kf_err *err)
{
    (void)cfg;
    snprintf(ret_what, what_size, "nothing left to destroy");
    struct crypt_device *cd = NULL;
    int r = device_of(v, &cd, err);
    if (r != 0)
        return r;
    erase_plan p;
    plan_erase(cd, all, &p);
    size_t killed = 0;
    if ((r = erase_keyslots(cd, v, &p, &killed, err)) != 0)
        return r;
    kfa_test_crash_point("erase_slots");
    for (size_t i = 0; i < p.n_tokens; i++)
        if ((r = sym_crypt_token_json_set(cd, p.tokens[i], NULL)) < 0)
            return kf_err_set(err, r, "%s: cannot remove token %d: %s", v->path, p.tokens[i], strerror(-r));
    size_t others = 0;
    for (int k = 0; all && k < 32; k++) { /* luksErase: every keyslot, the passphrases too */
        if (!slot_active(cd, k))
            continue;
        if ((r = sym_crypt_keyslot_destroy(cd, k)) < 0)
            return kf_err_set(err, r, "%s: cannot kill keyslot %d: %s", v->path, k, strerror(-r));
        others++;
    }
    if ((r = erase_verify(cd, v, &p, err)) != 0)
        return r;
    free(v->wrapped);
    free(v->tpm_blob);
    free(v->wrapped_next);
    free(v->tpm_blob_next);
    v->wrapped = v->tpm_blob = v->wrapped_next = v->tpm_blob_next = NULL;
    v->keyslot = v->token = v->next_keyslot = v->next_token = v->replaces_keyslot = -1;
    if (p.n_tokens + killed > 0)
        snprintf(ret_what, what_size, "luks2: %zu keyfleet keyslot(s) killed, %zu token(s) removed with their TPM "
                 "copy%s", killed, p.n_tokens, p.recovery ? "; the recovery keyslot and its token too" : "");
    if (all)
        snprintf(ret_what, what_size, "luks2: every keyslot erased (%zu keyfleet, %zu other), %zu token(s) removed: "
                 "the data is unrecoverable", killed, others, p.n_tokens);
    return 0;
}

const kfa_driver kfa_luks2_driver = {
    .name = "luks2",
    .probe = luks_probe,
    .enroll = luks_enroll,
    .unlock = luks_unlock,
    .lock = luks_lock,
    .store_wrapped = luks_store_wrapped,
    .store_tpm = luks_store_tpm,
    .rotate_stage = luks_rotate_stage,
    .rotate_retire = luks_rotate_retire,
    .rotate_finish = luks_rotate_finish,
    .erase = luks_erase,
};

/* ------------------------------------------------------------------ recovery keyslot */

/* The recovery keyslot (docs/recovery.md) is recorded in a token of its own type, which the
 * keyfleet token's strict parser, older agents and libcryptsetup skip:
 *   {"type":"keyfleet-recovery","keyslots":["N"],"keyfleet_volume_id":UUID,
 *    "keyfleet_recovery_salt":BASE64, "keyfleet_replaces":"M","keyfleet_replaces_salt":BASE64,
 *    "keyfleet_adding":"A"}
 * (replaces only while the recovery key it replaces still has a keyslot; adding only while a run
 * adds keyslot A, recorded before it exists: review rev26c R3; a first add's token names no
 * keyslot yet, "keyslots":[] and no salt). */
typedef struct rec_token {
    int token, slot, replaces, adding;
    char salt[65], replaces_salt[65];
} rec_token;

static int slot_of(json_t *s)
{
    const char *t = json_string_value(s);
    char *end;
    long n = t != NULL ? strtol(t, &end, 10) : -1;
    return t != NULL && *t != '\0' && *end == '\0' && n >= 0 && n < 32 ? (int)n : -1;
}

/* The recovery token: 0, -ENOENT (none) or -EBADMSG. */
static int find_recovery(struct crypt_device *cd, const kfa_volume *v, rec_token *ret, kf_err *err)
{
    for (int t = 0; t < MAX_TOKENS; t++) {
        const char *type = NULL, *json = NULL;
        crypt_token_info info = sym_crypt_token_status(cd, t, &type);
        if (info == CRYPT_TOKEN_INACTIVE || type == NULL || strcmp(type, RECOVERY_TOKEN_TYPE) != 0)
            continue;
        json_t *o = sym_crypt_token_json_get(cd, t, &json) >= 0 ? json_loads(json, 0, NULL) : NULL;
        const char *salt = json_string_value(json_object_get(o, "keyfleet_recovery_salt"));
        const char *rsalt = json_string_value(json_object_get(o, "keyfleet_replaces_salt"));
        memset(ret, 0, sizeof(*ret));
        ret->token = t;
        ret->slot = slot_of(json_array_get(json_object_get(o, "keyslots"), 0));
        ret->replaces = json_object_get(o, "keyfleet_replaces") != NULL
                            ? slot_of(json_object_get(o, "keyfleet_replaces")) : -1;
        ret->adding = json_object_get(o, "keyfleet_adding") != NULL ? slot_of(json_object_get(o, "keyfleet_adding"))
                                                                     : -1;
        bool intent_only = ret->slot < 0 && ret->adding >= 0 && salt == NULL && ret->replaces < 0;
        bool ok = intent_only || (ret->slot >= 0 && salt != NULL && strlen(salt) < sizeof(ret->salt) &&
                                  (rsalt == NULL || strlen(rsalt) < sizeof(ret->replaces_salt)));
        if (ok) {
            snprintf(ret->salt, sizeof(ret->salt), "%s", salt != NULL ? salt : "");
            snprintf(ret->replaces_salt, sizeof(ret->replaces_salt), "%s", rsalt != NULL ? rsalt : "");
        }
        json_decref(o);
        return ok ? 0 : kf_err_set(err, -EBADMSG, "%s: keyfleet-recovery token %d is malformed", v->path, t);
    }
    return -ENOENT;
}

/* Writes the recovery token t says (slot -1: none yet, the first add's intent), with adding. The
 * token number (a new one for CRYPT_ANY_TOKEN), or a negative errno. */
static int write_recovery_as(struct crypt_device *cd, const kfa_volume *v, const rec_token *t, int adding)
{
    char n[16], m[16], a[16];
    snprintf(n, sizeof(n), "%d", t->slot);
    snprintf(m, sizeof(m), "%d", t->replaces);
    snprintf(a, sizeof(a), "%d", adding);
    json_t *o = json_pack("{s:s, s:[], s:s}", "type", RECOVERY_TOKEN_TYPE, "keyslots", "keyfleet_volume_id", v->id);
    if (o != NULL && t->slot >= 0) {
        json_array_append_new(json_object_get(o, "keyslots"), json_string(n));
        json_object_set_new(o, "keyfleet_recovery_salt", json_string(t->salt));
    }
    if (o != NULL && t->slot >= 0 && t->replaces >= 0) {
        json_object_set_new(o, "keyfleet_replaces", json_string(m));
        json_object_set_new(o, "keyfleet_replaces_salt", json_string(t->replaces_salt));
    }
    if (o != NULL && adding >= 0)
        json_object_set_new(o, "keyfleet_adding", json_string(a));
    char *json = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    int r = json != NULL ? sym_crypt_token_json_set(cd, t->token, json) : -ENOMEM;
    free(json);
    return r;
}

static int write_recovery(struct crypt_device *cd, const kfa_volume *v, int token, int slot, const char *salt,
                          int replaces, const char *replaces_salt)
{
    rec_token t = {.token = token, .slot = slot, .replaces = replaces, .adding = -1};
    snprintf(t.salt, sizeof(t.salt), "%s", salt);
    snprintf(t.replaces_salt, sizeof(t.replaces_salt), "%s", replaces_salt);
    return write_recovery_as(cd, v, &t, -1);
}

/* Kills the keyslot a recovery token says it replaces (by its salt), then forgets it. */
static int finish_replace(struct crypt_device *cd, const kfa_volume *v, rec_token *t, kf_err *err)
{
    if (t->replaces < 0)
        return 0;
    int r = t->replaces != t->slot ? kill_recorded(cd, v->path, t->replaces, t->replaces_salt, err) : 0;
    if (r == 0 && write_recovery(cd, v, t->token, t->slot, t->salt, -1, "") < 0)
        r = kf_err_set(err, -EIO, "%s: cannot update the keyfleet-recovery token", v->path);
    if (r == 0)
        t->replaces = -1;
    return r;
}

/* A run cut off between recording keyslot t->adding and naming it (review rev26c R3). Its key was
 * escrowed before the keyslot was added (recovery_key.c): as the escrow's current key when the
 * token names no keyslot (a first add), so the keyslot is adopted as the recovery keyslot (the
 * next replacement kills it by its salt); as the waiting replacement when the token names a live
 * keyslot, which still opens with the escrow's current key, so the added one is killed. After,
 * t records no adding; -ENOENT when no recovery keyslot is left (the token is removed). */
static int resolve_adding(struct crypt_device *cd, const kfa_volume *v, rec_token *t, kf_err *err)
{
    if (t->adding < 0)
        return 0;
    int a = t->adding, r = 0;
    if (a != t->slot && a != t->replaces && slot_active(cd, a)) {
        bool adopt = !(t->slot >= 0 && slot_active(cd, t->slot)) && kfa_luks2_slot_ours(cd, a);
        if (adopt) {
            t->slot = a;
            keyslot_salt(cd, a, t->salt, sizeof(t->salt));
            t->replaces = -1;
            kf_log_warn("recovery_keyslot_adopted", "volume=%s keyslot=%d reason=\"added by a run cut off before "
                        "its token; its key is the escrowed one\"", kf_log_q(v->path), a);
        } else {
            r = kfa_luks2_kill_adding(cd, v->path, a, NULL, err);
        }
    }
    if (r != 0)
        return r;
    t->adding = -1;
    if (t->slot < 0 || t->salt[0] == '\0') {
        if ((r = sym_crypt_token_json_set(cd, t->token, NULL)) < 0)
            return kf_err_set(err, r, "%s: cannot remove keyfleet-recovery token %d", v->path, t->token);
        return -ENOENT;
    }
    return write_recovery_as(cd, v, t, -1) < 0
               ? kf_err_set(err, -EIO, "%s: cannot update the keyfleet-recovery token", v->path) : 0;
}

/* Takes back the record of a keyslot that was not added or did not verify. */
static void undo_intent(struct crypt_device *cd, const kfa_volume *v, const rec_token *t)
{
    if (t->slot < 0)
        sym_crypt_token_json_set(cd, t->token, NULL);
    else
        write_recovery_as(cd, v, t, -1);
}

int kfa_luks2_recovery_set(kfa_volume *v, const kf_secbuf *auth, const kf_secbuf *text, bool *ret_replaced,
                           kf_err *err)
{
    *ret_replaced = false;
    struct crypt_device *cd = NULL;
    int r = device_of(v, &cd, err);
    if (r != 0)
        return r;
    rec_token old;
    r = find_recovery(cd, v, &old, err);
    if (r == 0) /* a run stopped between its keyslot and its token */
        r = resolve_adding(cd, v, &old, err);
    if (r != 0 && r != -ENOENT)
        return r;
    bool have = r == 0;
    if (have && (r = finish_replace(cd, v, &old, err)) != 0) /* a run stopped before its kill */
        return r;
    /* The keyslot's number is recorded before the keyslot exists (review rev26c R3): a run cut
     * off before the token names it leaves a number the next run and an erase look at. */
    rec_token intent = {.token = CRYPT_ANY_TOKEN, .slot = -1, .replaces = -1, .adding = -1};
    if (have)
        intent = old;
    int slot = kfa_luks2_free_slot(cd);
    if (slot < 0)
        return kf_err_set(err, slot, "%s: no free keyslot for the recovery key", v->path);
    if ((r = write_recovery_as(cd, v, &intent, slot)) < 0)
        return kf_err_set(err, -EIO, "%s: cannot record the recovery keyslot in its token", v->path);
    intent.token = r;
    kfa_test_crash_point("recovery_record"); /* the number recorded, no keyslot yet */
    r = add_keyslot(cd, slot, auth, text);
    if (r < 0) {
        undo_intent(cd, v, &intent);
        return kf_err_set(err, r == -EPERM ? -EACCES : r, "%s: cannot add the recovery keyslot: %s", v->path,
                          r == -EPERM ? "the volume's keyfleet key does not open it" : strerror(-r));
    }
    kfa_test_crash_point("recovery_keyslot"); /* the keyslot written, its token names it as being added */
    /* Seal, then verify: the keyslot must open with the text before a token points at it. */
    char salt[65];
    keyslot_salt(cd, slot, salt, sizeof(salt));
    r = sym_crypt_activate_by_passphrase(cd, NULL, slot, (const char *)text->data, text->len, 0);
    if (r == slot && salt[0] != '\0')
        r = write_recovery(cd, v, intent.token, slot, salt, have ? old.slot : -1, have ? old.salt : "");
    if (r < 0 || salt[0] == '\0') {
        sym_crypt_keyslot_destroy(cd, slot);
        undo_intent(cd, v, &intent);
        return kf_err_set(err, -EIO, "%s: the recovery keyslot did not verify or its token could not be written",
                          v->path);
    }
    kfa_test_crash_point("recovery_token");
    if (!have)
        return 0;
    *ret_replaced = true;
    rec_token now = {.token = intent.token, .slot = slot, .replaces = old.slot, .adding = -1};
    snprintf(now.salt, sizeof(now.salt), "%s", salt);
    snprintf(now.replaces_salt, sizeof(now.replaces_salt), "%s", old.salt);
    return finish_replace(cd, v, &now, err);
}

int kfa_luks2_recovery_slot(kfa_volume *v, int *ret_slot)
{
    struct crypt_device *cd = NULL;
    kf_err err = {0};
    rec_token t;
    int r = device_of(v, &cd, &err);
    if (r == 0)
        r = find_recovery(cd, v, &t, &err);
    *ret_slot = r == 0 ? t.slot : -1;
    return r;
}

void kfa_volume_clear(kfa_volume *v)
{
    free(v->wrapped);
    v->wrapped = NULL;
    free(v->tpm_blob);
    v->tpm_blob = NULL;
    free(v->tpm_part);
    v->tpm_part = NULL;
    free(v->wrapped_next);
    v->wrapped_next = NULL;
    free(v->tpm_blob_next);
    v->tpm_blob_next = NULL;
    free(v->tpm_part_next);
    v->tpm_part_next = NULL;
    if (v->handle != NULL && v->kind == KFA_VOL_LUKS2)
        sym_crypt_free(v->handle);
    v->handle = NULL;
}
