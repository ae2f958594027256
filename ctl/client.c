#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"

typedef struct ctl_file {
    kf_strlist coordinators;
    char *cert, *key, *ca;
} ctl_file;

static const kf_yaml_field ctl_fields[] = {
    {"coordinators", kf_yaml_dec_strlist, offsetof(ctl_file, coordinators), NULL, true},
    {"cert", kf_yaml_dec_string, offsetof(ctl_file, cert), NULL, true},
    {"key", kf_yaml_dec_string, offsetof(ctl_file, key), NULL, true},
    {"ca", kf_yaml_dec_string, offsetof(ctl_file, ca), NULL, true},
};


static int load_config(kfctl *ctl)
{
    kf_yaml_doc *doc = NULL;
    kf_err err = {0};
    ctl_file f = {0};
    int r = kf_yaml_parse_file(ctl->config_path, &doc, &err);
    if (r == 0)
        r = kf_yaml_decode_map(doc, doc->root, ctl_fields, sizeof(ctl_fields) / sizeof(ctl_fields[0]), &f, &err);
    kf_yaml_free(doc);
    if (r != 0) {
        fprintf(stderr, "keyfleetctl: %s\n", err.msg);
        kf_strlist_free(&f.coordinators);
        free(f.cert);
        free(f.key);
        free(f.ca);
        return r;
    }
    if (ctl->servers.n == 0)
        ctl->servers = f.coordinators;
    else
        kf_strlist_free(&f.coordinators);
    if (ctl->cert == NULL)
        ctl->cert = kf_config_path(ctl->config_path, f.cert);
    else
        free(f.cert);
    if (ctl->key == NULL)
        ctl->key = kf_config_path(ctl->config_path, f.key);
    else
        free(f.key);
    if (ctl->ca == NULL)
        ctl->ca = kf_config_path(ctl->config_path, f.ca);
    else
        free(f.ca);
    return 0;
}

int kfctl_client_config(kfctl *ctl)
{
    if ((ctl->servers.n == 0 || ctl->cert == NULL || ctl->key == NULL || ctl->ca == NULL) && load_config(ctl) != 0)
        return -1;
    return 0;
}

kf_rpc_client *kfctl_client(kfctl *ctl)
{
    if (kfctl_client_config(ctl) != 0)
        return NULL;
    kf_rpc_opts opts = {
        .servers = (const char *const *)ctl->servers.v,
        .n_servers = ctl->servers.n,
        .cert_file = ctl->cert,
        .key_file = ctl->key,
        .ca_file = ctl->ca,
    };
    kf_rpc_client *c = NULL;
    kf_err err = {0};
    if (kf_rpc_client_new(&opts, &c, &err) != 0) {
        fprintf(stderr, "keyfleetctl: %s\n", err.msg);
        return NULL;
    }
    return c;
}

int kfctl_call(kfctl *ctl, kf_rpc_client *c, const char *method, const ProtobufCMessage *req,
               const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **ret_resp)
{
    (void)ctl;
    kf_rpc_status st;
    kf_err err = {0};
    if (kf_rpc_call(c, method, req, resp_desc, ret_resp, &st, &err) != 0) {
        /* A coordinator that refused this certificate was reached: say what it did. */
        fprintf(stderr, "keyfleetctl: %s%s\n", err.code == -EKEYREJECTED ? "" : "cannot reach a coordinator: ", err.msg);
        return -1;
    }
    if (st.code != KF_CONNECT_OK) {
        fprintf(stderr, "keyfleetctl: %s: %s\n", kf_connect_code_name(st.code), st.message);
        return -1;
    }
    return 0;
}

int kfctl_call_once(kfctl *ctl, const char *method, const ProtobufCMessage *req,
                    const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **ret_resp)
{
    kf_rpc_client *c = kfctl_client(ctl);
    if (c == NULL)
        return -1;
    int r = kfctl_call(ctl, c, method, req, resp_desc, ret_resp);
    kf_rpc_client_free(c);
    return r;
}

int kfctl_print_json(json_t *o)
{
    char *s = o != NULL ? json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    json_decref(o);
    if (s == NULL) {
        fprintf(stderr, "keyfleetctl: out of memory for the JSON output\n");
        return -1;
    }
    printf("%s\n", s);
    free(s);
    return 0;
}

int kfctl_json_flag(int argc, char **argv, const char *cmd, int *ret_json)
{
    *ret_json = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") != 0) {
            fprintf(stderr, "keyfleetctl: %s: unexpected argument '%s'\n", cmd, argv[i]);
            return kfctl_usage(cmd);
        }
        *ret_json = 1;
    }
    return 0;
}
