/* node_client: plays a node for the integration tests, through the same client code the agent
 * uses (kf_node_client). One line of key=value output per call.
 * SERVER may be a comma-separated list of coordinators (tried in turn, leader hints followed).
 *   node_client SERVER CERT KEY CA enroll VOLUME_ID [NAME [LABEL=VALUE...]]
 *     -> code=ok wrapped=... key=HEX offline=0|1
 *   node_client SERVER CERT KEY CA release VOLUME_ID WRAPPED [REQUEST_ID]
 *     -> code=ok status=released key=HEX request=ID audit_seq=N rewrapped=...
 *     -> code=ok status=pending request=ID retry_ms=N
 *     -> code=CONNECT_CODE message="..."
 *   node_client SERVER CERT KEY CA rotate-begin VOLUME_ID REQUEST_ID
 *     -> code=ok wrapped=... key=HEX
 *   node_client SERVER CERT KEY CA rotate-commit VOLUME_ID WRAPPED
 *     -> code=ok wrapped=...
 *   node_client SERVER CERT KEY CA recovery VOLUME_ID REQUEST_ID   (EnrollRecoveryKey, LUKS2)
 *     -> code=ok key=HEX replaced=0|1
 * Exit 0 when the call succeeded, 3 for a Connect error, 1 for anything else.
 * Printing the key is for tests only: the agent never does. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kf_node_client.h"
#include "kf_seal.h"

static void print_hex(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        printf("%02x", p[i]);
}

int main(int argc, char **argv)
{
    if (argc < 7) {
        fprintf(stderr, "usage: node_client SERVER CERT KEY CA enroll|release VOLUME_ID ...\n");
        return 1;
    }
    const char *servers[8];
    size_t n_servers = 0;
    for (char *save = NULL, *tok = strtok_r(argv[1], ",", &save); tok != NULL && n_servers < 8;
         tok = strtok_r(NULL, ",", &save))
        servers[n_servers++] = tok;
    kf_rpc_opts opts = {.servers = servers, .n_servers = n_servers, .cert_file = argv[2], .key_file = argv[3],
                        .ca_file = argv[4], .timeout_ms = 10000};
    kf_err err = {0};
    kf_identity me;
    if (kf_identity_from_cert_file(argv[2], &me, &err) != 0) {
        fprintf(stderr, "node_client: %s\n", err.msg);
        return 1;
    }
    kf_rpc_client *c = NULL;
    if (kf_rpc_client_new(&opts, &c, &err) != 0) {
        fprintf(stderr, "node_client: %s\n", err.msg);
        return 1;
    }
    Keyfleet__V1__VolumeRef vol = KEYFLEET__V1__VOLUME_REF__INIT;
    vol.id = argv[6];
    vol.kind = KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_LUKS2;
    kf_rpc_status st;
    int rc = 1, r;
    if (strcmp(argv[5], "enroll") == 0) {
        vol.name = argc > 7 ? argv[7] : (char *)"";
        Keyfleet__V1__Label labels[16], *lp[16];
        size_t n = 0;
        for (int i = 8; i < argc && n < 16; i++) {
            char *eq = strchr(argv[i], '=');
            if (eq == NULL)
                continue;
            *eq = '\0';
            keyfleet__v1__label__init(&labels[n]);
            labels[n].key = argv[i];
            labels[n].value = eq + 1;
            lp[n] = &labels[n];
            n++;
        }
        kf_enrolled e;
        /* NODE_CLIENT_REQUEST_ID repeats an enrollment, as an agent retrying a lost answer does. */
        const char *rid = getenv("NODE_CLIENT_REQUEST_ID");
        r = kf_node_enroll(c, NULL, me.name, &vol, lp, n, rid != NULL ? rid : "", NULL, &e, &st, &err);
        if (r == 0 && st.code == KF_CONNECT_OK) {
            printf("code=ok wrapped=%s key=", e.wrapped);
            print_hex(e.key->data, e.key->len);
            printf(" offline=%d\n", e.offline_fallback_allowed);
            kf_enrolled_clear(&e);
            rc = 0;
        }
    } else if (strcmp(argv[5], "release") == 0 && argc >= 8) {
        kf_released rel;
        r = kf_node_release(c, NULL, me.name, &vol, argv[7], argc > 8 ? argv[8] : "", NULL, false, &rel, &st, &err);
        if (r == 0 && st.code == KF_CONNECT_OK) {
            if (rel.pending) {
                printf("code=ok status=pending request=%s retry_ms=%u\n", rel.request_id, rel.retry_after_ms);
            } else {
                printf("code=ok status=released key=");
                print_hex(rel.key->data, rel.key->len);
                printf(" request=%s audit_seq=%llu rewrapped=%s\n", rel.request_id,
                       (unsigned long long)rel.audit_seq, rel.rewrapped != NULL ? rel.rewrapped : "");
            }
            kf_released_clear(&rel);
            rc = 0;
        }
    } else if ((strcmp(argv[5], "rotate-begin") == 0 || strcmp(argv[5], "rotate-commit") == 0) && argc == 8) {
        bool commit = strcmp(argv[5], "rotate-commit") == 0;
        kf_enrolled e;
        r = kf_node_rotate(c, NULL, me.name, &vol, commit, commit ? "" : argv[7], commit ? argv[7] : NULL, NULL, &e, &st,
                           &err);
        if (r == 0 && st.code == KF_CONNECT_OK) {
            printf("code=ok wrapped=%s", e.wrapped);
            if (e.key != NULL) {
                printf(" key=");
                print_hex(e.key->data, e.key->len);
            }
            printf("\n");
            kf_enrolled_clear(&e);
            rc = 0;
        }
    } else if (strcmp(argv[5], "recovery") == 0 && argc == 8) {
        kf_seal_receiver *rx = NULL;
        kf_secbuf *key = NULL;
        bool replaced = false;
        if (kf_seal_receiver_new(me.name, &rx) != 0) {
            fprintf(stderr, "node_client: cannot make an X25519 key pair\n");
            kf_rpc_client_free(c);
            return 1;
        }
        r = kf_node_recovery_escrow(c, rx, me.name, &vol, argv[7], &key, &replaced, &st, &err);
        if (r == 0 && st.code == KF_CONNECT_OK && key != NULL) {
            printf("code=ok key=");
            print_hex(key->data, key->len);
            printf(" replaced=%d\n", replaced);
            rc = 0;
        }
        kf_secbuf_free(key);
        kf_seal_receiver_free(rx);
    } else if (strcmp(argv[5], "recovery-confirm") == 0 && argc == 8) {
        if ((r = kf_node_recovery_confirm(c, &vol, argv[7], &st, &err)) == 0 && st.code == KF_CONNECT_OK) {
            printf("code=ok\n");
            rc = 0;
        }
    } else {
        fprintf(stderr, "node_client: unknown call %s\n", argv[5]);
        kf_rpc_client_free(c);
        return 1;
    }
    if (rc != 0) {
        if (r == 0) {
            printf("code=%s message=\"%s\"\n", kf_connect_code_name(st.code), st.message);
            rc = 3;
        } else {
            printf("code=client_error message=\"%s\"\n", err.msg);
        }
    }
    kf_rpc_client_free(c);
    return rc;
}
