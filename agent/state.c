/* The agent's status file (JSON, no secrets): for each volume id, how and when it was last
 * unlocked. Written atomically. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "agent.h"

int kfa_state_record(const kfa_config *cfg, const char *volume_id, const char *method, const char *detail)
{
    json_t *root = json_load_file(cfg->state_file, 0, NULL);
    if (root == NULL || !json_is_object(root)) {
        json_decref(root);
        root = json_object();
    }
    json_t *entry = json_pack("{s:s, s:s, s:I}", "method", method, "detail", detail != NULL ? detail : "", "at",
                              (json_int_t)time(NULL));
    json_object_set_new(root, volume_id, entry);
    char *copy = strdup(cfg->state_file);
    if (copy != NULL) {
        mkdir(dirname(copy), 0755);
        free(copy);
    }
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", cfg->state_file);
    int r = json_dump_file(root, tmp, JSON_INDENT(1) | JSON_SORT_KEYS);
    json_decref(root);
    if (r != 0 || rename(tmp, cfg->state_file) != 0)
        return -EIO;
    return 0;
}

void kfa_state_lookup(const kfa_config *cfg, const char *volume_id, char *method, size_t msize, int64_t *at)
{
    method[0] = '\0';
    *at = 0;
    json_t *root = json_load_file(cfg->state_file, 0, NULL);
    json_t *e = root != NULL ? json_object_get(root, volume_id) : NULL;
    const char *m = NULL;
    json_int_t t = 0;
    if (e != NULL && json_unpack(e, "{s:s, s:I}", "method", &m, "at", &t) == 0) {
        snprintf(method, msize, "%s", m);
        *at = t;
    }
    json_decref(root);
}
