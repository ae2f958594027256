/* libFuzzer: what `keyfleetctl audit` verifies offline, none of which it takes on trust: a
 * checkpoint's text, saved checkpoints (anchor files: a JSON object or one per line), a sink's
 * copy of the log (`verify --stream`: JSON lines, whole or starting late), and the inclusion and
 * consistency proofs `audit prove` prints (verify-proof, verify-consistency). Each goes through
 * keyfleetctl's own code (ctl/audit_check.c) against a real fleet CA (audit-ca.pem), so the
 * seeds' signatures verify and mutations reach past them. The first byte picks the input
 * (modulo 6, in that order); make-audit-seeds.sh regenerates the CA and the seeds. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit_check.h"
#include "fuzz_file.h"

static kfctl_trust trust;
static FILE *devnull;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    if (kfctl_trust_load(KF_FUZZ_AUDIT_CA, &trust) != 0 || (devnull = fopen("/dev/null", "w")) == NULL)
        abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 1u << 20)
        return 0;
    const char *rest = (const char *)data + 1;
    size_t len = size - 1;
    char why[400];
    switch (data[0] % 6) {
    case 0: {
        kf_checkpoint cp;
        kf_err err = {0};
        (void)kf_checkpoint_parse(rest, len, &cp, &err);
        break;
    }
    case 1: {
        const char *path = fuzz_write_file("anchors.json", (const uint8_t *)rest, len);
        kfctl_cp *v = NULL;
        size_t n = 0;
        if (path != NULL && kfctl_cp_read_file(path, &v, &n, why, sizeof(why)) == 0) {
            for (size_t i = 0; i < n; i++) {
                (void)kfctl_cp_verify(&trust, &v[i], why, sizeof(why));
                kfctl_cp_clear(&v[i]);
            }
            free(v);
        }
        break;
    }
    case 2:
    case 3: {
        /* A sink's copy; two values, so the seeds of a whole log and of one that starts late
         * each keep their own first byte. */
        FILE *in = fmemopen((void *)rest, len, "r");
        if (in != NULL) {
            (void)kfctl_stream_verify(in, "fuzz", &trust, NULL, 0, KFCTL_AUDIT_MAX_UNSIGNED, devnull);
            fclose(in);
        }
        break;
    }
    case 4:
    case 5: {
        json_error_t jerr;
        json_t *doc = json_loadb(rest, len, 0, &jerr);
        if (doc != NULL) {
            if (data[0] % 6 == 4)
                (void)kfctl_proof_verify(&trust, doc, NULL, devnull, why, sizeof(why));
            else
                (void)kfctl_consistency_verify(&trust, doc, devnull, why, sizeof(why));
            json_decref(doc);
        }
        break;
    }
    }
    return 0;
}
