#include "luks2_token.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "kf_hostport.h"

#define BAD(err, ...) kf_err_set(err, -EBADMSG, "malformed: " __VA_ARGS__)

static bool printable(const char *s)
{
    for (; *s; s++)
        if (*s <= ' ' || *s > '~')
            return false;
    return true;
}

static bool only(const char *s, const char *set)
{
    return s[strspn(s, set)] == '\0';
}

/* A field name fit for a message: short identifiers as they are, anything else not at all. */
static const char *field_name(const char *k)
{
    return strlen(k) <= 40 && only(k, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") ? k
                                                                                                          : "(unprintable)";
}

void kfa_token_clear(kfa_token *t)
{
    free(t->wrapped);
    free(t->tpm_blob);
    free(t->tpm_part);
    for (size_t i = 0; i < t->n_coordinators; i++)
        free(t->coordinators[i]);
    free(t->coordinators);
    memset(t, 0, sizeof(*t));
    t->keyslot = -1;
}

int kfa_wrapped_check(const char *s, kfa_token *ret_parts, kf_err *err)
{
    size_t n = strlen(s);
    if (n > KFA_TOKEN_WRAPPED_MAX)
        return BAD(err, "keyfleet_wrapped_key is %zu bytes, more than %d", n, KFA_TOKEN_WRAPPED_MAX);
    if (strncmp(s, "kf:", 3) != 0)
        return BAD(err, "keyfleet_wrapped_key is not a keyfleet wrapped key (no kf: prefix)");
    if (!printable(s))
        return BAD(err, "keyfleet_wrapped_key holds spaces or characters outside printable ASCII");
    const char *backend = s + 3, *c1 = strchr(backend, ':');
    const char *ref = c1 != NULL ? c1 + 1 : NULL, *c2 = ref != NULL ? strchr(ref, ':') : NULL;
    if (c1 == NULL || c1 == backend || c1 - backend > 31 || c2 == NULL || c2 == ref || c2[1] == '\0')
        return BAD(err, "keyfleet_wrapped_key is not kf:BACKEND:REF:DATA");
    char b[32];
    memcpy(b, backend, (size_t)(c1 - backend));
    b[c1 - backend] = '\0';
    if (!only(b, "abcdefghijklmnopqrstuvwxyz0123456789_-"))
        return BAD(err, "keyfleet_wrapped_key names no valid KMS backend");
    if (ret_parts != NULL) {
        snprintf(ret_parts->backend, sizeof(ret_parts->backend), "%s", b);
        size_t rlen = (size_t)(c2 - ref) < sizeof(ret_parts->key_ref) - 1 ? (size_t)(c2 - ref)
                                                                          : sizeof(ret_parts->key_ref) - 1;
        memcpy(ret_parts->key_ref, ref, rlen);
        ret_parts->key_ref[rlen] = '\0';
    }
    return 0;
}

static int check_volume_id(const char *vid, const char *uuid, kf_err *err)
{
    size_t n = strlen(vid);
    if (n == 0 || n > 64 || !only(vid, "0123456789abcdefABCDEF-"))
        return BAD(err, "keyfleet_volume_id is not a LUKS UUID");
    if (uuid != NULL && strcmp(vid, uuid) != 0)
        return kf_err_set(err, -EBADMSG, "keyfleet_volume_id names volume %s, not this one (%.64s)", vid, uuid);
    return 0;
}

/* A keyslot number as LUKS2 writes it: a string of canonical decimal. */
static bool slot_number(const char *s, int *ret)
{
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (s[0] < '0' || s[0] > '9' || *end != '\0' || (s[0] == '0' && s[1] != '\0') || v >= KFA_TOKEN_KEYSLOTS)
        return false;
    *ret = (int)v;
    return true;
}

static int check_keyslots(json_t *slots, int *ret, kf_err *err)
{
    const char *s = json_string_value(json_array_get(slots, 0));
    if (!json_is_array(slots) || json_array_size(slots) != 1 || s == NULL)
        return BAD(err, "keyslots must name exactly one keyslot, as a string");
    return slot_number(s, ret) ? 0 : BAD(err, "keyslots names no valid keyslot (0..%d)", KFA_TOKEN_KEYSLOTS - 1);
}

static int check_coordinators(json_t *a, kfa_token *t, kf_err *err)
{
    if (!json_is_array(a) || json_array_size(a) > KFA_TOKEN_COORDINATORS_MAX)
        return BAD(err, "keyfleet_coordinators must be a list of at most %d host:port", KFA_TOKEN_COORDINATORS_MAX);
    size_t n = json_array_size(a);
    t->coordinators = calloc(n + 1, sizeof(*t->coordinators));
    if (t->coordinators == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const char *s = json_string_value(json_array_get(a, i));
        char host[256], port[8];
        char *end = NULL;
        if (s == NULL || strlen(s) > 262 || !printable(s) ||
            !kf_hostport_split(s, host, sizeof(host), port, sizeof(port)) || host[0] == '\0' ||
            strtol(port, &end, 10) < 1 || strtol(port, NULL, 10) > 65535 || *end != '\0')
            return BAD(err, "keyfleet_coordinators entry %zu is not host:port", i + 1);
        if ((t->coordinators[i] = strdup(s)) == NULL)
            return kf_err_set(err, -ENOMEM, "out of memory");
        t->n_coordinators++;
    }
    return 0;
}

int kfa_tpm_blob_check(const char *s, kf_err *err)
{
    size_t n = strlen(s);
    if (n > KFA_TOKEN_TPM_MAX)
        return BAD(err, "keyfleet_tpm_sealed is %zu bytes, more than %d", n, KFA_TOKEN_TPM_MAX);
    /* kftpm1: a whole copy of the key (offline fallback); kftpmnet1: a tpm_and_network TPM part */
    size_t p = strncmp(s, "kftpm1:", 7) == 0 ? 7 : strncmp(s, "kftpmnet1:", 10) == 0 ? 10 : 0;
    if (p == 0 || s[p] == '\0' || !only(s + p, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="))
        return BAD(err, "keyfleet_tpm_sealed is not a keyfleet TPM blob (kftpm1:BASE64 or kftpmnet1:BASE64)");
    return 0;
}

static int check_tpm(json_t *v, kfa_token *t, kf_err *err)
{
    const char *s = json_string_value(v);
    if (s == NULL)
        return BAD(err, "keyfleet_tpm_sealed must be a string");
    int r = kfa_tpm_blob_check(s, err);
    if (r != 0)
        return r;
    /* A rotation never stages a two-part key (rotate.c refuses those volumes). */
    bool part = strncmp(s, "kftpmnet1:", 10) == 0;
    if (part && t->rotating)
        return BAD(err, "keyfleet_tpm_sealed holds a tpm_and_network TPM part in a token marked rotating");
    if ((*(part ? &t->tpm_part : &t->tpm_blob) = strdup(s)) == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    return 0;
}

static int parse(json_t *o, const char *uuid, kfa_token *t, kf_err *err)
{
    static const char *const known[] = {"type", "keyslots", "keyfleet_volume_id", "keyfleet_wrapped_key",
                                        "keyfleet_coordinators", "keyfleet_tpm_sealed", "keyfleet_version",
                                        "keyfleet_rotating", "keyfleet_replaces", "keyfleet_replaces_salt"};
    if (!json_is_object(o))
        return BAD(err, "not a JSON object");
    const char *key;
    json_t *val;
    json_object_foreach(o, key, val) {
        size_t i = 0;
        while (i < sizeof(known) / sizeof(known[0]) && strcmp(key, known[i]) != 0)
            i++;
        if (i == sizeof(known) / sizeof(known[0]))
            return BAD(err, "unknown field %s", field_name(key));
    }
    const char *type = json_string_value(json_object_get(o, "type"));
    if (type == NULL || strcmp(type, KFA_TOKEN_TYPE) != 0)
        return BAD(err, "type is not \"keyfleet\"");
    json_t *ver = json_object_get(o, "keyfleet_version");
    if (ver != NULL && !(json_is_integer(ver) && json_integer_value(ver) == 1))
        return kf_err_set(err, -EBADMSG, "keyfleet_version is not 1: written by a newer keyfleet (upgrade this one)");
    int r = check_keyslots(json_object_get(o, "keyslots"), &t->keyslot, err);
    if (r != 0)
        return r;
    json_t *v = json_object_get(o, "keyfleet_volume_id");
    if (v == NULL)
        return BAD(err, "keyfleet_volume_id is missing");
    if (!json_is_string(v))
        return BAD(err, "keyfleet_volume_id must be a string");
    if ((r = check_volume_id(json_string_value(v), uuid, err)) != 0)
        return r;
    snprintf(t->volume_id, sizeof(t->volume_id), "%s", json_string_value(v));
    v = json_object_get(o, "keyfleet_wrapped_key");
    if (v == NULL)
        return BAD(err, "keyfleet_wrapped_key is missing");
    if (!json_is_string(v))
        return BAD(err, "keyfleet_wrapped_key must be a string");
    if ((r = kfa_wrapped_check(json_string_value(v), t, err)) != 0)
        return r;
    if ((t->wrapped = strdup(json_string_value(v))) == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    v = json_object_get(o, "keyfleet_coordinators");
    if (v == NULL)
        return BAD(err, "keyfleet_coordinators is missing");
    if ((r = check_coordinators(v, t, err)) != 0)
        return r;
    v = json_object_get(o, "keyfleet_rotating");
    if (v != NULL && !json_is_true(v))
        return BAD(err, "keyfleet_rotating must be true when present");
    t->rotating = v != NULL;
    t->replaces = -1;
    v = json_object_get(o, "keyfleet_replaces");
    if (v != NULL && (!t->rotating || !json_is_string(v) || !slot_number(json_string_value(v), &t->replaces) ||
                      t->replaces == t->keyslot))
        return BAD(err, "keyfleet_replaces must name another keyslot, as a string, in a token marked rotating");
    v = json_object_get(o, "keyfleet_replaces_salt");
    const char *salt = json_string_value(v);
    if (v != NULL && (t->replaces < 0 || salt == NULL || salt[0] == '\0' || strlen(salt) >= sizeof(t->replaces_salt) ||
                      !only(salt, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")))
        return BAD(err, "keyfleet_replaces_salt must be a keyslot's KDF salt (base64), with keyfleet_replaces");
    if (salt != NULL)
        snprintf(t->replaces_salt, sizeof(t->replaces_salt), "%s", salt);
    v = json_object_get(o, "keyfleet_tpm_sealed");
    return v != NULL ? check_tpm(v, t, err) : 0;
}

int kfa_token_parse(const char *json, const char *uuid, kfa_token *ret, kf_err *err)
{
    memset(ret, 0, sizeof(*ret));
    ret->keyslot = -1;
    if (json == NULL)
        return BAD(err, "no JSON");
    size_t n = strnlen(json, KFA_TOKEN_JSON_MAX + 1);
    if (n > KFA_TOKEN_JSON_MAX)
        return BAD(err, "more than %d bytes of JSON", KFA_TOKEN_JSON_MAX);
    json_error_t jerr;
    json_t *o = json_loadb(json, n, JSON_REJECT_DUPLICATES, &jerr);
    if (o == NULL)
        return BAD(err, "not JSON (%.80s at byte %d)", jerr.text, jerr.position);
    int r = parse(o, uuid, ret, err);
    json_decref(o);
    if (r != 0)
        kfa_token_clear(ret);
    return r;
}
