/* libFuzzer: every RPC request body, decoded as the router decodes it (protobuf-c with the
 * wiping allocator), then through the checks the handlers run first (common/kf_node_check.c for
 * NodeService, coordinator/rpc/rpc_check.c for AdminService and Login). The first byte picks the method
 * among the three services' methods, from the generated service descriptors, so a new RPC is
 * fuzzed without touching this file. */
#include <stddef.h>
#include <stdint.h>

#include "keyfleet/v1/admin.pb-c.h"
#include "keyfleet/v1/node.pb-c.h"
#include "kf_pb_alloc.h"
#include "rpc/rpc_check.h"

/* PeerService (coordinators' AuditHead) last, so that a seed's first byte keeps its method. */
static const ProtobufCServiceDescriptor *const services[] = {&keyfleet__v1__node_service__descriptor,
                                                             &keyfleet__v1__admin_service__descriptor,
                                                             &keyfleet__v1__peer_service__descriptor};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t n = 0;
    for (size_t s = 0; s < sizeof(services) / sizeof(services[0]); s++)
        n += services[s]->n_methods;
    size_t pick = data[0] % n;
    const ProtobufCMessageDescriptor *desc = NULL;
    for (size_t s = 0; desc == NULL; s++) {
        if (pick < services[s]->n_methods)
            desc = services[s]->methods[pick].input;
        else
            pick -= services[s]->n_methods;
    }
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, &kf_pb_wiping_allocator, size - 1, data + 1);
    if (m != NULL) {
        kf_request_check_fn check = kfd_request_check_for(desc);
        char why[160];
        if (check != NULL)
            (void)check(m, why, sizeof(why));
        /* Re-encoding walks every field the decoder accepted. */
        uint8_t out[1 << 16];
        if (protobuf_c_message_get_packed_size(m) <= sizeof(out))
            protobuf_c_message_pack(m, out);
        protobuf_c_message_free_unpacked(m, &kf_pb_wiping_allocator);
    }
    return 0;
}
