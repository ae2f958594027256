/* YAML configuration: libfyaml's event parser builds a small tree in which every node keeps its
 * line and column, so every error names file:line:column. Mappings are decoded against a field
 * table; unknown keys, duplicate keys, anchors and aliases are errors. */
#ifndef KF_YAML_H
#define KF_YAML_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kf_err.h"

typedef enum { KF_YAML_SCALAR, KF_YAML_SEQ, KF_YAML_MAP } kf_yaml_type;

typedef struct kf_yaml_node {
    kf_yaml_type type;
    int line; /* 1-based */
    int col;  /* 1-based */
    char *str; /* scalar text, NUL-terminated */
    size_t len;
    bool plain; /* an unquoted scalar (so "null"/"~" mean null) */
    size_t n; /* SEQ: items; MAP: pairs (items[2i] key, items[2i+1] value) */
    struct kf_yaml_node **items;
} kf_yaml_node;

typedef struct kf_yaml_doc {
    char *file;
    kf_yaml_node *root; /* NULL for an empty document */
} kf_yaml_doc;

int kf_yaml_parse_file(const char *path, kf_yaml_doc **ret, kf_err *err);
int kf_yaml_parse_string(const char *name, const char *buf, size_t len, kf_yaml_doc **ret, kf_err *err);
void kf_yaml_free(kf_yaml_doc *doc);

/* Sets err to "file:line:col: message" for node (or file:1 when node is NULL); returns -EINVAL. */
int kf_yaml_error(const kf_yaml_doc *doc, const kf_yaml_node *node, kf_err *err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

typedef int (*kf_yaml_decode_fn)(const kf_yaml_doc *doc, const kf_yaml_node *node, void *dst, const void *arg,
                                 kf_err *err);

typedef struct kf_yaml_field {
    const char *key;
    kf_yaml_decode_fn decode;
    size_t offset; /* where in the target struct decode writes */
    const void *arg; /* decoder-specific: limits, sub-tables */
    bool required;
} kf_yaml_field;

/* Decodes a mapping node into obj. */
int kf_yaml_decode_map(const kf_yaml_doc *doc, const kf_yaml_node *node, const kf_yaml_field *fields, size_t nfields,
                       void *obj, kf_err *err);

/* Decoders. Strings are heap copies that the caller frees. */
int kf_yaml_dec_string(const kf_yaml_doc *, const kf_yaml_node *, void *dst /* char ** */, const void *, kf_err *);
/* arg: const kf_yaml_uint_range * (NULL: any uint32). */
typedef struct kf_yaml_uint_range {
    uint64_t min, max;
} kf_yaml_uint_range;
int kf_yaml_dec_uint(const kf_yaml_doc *, const kf_yaml_node *, void *dst /* uint32_t * */, const void *arg, kf_err *);
int kf_yaml_dec_bool(const kf_yaml_doc *, const kf_yaml_node *, void *dst /* bool * */, const void *, kf_err *);
/* "250ms", "5s", "2m", "1h" or a plain number of milliseconds; into uint64_t milliseconds.
 * arg: const kf_yaml_uint_range * in milliseconds (NULL: any). */
int kf_yaml_dec_duration_ms(const kf_yaml_doc *, const kf_yaml_node *, void *dst /* uint64_t * */, const void *,
                            kf_err *);
/* A sequence of strings (or a single string) into a kf_strlist. */
typedef struct kf_strlist {
    char **v;
    size_t n;
} kf_strlist;
int kf_yaml_dec_strlist(const kf_yaml_doc *, const kf_yaml_node *, void *dst /* kf_strlist * */, const void *,
                        kf_err *);
void kf_strlist_free(kf_strlist *l);

/* Resolves path p (owned; freed) against the folder of config_file unless p is absolute; returns
 * a malloc'ed path, or NULL for NULL p or out of memory. Config files name paths relative to
 * themselves. */
char *kf_config_path(const char *config_file, char *p);

/* Parses a duration string as the decoder does; returns 0 or -EINVAL. */
int kf_parse_duration_ms(const char *s, uint64_t *ret);

#endif
