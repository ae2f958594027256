/* libFuzzer: what `zfs get` and `zfs list` print about datasets. The org.keyfleet:* user
 * properties are on the pool, which whoever holds the disk can edit (an evil maid), so the text
 * goes through the agent's parser (agent/zfs_props.c) as the ZFS driver reads it. The first byte
 * picks the probe of one dataset or a listing with 1 to 8 properties. A probe that succeeds must
 * have kept only metadata the LUKS2 token's checks accept too. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "luks2_token.h"
#include "zfs_props.h"

static bool keep_named(char **fields, const void *arg)
{
    (void)arg;
    return fields[0][0] != '-';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 65536)
        return 0;
    char *text = malloc(size);
    if (text == NULL)
        return 0;
    memcpy(text, data + 1, size - 1);
    text[size - 1] = '\0';
    kf_err err = {0};
    if (data[0] & 1) {
        kfa_volume v = {0};
        snprintf(v.path, sizeof(v.path), "tank/secret");
        if (kfa_zfs_parse_probe(&v, text, &err) == 0) {
            if (v.wrapped != NULL && kfa_wrapped_check(v.wrapped, NULL, &err) != 0)
                abort();
            if (v.tpm_blob != NULL && (v.wrapped == NULL || kfa_tpm_blob_check(v.tpm_blob, &err) != 0))
                abort();
            /* A TPM part is never taken for a copy of the key, nor held beside one. */
            if (v.tpm_part != NULL && (v.tpm_blob != NULL || strncmp(v.tpm_part, "kftpmnet1:", 10) != 0 ||
                                       kfa_tpm_blob_check(v.tpm_part, &err) != 0))
                abort();
            if (v.tpm_blob != NULL && strncmp(v.tpm_blob, "kftpm1:", 7) != 0)
                abort();
            /* A rotation's next TPM part: only a TPM part, beside wrapped-next and a TPM part. */
            if (v.tpm_part_next != NULL &&
                (v.tpm_part == NULL || v.wrapped_next == NULL || strncmp(v.tpm_part_next, "kftpmnet1:", 10) != 0 ||
                 kfa_tpm_blob_check(v.tpm_part_next, &err) != 0))
                abort();
        }
        free(v.wrapped);
        free(v.tpm_blob);
        free(v.tpm_part);
        free(v.wrapped_next);
        free(v.tpm_part_next);
    } else {
        char **names = NULL;
        size_t n = 0;
        if (kfa_zfs_parse_list(text, 1 + (data[0] >> 1) % 8, keep_named, NULL, &names, &n, &err) == 0) {
            for (size_t i = 0; i < n; i++)
                free(names[i]);
            free(names);
        }
    }
    free(text);
    return 0;
}
