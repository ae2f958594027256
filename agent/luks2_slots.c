/* Keyslots keyfleet makes and the ones it must keep (luks2_slots.h). Read from the LUKS2 JSON
 * header as libcryptsetup dumps it:
 *   "keyslots":{"N":{"kdf":{"type":"pbkdf2","hash":"sha512","iterations":1000,...}}},
 *   "tokens":{"T":{"type":"...","keyslots":["N",...]}} */
#include "luks2_slots.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>
#include "cryptsetup_dl.h"
#include "kf_log.h"

#define MAX_SLOTS 32

static bool active(struct crypt_device *cd, int slot)
{
    crypt_keyslot_info ki = sym_crypt_keyslot_status(cd, slot);
    return ki == CRYPT_SLOT_ACTIVE || ki == CRYPT_SLOT_ACTIVE_LAST;
}

int kfa_luks2_free_slot(struct crypt_device *cd)
{
    for (int k = 0; k < MAX_SLOTS; k++)
        if (sym_crypt_keyslot_status(cd, k) == CRYPT_SLOT_INACTIVE)
            return k;
    return -ENOSPC;
}

static bool keyfleet_type(const char *type)
{
    return type != NULL && (strcmp(type, "keyfleet") == 0 || strcmp(type, "keyfleet-recovery") == 0 ||
                            strcmp(type, "keyfleet-adding") == 0);
}

/* Whether a token names keyslot id: any token (any_type), or one of another kind than keyfleet's. */
static bool named(json_t *hdr, const char *id, bool any_type)
{
    const char *t;
    json_t *tok;
    json_object_foreach(json_object_get(hdr, "tokens"), t, tok) {
        if (!any_type && keyfleet_type(json_string_value(json_object_get(tok, "type"))))
            continue;
        size_t i;
        json_t *ks;
        json_array_foreach(json_object_get(tok, "keyslots"), i, ks)
            if (json_is_string(ks) && strcmp(json_string_value(ks), id) == 0)
                return true;
    }
    return false;
}

static bool keyfleet_kdf(json_t *hdr, const char *id)
{
    json_t *kdf = json_object_get(json_object_get(json_object_get(hdr, "keyslots"), id), "kdf");
    const char *type = json_string_value(json_object_get(kdf, "type"));
    const char *hash = json_string_value(json_object_get(kdf, "hash"));
    json_int_t n = json_integer_value(json_object_get(kdf, "iterations"));
    return type != NULL && strcmp(type, "pbkdf2") == 0 && hash != NULL && strcmp(hash, KFA_LUKS2_KDF_HASH) == 0 &&
           n == KFA_LUKS2_KDF_ITERATIONS;
}

static json_t *header(struct crypt_device *cd)
{
    const char *dump = NULL;
    return sym_crypt_dump_json(cd, &dump, 0) == 0 && dump != NULL ? json_loads(dump, 0, NULL) : NULL;
}

static bool ours(struct crypt_device *cd, json_t *hdr, int slot, bool unnamed)
{
    char id[16];
    snprintf(id, sizeof(id), "%d", slot);
    return slot >= 0 && slot < MAX_SLOTS && active(cd, slot) && keyfleet_kdf(hdr, id) && !named(hdr, id, unnamed);
}

bool kfa_luks2_slot_ours(struct crypt_device *cd, int slot)
{
    json_t *hdr = header(cd);
    /* No token at all may name it, keyfleet's included (review rev26e K1, K2): a recorded number
     * can since have been taken by another of keyfleet's keyslots (the recovery keyslot, a
     * rotation's), which its own token names; a keyslot being added is named by none. */
    bool r = hdr != NULL && ours(cd, hdr, slot, true);
    json_decref(hdr);
    return r;
}

int kfa_luks2_kill_adding(struct crypt_device *cd, const char *path, int slot, bool *ret_killed, kf_err *err)
{
    if (ret_killed != NULL)
        *ret_killed = false;
    if (slot < 0 || slot >= MAX_SLOTS || !active(cd, slot))
        return 0; /* the run stopped before its keyslot: nothing to kill */
    if (!kfa_luks2_slot_ours(cd, slot)) {
        kf_log_warn("adding_keyslot_kept", "volume=%s keyslot=%d reason=%s", kf_log_q(path), slot,
                    "\"another keyslot (not keyfleet's KDF, or named by another token) now has its number\"");
        return 0;
    }
    int r = sym_crypt_keyslot_destroy(cd, slot);
    if (r < 0)
        return kf_err_set(err, r, "%s: cannot kill keyslot %d of an interrupted add: %s", path, slot, strerror(-r));
    kf_log_warn("adding_keyslot_killed", "volume=%s keyslot=%d reason=\"added by a run that did not record it\"",
                kf_log_q(path), slot);
    if (ret_killed != NULL)
        *ret_killed = true;
    return 0;
}

int kfa_luks2_orphan_slot(struct crypt_device *cd)
{
    json_t *hdr = header(cd);
    int found = -1;
    for (int k = 0; hdr != NULL && k < MAX_SLOTS && found < 0; k++)
        if (ours(cd, hdr, k, true))
            found = k;
    json_decref(hdr);
    return found;
}
