/* A stored volume's labels (its JSON text) as policy input, for the handlers that evaluate
 * policy for a volume they read from the store. */
#ifndef KFD_RPC_LABELS_H
#define KFD_RPC_LABELS_H

#include <jansson.h>
#include <stddef.h>

#include "core/policy.h"
#include "kf_node_check.h"

typedef struct kfd_label_set {
    json_t *json; /* owns the strings items point into */
    kfd_label items[KF_LABELS_MAX];
    size_t n;
} kfd_label_set;

/* Fills ls from text (NULL or unparsable: no labels); kfd_label_set_clear frees it. */
void kfd_label_set_from_json(kfd_label_set *ls, const char *text);
void kfd_label_set_clear(kfd_label_set *ls);

#endif
