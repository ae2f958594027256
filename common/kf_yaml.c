#include "kf_yaml.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libfyaml.h>

#define YAML_MAX_DEPTH 32
#define YAML_MAX_NODES 100000
#define YAML_MAX_FILE_BYTES (4 << 20)

static void node_free(kf_yaml_node *n)
{
    if (n == NULL)
        return;
    /* An unpaired key (error mid-mapping) is counted by len. */
    size_t count = n->type == KF_YAML_MAP ? 2 * n->n + n->len : n->n;
    for (size_t i = 0; i < count; i++)
        node_free(n->items[i]);
    free(n->items);
    free(n->str);
    free(n);
}

void kf_yaml_free(kf_yaml_doc *doc)
{
    if (doc == NULL)
        return;
    node_free(doc->root);
    free(doc->file);
    free(doc);
}

int kf_yaml_error(const kf_yaml_doc *doc, const kf_yaml_node *node, kf_err *err, const char *fmt, ...)
{
    char msg[KF_ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (node != NULL)
        return kf_err_set(err, -EINVAL, "%s:%d:%d: %s", doc->file, node->line, node->col, msg);
    return kf_err_set(err, -EINVAL, "%s:1: %s", doc->file, msg);
}

typedef struct builder {
    struct fy_parser *fyp;
    kf_yaml_doc *doc;
    size_t nodes;
    kf_err *err;
} builder;

/* Items are stored flat; a mapping's are key, value, key, value. n_items counts all of them. */
static int add_child(kf_yaml_node *parent, size_t *n_items, kf_yaml_node *child)
{
    kf_yaml_node **items = realloc(parent->items, (*n_items + 1) * sizeof(*items));
    if (items == NULL)
        return -ENOMEM;
    parent->items = items;
    items[(*n_items)++] = child;
    parent->n = parent->type == KF_YAML_MAP ? *n_items / 2 : *n_items;
    return 0;
}

static int parse_error(builder *b, const struct fy_mark *m, const char *what)
{
    if (m != NULL)
        return kf_err_set(b->err, -EINVAL, "%s:%d:%d: %s", b->doc->file, m->line + 1, m->column + 1, what);
    return kf_err_set(b->err, -EINVAL, "%s: %s", b->doc->file, what);
}

static int stream_error(builder *b)
{
    struct fy_diag *diag = fy_parser_get_diag(b->fyp);
    void *it = NULL;
    struct fy_diag_error *e;
    while (diag != NULL && (e = fy_diag_errors_iterate(diag, &it)) != NULL) {
        if (e->type == FYET_ERROR) {
            int r = kf_err_set(b->err, -EINVAL, "%s:%d:%d: %s", b->doc->file, e->line + 1, e->column + 1,
                               e->msg != NULL ? e->msg : "invalid YAML");
            fy_diag_unref(diag);
            return r;
        }
    }
    if (diag != NULL)
        fy_diag_unref(diag);
    return kf_err_set(b->err, -EINVAL, "%s: invalid YAML", b->doc->file);
}

/* Reads one node starting at event ev (consumed by the caller afterwards). */
static int build_node(builder *b, struct fy_event *ev, int depth, kf_yaml_node **ret)
{
    const struct fy_mark *m = fy_event_start_mark(ev);
    if (depth > YAML_MAX_DEPTH)
        return parse_error(b, m, "nesting too deep");
    if (++b->nodes > YAML_MAX_NODES)
        return parse_error(b, m, "too many nodes");
    kf_yaml_node *n = calloc(1, sizeof(*n));
    if (n == NULL)
        return kf_err_set(b->err, -ENOMEM, "out of memory");
    n->line = m != NULL ? m->line + 1 : 1;
    n->col = m != NULL ? m->column + 1 : 1;
    int r = 0;
    switch (ev->type) {
    case FYET_SCALAR: {
        if (ev->scalar.anchor != NULL) {
            r = parse_error(b, m, "anchors are not supported");
            break;
        }
        size_t len = 0;
        const char *text = fy_token_get_text(ev->scalar.value, &len);
        n->type = KF_YAML_SCALAR;
        n->str = malloc(len + 1);
        if (n->str == NULL) {
            r = kf_err_set(b->err, -ENOMEM, "out of memory");
            break;
        }
        if (len > 0)
            memcpy(n->str, text, len);
        n->str[len] = '\0';
        n->len = len;
        n->plain = fy_token_scalar_style(ev->scalar.value) == FYSS_PLAIN;
        if (memchr(n->str, '\0', len) != NULL)
            r = parse_error(b, m, "NUL byte in scalar");
        break;
    }
    case FYET_MAPPING_START:
    case FYET_SEQUENCE_START: {
        bool map = ev->type == FYET_MAPPING_START;
        if ((map ? ev->mapping_start.anchor : ev->sequence_start.anchor) != NULL) {
            r = parse_error(b, m, "anchors are not supported");
            break;
        }
        n->type = map ? KF_YAML_MAP : KF_YAML_SEQ;
        size_t n_items = 0;
        for (;;) {
            struct fy_event *child_ev = fy_parser_parse(b->fyp);
            if (child_ev == NULL) {
                r = stream_error(b);
                break;
            }
            if (child_ev->type == (map ? FYET_MAPPING_END : FYET_SEQUENCE_END)) {
                fy_parser_event_free(b->fyp, child_ev);
                break;
            }
            kf_yaml_node *child = NULL;
            r = build_node(b, child_ev, depth + 1, &child);
            fy_parser_event_free(b->fyp, child_ev);
            if (r == 0 && map && n_items % 2 == 0 && child->type != KF_YAML_SCALAR)
                r = kf_yaml_error(b->doc, child, b->err, "mapping keys must be plain scalars");
            if (r == 0 && (r = add_child(n, &n_items, child)) != 0)
                kf_err_set(b->err, r, "out of memory");
            if (r != 0) {
                node_free(child);
                break;
            }
        }
        n->len = map ? n_items % 2 : 0;
        break;
    }
    case FYET_ALIAS:
        r = parse_error(b, m, "aliases are not supported");
        break;
    default:
        r = parse_error(b, m, "unexpected YAML event");
        break;
    }
    if (r != 0) {
        node_free(n);
        return r;
    }
    *ret = n;
    return 0;
}

static int build(builder *b)
{
    int r = 0, docs = 0;
    struct fy_event *ev;
    while ((ev = fy_parser_parse(b->fyp)) != NULL) {
        switch (ev->type) {
        case FYET_STREAM_START:
        case FYET_STREAM_END:
        case FYET_DOCUMENT_END:
            break;
        case FYET_DOCUMENT_START:
            if (++docs > 1)
                r = parse_error(b, fy_event_start_mark(ev), "only one YAML document is allowed");
            break;
        default:
            r = build_node(b, ev, 0, &b->doc->root);
            break;
        }
        fy_parser_event_free(b->fyp, ev);
        if (r != 0)
            return r;
    }
    if (fy_parser_get_stream_error(b->fyp))
        return stream_error(b);
    return 0;
}

static void discard_output(struct fy_diag *diag, void *user, const char *buf, size_t len)
{
    (void)diag, (void)user, (void)buf, (void)len;
}

static int parse_common(const char *name, const char *buf, size_t len, kf_yaml_doc **ret, kf_err *err)
{
    kf_yaml_doc *doc = calloc(1, sizeof(*doc));
    if (doc == NULL || (doc->file = strdup(name)) == NULL) {
        free(doc);
        return kf_err_set(err, -ENOMEM, "out of memory");
    }
    struct fy_diag_cfg dcfg;
    fy_diag_cfg_default(&dcfg);
    dcfg.fp = NULL;
    dcfg.output_fn = discard_output;
    dcfg.colorize = false;
    struct fy_diag *diag = fy_diag_create(&dcfg);
    if (diag == NULL) {
        kf_yaml_free(doc);
        return kf_err_set(err, -ENOMEM, "out of memory");
    }
    fy_diag_set_collect_errors(diag, true);
    struct fy_parse_cfg cfg = {.flags = FYPCF_QUIET | FYPCF_COLLECT_DIAG, .diag = diag};
    struct fy_parser *fyp = fy_parser_create(&cfg);
    int r;
    if (fyp == NULL) {
        r = kf_err_set(err, -ENOMEM, "out of memory");
    } else if (fy_parser_set_string(fyp, buf, len) != 0) {
        r = kf_err_set(err, -ENOENT, "%s: cannot read", name);
    } else {
        builder b = {.fyp = fyp, .doc = doc, .err = err};
        r = build(&b);
    }
    if (fyp != NULL)
        fy_parser_destroy(fyp);
    fy_diag_destroy(diag);
    if (r != 0) {
        kf_yaml_free(doc);
        return r;
    }
    *ret = doc;
    return 0;
}

/* Whether a line break ends at b[i], as libfyaml reads them: LF, a CR not followed by LF (a line
 * break of its own in YAML), and NEL, LS and PS in UTF-8 (line breaks in YAML 1.1). */
static bool break_ends_at(const unsigned char *b, size_t i, size_t len)
{
    switch (b[i]) {
    case '\n':
        return true;
    case '\r':
        return i + 1 == len || b[i + 1] != '\n';
    case 0x85:
        return i >= 1 && b[i - 1] == 0xc2;
    case 0xa8:
    case 0xa9:
        return i >= 2 && b[i - 2] == 0xe2 && b[i - 1] == 0x80;
    default:
        return false;
    }
}

/* libfyaml 0.8 (Debian 12) can loop for ever scanning a directive ('%' at the start of a line)
 * that is not at the start of a document (found by tests/fuzz/fuzz_yaml; a line that a bare CR
 * starts by fuzz_rpc_request, through PutPolicy). keyfleet's files use no directives (%YAML,
 * %TAG), so a line starting with '%' (after a byte-order mark too) is refused before libfyaml
 * sees it. */
static int refuse_directives(const char *name, const char *buf, size_t len, kf_err *err)
{
    const unsigned char *b = (const unsigned char *)buf;
    bool bom = len >= 3 && b[0] == 0xef && b[1] == 0xbb && b[2] == 0xbf;
    int line = 1;
    for (size_t i = 0; i < len; i++) {
        if (b[i] == '%' && (i == 0 || (bom && i == 3) || break_ends_at(b, i - 1, len)))
            return kf_err_set(err, -EINVAL, "%s:%d:1: YAML directives (%%...) are not supported", name, line);
        if (break_ends_at(b, i, len))
            line++;
    }
    return 0;
}

int kf_yaml_parse_file(const char *path, kf_yaml_doc **ret, kf_err *err)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return kf_err_set(err, -errno, "%s: cannot open: %s", path, strerror(errno));
    /* Read whole (configs and policies are small), so the text checked is the text parsed. */
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    while (buf != NULL) {
        len += fread(buf + len, 1, cap - len, f);
        if (len < cap || cap >= YAML_MAX_FILE_BYTES)
            break;
        char *bigger = realloc(buf, cap * 2);
        if (bigger == NULL) {
            free(buf);
            buf = NULL;
        }
        buf = bigger;
        cap *= 2;
    }
    bool failed = ferror(f) != 0;
    fclose(f);
    int r;
    if (buf == NULL)
        r = kf_err_set(err, -ENOMEM, "%s: out of memory", path);
    else if (failed)
        r = kf_err_set(err, -EIO, "%s: read error", path);
    else if (len == cap)
        r = kf_err_set(err, -EFBIG, "%s: larger than %d bytes", path, YAML_MAX_FILE_BYTES);
    else
        r = kf_yaml_parse_string(path, buf, len, ret, err);
    free(buf);
    return r;
}

int kf_yaml_parse_string(const char *name, const char *buf, size_t len, kf_yaml_doc **ret, kf_err *err)
{
    int r = refuse_directives(name, buf, len, err);
    return r != 0 ? r : parse_common(name, buf, len, ret, err);
}

int kf_yaml_decode_map(const kf_yaml_doc *doc, const kf_yaml_node *node, const kf_yaml_field *fields, size_t nfields,
                       void *obj, kf_err *err)
{
    if (node == NULL || node->type != KF_YAML_MAP)
        return kf_yaml_error(doc, node, err, "expected a mapping");
    bool seen[64] = {false};
    if (nfields > 64)
        return kf_err_set(err, -E2BIG, "field table too large");
    for (size_t i = 0; i < node->n; i++) {
        const kf_yaml_node *key = node->items[2 * i];
        const kf_yaml_node *val = node->items[2 * i + 1];
        size_t f = 0;
        while (f < nfields && strcmp(fields[f].key, key->str) != 0)
            f++;
        if (f == nfields) {
            char expected[KF_ERR_MSG_MAX / 2] = "";
            size_t o = 0;
            for (size_t k = 0; k < nfields && o < sizeof(expected); k++)
                o += (size_t)snprintf(expected + o, sizeof(expected) - o, "%s%s", k ? ", " : "", fields[k].key);
            return kf_yaml_error(doc, key, err, "unknown key '%.64s' (expected one of: %s)", key->str, expected);
        }
        if (seen[f])
            return kf_yaml_error(doc, key, err, "duplicate key '%s'", fields[f].key);
        seen[f] = true;
        int r = fields[f].decode(doc, val, (char *)obj + fields[f].offset, fields[f].arg, err);
        if (r != 0)
            return r;
    }
    for (size_t f = 0; f < nfields; f++)
        if (fields[f].required && !seen[f])
            return kf_yaml_error(doc, node, err, "missing required key '%s'", fields[f].key);
    return 0;
}

static int expect_scalar(const kf_yaml_doc *doc, const kf_yaml_node *node, const char *what, kf_err *err)
{
    if (node->type != KF_YAML_SCALAR)
        return kf_yaml_error(doc, node, err, "expected %s", what);
    return 0;
}

int kf_yaml_dec_string(const kf_yaml_doc *doc, const kf_yaml_node *node, void *dst, const void *arg, kf_err *err)
{
    (void)arg;
    int r = expect_scalar(doc, node, "a string", err);
    if (r != 0)
        return r;
    if (node->len == 0)
        return kf_yaml_error(doc, node, err, "expected a non-empty string");
    char **out = dst;
    char *s = strdup(node->str);
    if (s == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    free(*out);
    *out = s;
    return 0;
}

int kf_yaml_dec_uint(const kf_yaml_doc *doc, const kf_yaml_node *node, void *dst, const void *arg, kf_err *err)
{
    const kf_yaml_uint_range *range = arg;
    uint64_t min = range != NULL ? range->min : 0, max = range != NULL ? range->max : UINT32_MAX;
    int r = expect_scalar(doc, node, "an integer", err);
    if (r != 0)
        return r;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(node->str, &end, 10);
    if (node->len == 0 || node->str[0] == '-' || node->str[0] == '+' || errno != 0 || *end != '\0' || v < min ||
        v > max)
        return kf_yaml_error(doc, node, err, "expected an integer from %llu to %llu, got '%.32s'",
                             (unsigned long long)min, (unsigned long long)max, node->str);
    *(uint32_t *)dst = (uint32_t)v;
    return 0;
}

int kf_yaml_dec_bool(const kf_yaml_doc *doc, const kf_yaml_node *node, void *dst, const void *arg, kf_err *err)
{
    (void)arg;
    int r = expect_scalar(doc, node, "true or false", err);
    if (r != 0)
        return r;
    if (strcmp(node->str, "true") == 0)
        *(bool *)dst = true;
    else if (strcmp(node->str, "false") == 0)
        *(bool *)dst = false;
    else
        return kf_yaml_error(doc, node, err, "expected true or false, got '%.32s'", node->str);
    return 0;
}

int kf_parse_duration_ms(const char *s, uint64_t *ret)
{
    char *end = NULL;
    if (s[0] < '0' || s[0] > '9')
        return -EINVAL;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s)
        return -EINVAL;
    uint64_t mult;
    if (*end == '\0' || strcmp(end, "ms") == 0)
        mult = 1;
    else if (strcmp(end, "s") == 0)
        mult = 1000;
    else if (strcmp(end, "m") == 0)
        mult = 60000;
    else if (strcmp(end, "h") == 0)
        mult = 3600000;
    else if (strcmp(end, "d") == 0) /* key ages and dead-man windows are counted in days */
        mult = 86400000;
    else
        return -EINVAL;
    if (v > UINT64_MAX / mult)
        return -EINVAL;
    *ret = v * mult;
    return 0;
}

int kf_yaml_dec_duration_ms(const kf_yaml_doc *doc, const kf_yaml_node *node, void *dst, const void *arg, kf_err *err)
{
    int r = expect_scalar(doc, node, "a duration", err);
    if (r != 0)
        return r;
    uint64_t ms;
    if (kf_parse_duration_ms(node->str, &ms) != 0)
        return kf_yaml_error(doc, node, err, "expected a duration such as 250ms, 5s, 2m, 1h or 30d, got '%.32s'",
                             node->str);
    const kf_yaml_uint_range *range = arg;
    if (range != NULL && (ms < range->min || ms > range->max))
        return kf_yaml_error(doc, node, err, "must be between %llums and %llums, got '%.32s'",
                             (unsigned long long)range->min, (unsigned long long)range->max, node->str);
    *(uint64_t *)dst = ms;
    return 0;
}

char *kf_config_path(const char *config_file, char *p)
{
    if (p == NULL || p[0] == '/')
        return p;
    const char *slash = strrchr(config_file, '/');
    int dir_len = slash != NULL ? (int)(slash - config_file) : 1;
    const char *dir = slash != NULL ? config_file : ".";
    if (slash == config_file)
        dir_len = 1; /* a file in / */
    char *out = NULL;
    if (asprintf(&out, "%.*s/%s", dir_len, dir, p) < 0)
        out = NULL;
    free(p);
    return out;
}

void kf_strlist_free(kf_strlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

int kf_yaml_dec_strlist(const kf_yaml_doc *doc, const kf_yaml_node *node, void *dst, const void *arg, kf_err *err)
{
    (void)arg;
    kf_strlist *out = dst;
    const kf_yaml_node *const *items = (const kf_yaml_node *const *)&node;
    size_t n = 1;
    if (node->type == KF_YAML_SEQ) {
        items = (const kf_yaml_node *const *)node->items;
        n = node->n;
    }
    kf_strlist l = {calloc(n + 1, sizeof(char *)), 0};
    if (l.v == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    for (size_t i = 0; i < n; i++) {
        char *s = NULL;
        int r = kf_yaml_dec_string(doc, items[i], &s, NULL, err);
        if (r != 0) {
            kf_strlist_free(&l);
            return r;
        }
        l.v[l.n++] = s;
    }
    kf_strlist_free(out);
    *out = l;
    return 0;
}
