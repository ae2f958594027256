#include "rpc/rpc_labels.h"

#include <string.h>

void kfd_label_set_from_json(kfd_label_set *ls, const char *text)
{
    memset(ls, 0, sizeof(*ls));
    ls->json = json_loads(text != NULL ? text : "{}", 0, NULL);
    const char *k;
    json_t *v;
    if (ls->json == NULL)
        return;
    json_object_foreach(ls->json, k, v)
    {
        if (ls->n < KF_LABELS_MAX && json_is_string(v))
            ls->items[ls->n++] = (kfd_label){k, json_string_value(v)};
    }
}

void kfd_label_set_clear(kfd_label_set *ls)
{
    json_decref(ls->json);
    memset(ls, 0, sizeof(*ls));
}
