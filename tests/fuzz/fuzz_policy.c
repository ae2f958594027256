/* libFuzzer: policy YAML as `keyfleetctl policy put` sends it (PutPolicy, then every replica's
 * load), then one evaluation of what parsed, for a node and volume with labels. */
#include <stddef.h>
#include <stdint.h>

#include "core/policy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    kfd_policy *p = NULL;
    kf_err err = {0};
    if (kfd_policy_parse("fuzz", (const char *)data, size, &p, &err) != 0)
        return 0;
    kfd_label labels[2] = {{"env", "prod"}, {"approval", "yes"}};
    kfd_policy_input in = {.node = "web-1", .source = "10.1.2.3", .volume_id = "vol-1", .volume_name = "tank/db",
                           .labels = labels, .n_labels = 2, .now = 1795435200};
    kfd_policy_decision d;
    kfd_policy_evaluate_release(p, &in, "db-1", &d);
    in.source = "fd00::1";
    in.enrolling = true;
    kfd_policy_evaluate(p, &in, &d);
    (void)kfd_policy_admin(p);
    kfd_policy_free(p);
    return 0;
}
