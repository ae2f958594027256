/* tpm_probe: drives the agent's TPM2 module for the tests (never used by the product).
 *   tpm_probe TCTI seal PCRS KEYHEX   -> prints the sealed blob
 *   tpm_probe TCTI unseal BLOB        -> prints the key in hex
 * Exit 0 on success; 1 with the error on stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tpm2.h"

int main(int argc, char **argv)
{
    if (argc != 4 && argc != 5)
        return 2;
    kf_err err = {0};
    if (strcmp(argv[2], "seal") == 0 && argc == 5) {
        uint32_t pcrs[24];
        size_t n = 0;
        for (char *p = strtok(argv[3], ","); p != NULL && n < 24; p = strtok(NULL, ","))
            pcrs[n++] = (uint32_t)atoi(p);
        size_t len = strlen(argv[4]) / 2;
        kf_secbuf *key = kf_secbuf_new(len);
        for (size_t i = 0; i < len; i++)
            sscanf(argv[4] + 2 * i, "%2hhx", &key->data[i]);
        char *blob = NULL;
        int r = kfa_tpm_seal(argv[1], pcrs, n, key, &blob, 20000, &err);
        kf_secbuf_free(key);
        if (r != 0) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        printf("%s\n", blob);
        free(blob);
        return 0;
    }
    if (strcmp(argv[2], "unseal") == 0) {
        kf_secbuf *key = NULL;
        if (kfa_tpm_unseal(argv[1], argv[3], &key, 20000, &err) != 0) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        for (size_t i = 0; i < key->len; i++)
            printf("%02x", key->data[i]);
        printf("\n");
        kf_secbuf_free(key);
        return 0;
    }
    return 2;
}
