#include "kf_rpc_client.h"

#include <errno.h>
#include <stdbool.h>
#include <strings.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "kf_secmem.h"

#define RESPONSE_MAX (16u << 20)

struct kf_rpc_client {
    CURL *curl;
    char **servers;
    size_t n_servers;
    size_t current; /* the server that answered last; tried first */
    long timeout_ms;
    kf_secbuf *bearer; /* "Authorization: Bearer TOKEN" */
};

typedef struct buf {
    char *data;
    size_t len;
    int overflow;
    char leader[128]; /* the keyfleet-leader header of the answer, if any */
} buf;

#define LEADER_HEADER "keyfleet-leader:"
#define MAX_REDIRECTS 2

/* Picks up "keyfleet-leader: host:port", which a coordinator that is not the leader sends with
 * its `unavailable` answer. */
static size_t on_header(char *p, size_t size, size_t nmemb, void *userdata)
{
    buf *b = userdata;
    size_t n = size * nmemb, hl = sizeof(LEADER_HEADER) - 1;
    if (n > hl && strncasecmp(p, LEADER_HEADER, hl) == 0) {
        const char *v = p + hl;
        size_t vl = n - hl;
        while (vl > 0 && (*v == ' ' || *v == '\t'))
            v++, vl--;
        while (vl > 0 && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
            vl--;
        bool ok = vl > 0 && vl < sizeof(b->leader) && memchr(v, ':', vl) != NULL;
        for (size_t i = 0; ok && i < vl; i++)
            ok = (v[i] >= '0' && v[i] <= '9') || (v[i] >= 'a' && v[i] <= 'z') || (v[i] >= 'A' && v[i] <= 'Z') ||
                 v[i] == '.' || v[i] == '-' || v[i] == ':' || v[i] == '[' || v[i] == ']';
        if (ok) {
            memcpy(b->leader, v, vl);
            b->leader[vl] = '\0';
        }
    }
    return n;
}

static size_t on_write(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    buf *b = userdata;
    size_t n = size * nmemb;
    if (b->len + n > RESPONSE_MAX) {
        b->overflow = 1;
        return 0;
    }
    char *d = realloc(b->data, b->len + n + 1);
    if (d == NULL)
        return 0;
    memcpy(d + b->len, ptr, n);
    b->data = d;
    b->len += n;
    d[b->len] = '\0';
    return n;
}

int kf_rpc_client_new(const kf_rpc_opts *opts, kf_rpc_client **ret, kf_err *err)
{
    if (opts->n_servers == 0)
        return kf_err_set(err, -EINVAL, "no coordinator address configured");
    static int global_init;
    if (!global_init) {
        curl_global_init(CURL_GLOBAL_DEFAULT);
        global_init = 1;
    }
    kf_rpc_client *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    c->servers = calloc(opts->n_servers, sizeof(char *));
    c->curl = curl_easy_init();
    if (c->servers == NULL || c->curl == NULL) {
        kf_rpc_client_free(c);
        return kf_err_set(err, -ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < opts->n_servers; i++) {
        if ((c->servers[i] = strdup(opts->servers[i])) == NULL) {
            kf_rpc_client_free(c);
            return kf_err_set(err, -ENOMEM, "out of memory");
        }
        c->n_servers++;
    }
    c->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : 10000;
    CURL *h = c->curl;
    curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    curl_easy_setopt(h, CURLOPT_SSLVERSION, (long)(CURL_SSLVERSION_TLSv1_3 | CURL_SSLVERSION_MAX_DEFAULT));
    curl_easy_setopt(h, CURLOPT_PIPEWAIT, 1L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 2L);
    if (opts->ca_file != NULL)
        curl_easy_setopt(h, CURLOPT_CAINFO, opts->ca_file);
    if (opts->cert_file != NULL) {
        curl_easy_setopt(h, CURLOPT_SSLCERT, opts->cert_file);
        curl_easy_setopt(h, CURLOPT_SSLKEY, opts->key_file);
    }
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, c->timeout_ms);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, c->timeout_ms);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    *ret = c;
    return 0;
}

void kf_rpc_client_free(kf_rpc_client *c)
{
    if (c == NULL)
        return;
    if (c->curl != NULL)
        curl_easy_cleanup(c->curl);
    for (size_t i = 0; i < c->n_servers; i++)
        free(c->servers[i]);
    free(c->servers);
    kf_secbuf_free(c->bearer);
    free(c);
}

int kf_rpc_client_set_bearer(kf_rpc_client *c, const char *token)
{
    kf_secbuf_free(c->bearer);
    c->bearer = NULL;
    if (token == NULL)
        return 0;
    size_t n = strlen(token);
    if ((c->bearer = kf_secbuf_new(n + 32)) == NULL)
        return -ENOMEM;
    snprintf((char *)c->bearer->data, c->bearer->cap, "Authorization: Bearer %s", token);
    return 0;
}

/* One request to one server. Returns 0 with a response, or a negative errno for a transport error. */
static int perform(kf_rpc_client *c, const char *server, const char *path, const uint8_t *body, size_t body_len,
                   int post, long *ret_status, buf *resp, char *ctype, size_t ctype_size, kf_err *err)
{
    char url[512];
    snprintf(url, sizeof(url), "https://%s%s", server, path);
    CURL *h = c->curl;
    curl_easy_setopt(h, CURLOPT_URL, url);
    struct curl_slist *hdrs = NULL;
    if (post) {
        hdrs = curl_slist_append(hdrs, "Content-Type: application/proto");
        hdrs = curl_slist_append(hdrs, "Connect-Protocol-Version: 1");
        if (c->bearer != NULL)
            hdrs = curl_slist_append(hdrs, (const char *)c->bearer->data);
        curl_easy_setopt(h, CURLOPT_POST, 1L);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body_len > 0 ? (const char *)body : "");
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)body_len);
    } else {
        curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    }
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, resp);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, resp);
    CURLcode cc = curl_easy_perform(h);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, NULL);
    for (struct curl_slist *l = hdrs; l != NULL; l = l->next)
        kf_wipe(l->data, strlen(l->data)); /* the bearer token */
    curl_slist_free_all(hdrs);
    if (cc != CURLE_OK) {
        if (resp->overflow)
            return kf_err_set(err, -EMSGSIZE, "%s: response larger than %u bytes", server, RESPONSE_MAX);
        return kf_err_set(err, -ECONNREFUSED, "%s: %s", server, curl_easy_strerror(cc));
    }
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, ret_status);
    char *ct = NULL;
    curl_easy_getinfo(h, CURLINFO_CONTENT_TYPE, &ct);
    snprintf(ctype, ctype_size, "%s", ct != NULL ? ct : "");
    return 0;
}

/* The index of server addr, added to the list when it is new; -1 when out of memory. */
static int server_index(kf_rpc_client *c, const char *addr)
{
    for (size_t i = 0; i < c->n_servers; i++)
        if (strcmp(c->servers[i], addr) == 0)
            return (int)i;
    char **v = realloc(c->servers, (c->n_servers + 1) * sizeof(char *));
    if (v == NULL)
        return -1;
    c->servers = v;
    if ((v[c->n_servers] = strdup(addr)) == NULL)
        return -1;
    return (int)c->n_servers++;
}

/* Tries each server, starting with the one that answered last, and follows a leader hint (an
 * `unavailable` answer naming the leader) at most MAX_REDIRECTS times. */
static int request(kf_rpc_client *c, const char *path, const uint8_t *body, size_t body_len, int post,
                   long *ret_status, buf *resp, char *ctype, size_t ctype_size, char *ret_server,
                   size_t server_size, kf_err *err)
{
    int r = -ECONNREFUSED, redirects = 0;
    for (size_t k = 0; k < c->n_servers; k++) {
        size_t i = (c->current + k) % c->n_servers;
        free(resp->data);
        *resp = (buf){0};
        r = perform(c, c->servers[i], path, body, body_len, post, ret_status, resp, ctype, ctype_size, err);
        if (r == 0) {
            c->current = i;
            snprintf(ret_server, server_size, "%s", c->servers[i]);
            int next;
            if (*ret_status == 503 && resp->leader[0] != '\0' && redirects < MAX_REDIRECTS &&
                strcmp(resp->leader, c->servers[i]) != 0 && (next = server_index(c, resp->leader)) >= 0) {
                redirects++;
                c->current = (size_t)next;
                k = (size_t)-1; /* start over from the leader */
                continue;
            }
            return 0;
        }
        if (r == -EMSGSIZE)
            return r;
    }
    return r;
}

int kf_rpc_call(kf_rpc_client *c, const char *method, const ProtobufCMessage *req,
                const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **ret_resp, kf_rpc_status *st,
                kf_err *err)
{
    *ret_resp = NULL;
    memset(st, 0, sizeof(*st));
    size_t len = protobuf_c_message_get_packed_size(req);
    uint8_t *body = malloc(len > 0 ? len : 1);
    if (body == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    protobuf_c_message_pack(req, body);
    char path[256];
    snprintf(path, sizeof(path), "/%s", method);
    long status = 0;
    buf resp = {0};
    char ctype[128];
    int r = request(c, path, body, len, 1, &status, &resp, ctype, sizeof(ctype), st->server, sizeof(st->server), err);
    /* The request may carry secrets (a secret id); wipe our copy. */
    kf_wipe(body, len);
    free(body);
    if (r != 0) {
        free(resp.data);
        return r;
    }
    st->http_status = (int)status;
    long ver = 0;
    curl_easy_getinfo(c->curl, CURLINFO_HTTP_VERSION, &ver);
    st->http_version = ver == CURL_HTTP_VERSION_2_0 ? 2 : ver == CURL_HTTP_VERSION_1_1 ? 1 : 0;
    if (status == 200) {
        if (strncmp(ctype, "application/proto", 17) != 0) {
            free(resp.data);
            return kf_err_set(err, -EPROTO, "%s: unexpected content type '%s'", st->server, ctype);
        }
        ProtobufCMessage *m = protobuf_c_message_unpack(resp_desc, NULL, resp.len, (const uint8_t *)resp.data);
        free(resp.data);
        if (m == NULL)
            return kf_err_set(err, -EPROTO, "%s: malformed response body", st->server);
        st->code = KF_CONNECT_OK;
        *ret_resp = m;
        return 0;
    }
    char *msg = NULL;
    kf_connect_code code;
    if (resp.data != NULL && kf_connect_error_parse(resp.data, resp.len, &code, &msg) == 0) {
        st->code = code;
        snprintf(st->message, sizeof(st->message), "%s", msg);
        free(msg);
    } else {
        st->code = kf_connect_code_from_http((int)status);
        snprintf(st->message, sizeof(st->message), "HTTP %ld", status);
    }
    free(resp.data);
    return 0;
}

int kf_rpc_get(kf_rpc_client *c, const char *path, long *ret_status, char **ret_body, kf_err *err)
{
    buf resp = {0};
    char ctype[128], server[128];
    int r = request(c, path, NULL, 0, 0, ret_status, &resp, ctype, sizeof(ctype), server, sizeof(server), err);
    if (r != 0) {
        free(resp.data);
        return r;
    }
    if (resp.data == NULL && (resp.data = strdup("")) == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    *ret_body = resp.data;
    return 0;
}
