/* rpc_probe: calls one RPC through keyfleet's Connect client (kf_rpc_client) and checks the
 * Connect code. Used by the integration tests to exercise the client side over real HTTP/2.
 *   rpc_probe SERVER CERT KEY CA METHOD EXPECTED_CODE
 * The request is the empty message, valid for every request type. Prints one line:
 *   code=CODE http=STATUS version=2 message="..." */
#include <stdio.h>
#include <string.h>

#include "keyfleet/v1/admin.pb-c.h"
#include "kf_rpc_client.h"

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: rpc_probe SERVER CERT KEY CA METHOD EXPECTED_CODE\n");
        return 2;
    }
    const char *servers[] = {argv[1]};
    kf_rpc_opts opts = {.servers = servers, .n_servers = 1, .cert_file = argv[2], .key_file = argv[3],
                        .ca_file = argv[4], .timeout_ms = 5000};
    kf_rpc_client *c = NULL;
    kf_err err = {0};
    if (kf_rpc_client_new(&opts, &c, &err) != 0) {
        fprintf(stderr, "rpc_probe: %s\n", err.msg);
        return 2;
    }
    Keyfleet__V1__ClusterStatusRequest req = KEYFLEET__V1__CLUSTER_STATUS_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    kf_rpc_status st;
    int rc = 1;
    if (kf_rpc_call(c, argv[5], &req.base, &keyfleet__v1__cluster_status_response__descriptor, &resp, &st, &err) != 0) {
        printf("code=transport_error message=\"%s\"\n", err.msg);
        rc = strcmp(argv[6], "transport_error") == 0 ? 0 : 1;
    } else {
        printf("code=%s http=%d version=%d message=\"%s\"\n", kf_connect_code_name(st.code), st.http_status,
               st.http_version, st.message);
        rc = strcmp(kf_connect_code_name(st.code), argv[6]) == 0 && st.http_version == 2 ? 0 : 1;
    }
    if (resp != NULL)
        protobuf_c_message_free_unpacked(resp, NULL);
    kf_rpc_client_free(c);
    return rc;
}
