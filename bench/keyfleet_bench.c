/* keyfleet-bench: a boot storm on one machine. N simulated nodes, each with its own certificate
 * (made once, cached), each opening a fresh TLS 1.3 mTLS connection and calling Release for its
 * volume, then opening the HPKE box. In the same run, the reference: the same N fresh mTLS
 * handshakes to /healthz (the handshake floor). Then the warm path: Release over one reused
 * HTTP/2 connection per simulated node, all nodes at once. Reports releases/s, the ratio to the floor, latency
 * percentiles, errors by code, the coordinator's CPU per release and its peak RSS.
 *
 *   keyfleet-bench --fleet DIR --server 127.0.0.1:PORT --pid KEYFLEETD_PID
 *                  [--nodes N] [--concurrency C] [--rate R] [--warm N] [--cache DIR] [--json]
 *   keyfleet-bench --fleet DIR --server 127.0.0.1:PORT --pid SERVER_PID --get PATH [...]
 *
 * --get measures a reference server instead (scripts/bench-peers: keyfleet-tls-floor, kxd): the
 * same node certificates and client, N fresh mTLS connections each fetching PATH, the server's
 * CPU per request. Nothing is enrolled and no policy is written.
 *
 * DIR is a `keyfleetctl init` folder (its CA signs the node certificates; its operator puts the
 * bench policy). Traffic goes only to --server, which must be on 127.0.0.0/8. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/ssl.h>

#include "ca.h"
#include "keyfleet/v1/admin.pb-c.h"
#include "keyfleet/v1/node.pb-c.h"
#include "kf_connect.h"
#include "kf_node_client.h"
#include "kf_seal.h"

#define MAX_NODES 100000

typedef struct opts {
    const char *fleet, *server, *cache;
    const char *get_path; /* --get: only fresh-connection GETs of this path (another server: a reference) */
    long pid;
    int nodes, concurrency, warm;
    double rate; /* arrivals per second; 0 = all at once (bounded by concurrency) */
    int json;
} opts;

typedef struct node {
    char name[32];
    char cert[512], key[512];
    char volume[32];
    char *wrapped;
} node;

typedef struct xfer {
    CURL *easy;
    int node;
    char *body;
    size_t body_len;
    char *resp;
    size_t resp_len;
    struct curl_slist *headers;
    kf_seal_receiver *rx; /* the simulated agent run's key: fresh per node, kept over a warm connection */
    double start;
    int in_use;
} xfer;

typedef struct phase_result {
    int done, ok;
    double seconds;
    double *latency_ms;
    int errors[KF_CONNECT_CODE_COUNT + 2]; /* +transport, +bad box */
    double cpu_s;
} phase_result;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double proc_cpu_s(long pid)
{
    char path[64], buf[2048];
    snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    unsigned long utime = 0, stime = 0;
    /* fields after ") ": state(3) ... utime(14) stime(15) */
    if (p == NULL || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime, &stime) != 2)
        return -1;
    return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

static long proc_hwm_kb(long pid, const char *field)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%ld/status", pid);
    FILE *f = fopen(path, "r");
    long v = -1;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL)
        if (strncmp(line, field, strlen(field)) == 0)
            v = strtol(line + strlen(field), NULL, 10);
    if (f != NULL)
        fclose(f);
    return v;
}

static size_t on_data(char *p, size_t s, size_t n, void *arg)
{
    xfer *x = arg;
    size_t len = s * n;
    char *r = realloc(x->resp, x->resp_len + len + 1);
    if (r == NULL)
        return 0;
    memcpy(r + x->resp_len, p, len);
    x->resp = r;
    x->resp_len += len;
    return len;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(double *v, int n, double p)
{
    if (n == 0)
        return 0;
    int i = (int)(p * (n - 1) + 0.5);
    return v[i];
}

/* Builds a Release body for node nd, with the key of the run x stands for (made on first use). */
static int release_body(const node *nd, xfer *x)
{
    if (x->rx == NULL && kf_seal_receiver_new(nd->name, &x->rx) != 0)
        return -1;
    Keyfleet__V1__VolumeRef ref = KEYFLEET__V1__VOLUME_REF__INIT;
    ref.id = (char *)nd->volume;
    ref.kind = KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_LUKS2;
    Keyfleet__V1__ReleaseRequest req = KEYFLEET__V1__RELEASE_REQUEST__INIT;
    req.volume = &ref;
    req.wrapped_key = nd->wrapped;
    req.ephemeral_public_key.data = (uint8_t *)kf_seal_receiver_public_key(x->rx);
    req.ephemeral_public_key.len = 32;
    x->body_len = protobuf_c_message_get_packed_size(&req.base);
    x->body = malloc(x->body_len);
    if (x->body == NULL)
        return -1;
    protobuf_c_message_pack(&req.base, (uint8_t *)x->body);
    return 0;
}

/* As keyfleet-agent's client (kf_tls.c): the node certificate alone, not a chain built from
 * the CA file, which the coordinator holds already. */
static CURLcode no_auto_chain(CURL *h, void *ssl_ctx, void *arg)
{
    (void)h, (void)arg;
    SSL_CTX_set_mode((SSL_CTX *)ssl_ctx, SSL_MODE_NO_AUTO_CHAIN);
    return CURLE_OK;
}

static void setup_easy(const opts *o, const node *nd, xfer *x, int release, int fresh)
{
    char url[256];
    snprintf(url, sizeof(url), "https://%s%s", o->server,
             release ? "/keyfleet.v1.NodeService/Release" : o->get_path != NULL ? o->get_path : "/healthz");
    if (x->easy == NULL)
        x->easy = curl_easy_init();
    CURL *h = x->easy;
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    curl_easy_setopt(h, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_3);
    curl_easy_setopt(h, CURLOPT_SSLCERT, nd->cert);
    curl_easy_setopt(h, CURLOPT_SSLKEY, nd->key);
    char ca[512];
    snprintf(ca, sizeof(ca), "%s/ca.crt", o->fleet);
    curl_easy_setopt(h, CURLOPT_CAINFO, ca);
    curl_easy_setopt(h, CURLOPT_SSL_CTX_FUNCTION, no_auto_chain);
    curl_easy_setopt(h, CURLOPT_FRESH_CONNECT, (long)fresh);
    curl_easy_setopt(h, CURLOPT_FORBID_REUSE, (long)fresh);
    curl_easy_setopt(h, CURLOPT_PIPEWAIT, 1L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 30000L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(h, CURLOPT_PRIVATE, x);
    if (release) {
        x->headers = curl_slist_append(NULL, "Content-Type: application/proto");
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, x->headers);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, x->body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)x->body_len);
    } else {
        curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    }
}

/* Checks a Release answer: status 200, RELEASED, and the box opens for this node and volume. */
static int check_release(const node *nd, xfer *x, long status)
{
    if (status != 200) {
        kf_connect_code code = KF_CONNECT_UNKNOWN;
        char *msg = NULL;
        if (x->resp != NULL && kf_connect_error_parse(x->resp, x->resp_len, &code, &msg) == 0)
            free(msg);
        return (int)code;
    }
    Keyfleet__V1__ReleaseResponse *r =
        keyfleet__v1__release_response__unpack(NULL, x->resp_len, (const uint8_t *)x->resp);
    int rc = KF_CONNECT_CODE_COUNT + 1;
    if (r != NULL && r->status == KEYFLEET__V1__RELEASE_STATUS__RELEASE_STATUS_RELEASED && r->sealed_key != NULL) {
        uint8_t aad[KF_SEAL_AAD_MAX], key[32];
        size_t al = kf_seal_aad("release", r->request_id, nd->name, nd->volume, aad, sizeof(aad));
        if (al > 0 && kf_seal_receiver_open(x->rx, r->sealed_key->enc.data, r->sealed_key->enc.len, r->sealed_key->seq,
                                            aad, al, r->sealed_key->ciphertext.data, r->sealed_key->ciphertext.len,
                                            key) == 0)
            rc = 0;
        kf_wipe(key, sizeof(key));
    }
    if (r != NULL)
        keyfleet__v1__release_response__free_unpacked(r, NULL);
    return rc;
}

static void xfer_reset(xfer *x)
{
    free(x->body);
    free(x->resp);
    curl_slist_free_all(x->headers);
    x->body = x->resp = NULL;
    x->headers = NULL;
    x->body_len = x->resp_len = 0;
}

/* Records a finished transfer: latency when it succeeded, its error code otherwise. */
static void finish_xfer(const CURLMsg *m, node *nodes, int release, phase_result *res, xfer **ret)
{
    xfer *x = NULL;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
    long status = 0;
    curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &status);
    int code;
    if (m->data.result != CURLE_OK)
        code = KF_CONNECT_CODE_COUNT; /* transport */
    else if (release)
        code = check_release(&nodes[x->node], x, status);
    else
        code = status == 200 ? 0 : (int)kf_connect_code_from_http((int)status);
    if (code == 0)
        res->latency_ms[res->ok++] = (now_s() - x->start) * 1000;
    else
        res->errors[code]++;
    res->done++;
    *ret = x;
}

/* Runs one phase over `count` requests: fresh connections (release or healthz). */
static void run_phase(const opts *o, node *nodes, int count, int release, phase_result *res)
{
    CURLM *multi = curl_multi_init();
    curl_multi_setopt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)o->concurrency);
    xfer *xs = calloc((size_t)o->concurrency, sizeof(xfer));
    res->latency_ms = calloc((size_t)count, sizeof(double));
    double cpu0 = proc_cpu_s(o->pid), t0 = now_s();
    int next = 0, running = 0;
    while (res->done < count) {
        /* Admit new nodes: all at once up to the concurrency, or at the open-loop rate. */
        for (int i = 0; i < o->concurrency && next < count; i++) {
            if (xs[i].in_use)
                continue;
            if (o->rate > 0 && now_s() - t0 < next / o->rate)
                break;
            xfer *x = &xs[i];
            x->node = next++;
            if (release && release_body(&nodes[x->node], x) != 0) {
                kf_seal_receiver_free(x->rx);
                x->rx = NULL;
                res->errors[KF_CONNECT_CODE_COUNT]++;
                res->done++;
                continue;
            }
            setup_easy(o, &nodes[x->node], x, release, 1);
            x->start = now_s();
            x->in_use = 1;
            curl_multi_add_handle(multi, x->easy);
        }
        curl_multi_perform(multi, &running);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(multi, &left)) != NULL) {
            if (m->msg != CURLMSG_DONE)
                continue;
            xfer *x;
            finish_xfer(m, nodes, release, res, &x);
            curl_multi_remove_handle(multi, x->easy);
            xfer_reset(x);
            kf_seal_receiver_free(x->rx); /* the next node on this slot is another agent run */
            x->rx = NULL;
            x->in_use = 0;
        }
        if (running > 0 || next < count)
            curl_multi_poll(multi, NULL, 0, 5, NULL);
    }
    res->seconds = now_s() - t0;
    res->cpu_s = proc_cpu_s(o->pid) - cpu0;
    for (int i = 0; i < o->concurrency; i++) {
        xfer_reset(&xs[i]);
        kf_seal_receiver_free(xs[i].rx);
        if (xs[i].easy != NULL)
            curl_easy_cleanup(xs[i].easy);
    }
    free(xs);
    curl_multi_cleanup(multi);
    qsort(res->latency_ms, (size_t)res->ok, sizeof(double), cmp_double);
}

/* Warm path: n_nodes simulated nodes at once, each over its own long-lived HTTP/2 connection,
 * per_node releases each, one after another on that connection. */
static void run_warm(const opts *o, node *nodes, int n_nodes, int per_node, phase_result *res)
{
    int total = n_nodes * per_node;
    res->latency_ms = calloc((size_t)total, sizeof(double));
    CURLM *multi = curl_multi_init();
    xfer *xs = calloc((size_t)n_nodes, sizeof(xfer));
    int *sent = calloc((size_t)n_nodes, sizeof(int));
    double cpu0 = proc_cpu_s(o->pid), t0 = now_s();
    int running = 0;
    for (int i = 0; i < n_nodes; i++) {
        xs[i].node = i;
        if (release_body(&nodes[i], &xs[i]) != 0)
            continue;
        setup_easy(o, &nodes[i], &xs[i], 1, 0);
        xs[i].start = now_s();
        sent[i] = 1;
        curl_multi_add_handle(multi, xs[i].easy);
    }
    while (res->done < total) {
        curl_multi_perform(multi, &running);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(multi, &left)) != NULL) {
            if (m->msg != CURLMSG_DONE)
                continue;
            xfer *x;
            finish_xfer(m, nodes, 1, res, &x);
            curl_multi_remove_handle(multi, x->easy);
            xfer_reset(x);
            if (sent[x->node] < per_node && release_body(&nodes[x->node], x) == 0) {
                /* The same easy handle keeps its connection: this node's next release reuses it. */
                setup_easy(o, &nodes[x->node], x, 1, 0);
                x->start = now_s();
                sent[x->node]++;
                curl_multi_add_handle(multi, x->easy);
            }
        }
        if (res->done < total)
            curl_multi_poll(multi, NULL, 0, 5, NULL);
    }
    res->seconds = now_s() - t0;
    res->cpu_s = proc_cpu_s(o->pid) - cpu0;
    for (int i = 0; i < n_nodes; i++) {
        xfer_reset(&xs[i]);
        kf_seal_receiver_free(xs[i].rx);
        if (xs[i].easy != NULL)
            curl_easy_cleanup(xs[i].easy);
    }
    free(xs);
    free(sent);
    curl_multi_cleanup(multi);
    qsort(res->latency_ms, (size_t)res->ok, sizeof(double), cmp_double);
}

/* The whole of a small file, NUL-terminated; NULL when it cannot be read. */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return NULL;
    char *buf = calloc(1, 65537);
    size_t n = buf != NULL ? fread(buf, 1, 65536, f) : 0;
    fclose(f);
    if (buf != NULL)
        buf[n] = '\0';
    return buf;
}

/* The cache holds certificates from one fleet's CA and keys wrapped by its coordinator: a cache
 * made for another fleet would fail every handshake, so it is refused up front. */
static int check_cache_fleet(const char *ca_cert, const char *cache)
{
    char mark[600];
    snprintf(mark, sizeof(mark), "%s/fleet-ca.crt", cache);
    char *want = slurp(ca_cert), *have = slurp(mark);
    int r = 0;
    if (want == NULL) {
        fprintf(stderr, "keyfleet-bench: cannot read %s\n", ca_cert);
        r = -1;
    } else if (have == NULL) {
        FILE *f = fopen(mark, "w");
        if (f == NULL || fputs(want, f) < 0)
            fprintf(stderr, "keyfleet-bench: cannot write %s\n", mark), r = -1;
        if (f != NULL)
            fclose(f);
    } else if (strcmp(want, have) != 0) {
        fprintf(stderr, "keyfleet-bench: %s was made for another fleet (its CA differs from %s); remove it or pass "
                        "another --cache\n", cache, ca_cert);
        r = -1;
    }
    free(want);
    free(have);
    return r;
}

/* Node certificates, cached; volumes enrolled once, wrapped keys cached. */
static int prepare(const opts *o, node *nodes)
{
    char ca_cert[512], ca_key[512], wrapped_path[600];
    snprintf(ca_cert, sizeof(ca_cert), "%s/ca.crt", o->fleet);
    snprintf(ca_key, sizeof(ca_key), "%s/ca.key", o->fleet);
    mkdir(o->cache, 0700);
    if (check_cache_fleet(ca_cert, o->cache) != 0)
        return -1;
    snprintf(wrapped_path, sizeof(wrapped_path), "%s/wrapped.txt", o->cache);
    FILE *wf = fopen(wrapped_path, "r");
    char line[512];
    int have = 0;
    while (wf != NULL && have < o->nodes && fgets(line, sizeof(line), wf) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        nodes[have++].wrapped = strdup(line);
    }
    if (wf != NULL)
        fclose(wf);
    int made = 0;
    for (int i = 0; i < o->nodes; i++) {
        node *nd = &nodes[i];
        snprintf(nd->name, sizeof(nd->name), "bench-%05d", i);
        snprintf(nd->volume, sizeof(nd->volume), "bench-vol-%05d", i);
        snprintf(nd->cert, sizeof(nd->cert), "%s/%s.crt", o->cache, nd->name);
        snprintf(nd->key, sizeof(nd->key), "%s/%s.key", o->cache, nd->name);
        if (access(nd->cert, R_OK) != 0) {
            kfctl_cert_opts co = {.kind = KF_PEER_NODE, .name = nd->name, .days = 30};
            kf_err err = {0};
            if (kfctl_cert_issue(ca_cert, ca_key, &co, nd->cert, nd->key, true, &err) != 0) {
                fprintf(stderr, "keyfleet-bench: %s\n", err.msg);
                return -1;
            }
            made++;
        }
    }
    if (made > 0)
        fprintf(stderr, "keyfleet-bench: issued %d node certificates into %s\n", made, o->cache);
    if (have >= o->nodes || o->get_path != NULL)
        return 0;
    /* Enroll the missing volumes (once; the wrapped keys are cached for later runs). */
    wf = fopen(wrapped_path, "a");
    for (int i = have; i < o->nodes; i++) {
        node *nd = &nodes[i];
        const char *servers[] = {o->server};
        kf_rpc_opts ro = {.servers = servers, .n_servers = 1, .cert_file = nd->cert, .key_file = nd->key};
        char ca[512];
        snprintf(ca, sizeof(ca), "%s/ca.crt", o->fleet);
        ro.ca_file = ca;
        kf_rpc_client *c = NULL;
        kf_err err = {0};
        kf_rpc_status st;
        kf_enrolled e = {0};
        Keyfleet__V1__VolumeRef ref = KEYFLEET__V1__VOLUME_REF__INIT;
        ref.id = nd->volume;
        ref.kind = KEYFLEET__V1__VOLUME_KIND__VOLUME_KIND_LUKS2;
        char rid[40];
        snprintf(rid, sizeof(rid), "bench-enroll-%05d-0000", i);
        if (kf_rpc_client_new(&ro, &c, &err) != 0 ||
            kf_node_enroll(c, NULL, nd->name, &ref, NULL, 0, rid, NULL, &e, &st, &err) != 0 || st.code != KF_CONNECT_OK) {
            fprintf(stderr, "keyfleet-bench: enrolling %s: %s %s\n", nd->volume, err.msg, st.message);
            kf_rpc_client_free(c);
            if (wf != NULL)
                fclose(wf);
            return -1;
        }
        nd->wrapped = strdup(e.wrapped);
        if (wf != NULL)
            fprintf(wf, "%s\n", e.wrapped);
        kf_enrolled_clear(&e);
        kf_rpc_client_free(c);
    }
    if (wf != NULL)
        fclose(wf);
    return 0;
}

static int put_policy(const opts *o)
{
    char cert[512], key[512], ca[512];
    snprintf(cert, sizeof(cert), "%s/operator.crt", o->fleet);
    snprintf(key, sizeof(key), "%s/operator.key", o->fleet);
    snprintf(ca, sizeof(ca), "%s/ca.crt", o->fleet);
    const char *servers[] = {o->server};
    kf_rpc_opts ro = {.servers = servers, .n_servers = 1, .cert_file = cert, .key_file = key, .ca_file = ca};
    kf_rpc_client *c = NULL;
    kf_err err = {0};
    if (kf_rpc_client_new(&ro, &c, &err) != 0)
        return -1;
    Keyfleet__V1__PutPolicyRequest req = KEYFLEET__V1__PUT_POLICY_REQUEST__INIT;
    req.yaml = (char *)"rules:\n  - name: bench\n    match: {nodes: {names: [\"bench-*\"]}}\n    effect: allow\n";
    ProtobufCMessage *m = NULL;
    kf_rpc_status st;
    int r = kf_rpc_call(c, "keyfleet.v1.AdminService/PutPolicy", &req.base,
                        &keyfleet__v1__put_policy_response__descriptor, &m, &st, &err);
    if (m != NULL)
        protobuf_c_message_free_unpacked(m, NULL);
    kf_rpc_client_free(c);
    return r == 0 && st.code == KF_CONNECT_OK ? 0 : -1;
}

static void print_phase(const char *name, const phase_result *r, int json)
{
    double rps = r->seconds > 0 ? r->ok / r->seconds : 0;
    double cpu_us = r->ok > 0 ? r->cpu_s / r->ok * 1e6 : 0;
    int errs = r->done - r->ok;
    if (json) {
        printf("\"%s\":{\"ok\":%d,\"errors\":%d,\"seconds\":%.3f,\"per_second\":%.1f,\"p50_ms\":%.2f,\"p90_ms\":%.2f,"
               "\"p99_ms\":%.2f,\"max_ms\":%.2f,\"server_cpu_us_per_op\":%.1f}",
               name, r->ok, errs, r->seconds, rps, pct(r->latency_ms, r->ok, 0.5), pct(r->latency_ms, r->ok, 0.9),
               pct(r->latency_ms, r->ok, 0.99), r->ok ? r->latency_ms[r->ok - 1] : 0, cpu_us);
        return;
    }
    printf("%-10s %6d ok %5d err  %8.1f/s  p50 %7.2f ms  p90 %7.2f  p99 %7.2f  max %7.2f  server CPU %7.1f us/op\n",
           name, r->ok, errs, rps, pct(r->latency_ms, r->ok, 0.5), pct(r->latency_ms, r->ok, 0.9),
           pct(r->latency_ms, r->ok, 0.99), r->ok ? r->latency_ms[r->ok - 1] : 0, cpu_us);
    for (int c = 1; c < KF_CONNECT_CODE_COUNT + 2; c++)
        if (r->errors[c] > 0)
            printf("           errors: %s=%d\n",
                   c == KF_CONNECT_CODE_COUNT       ? "transport"
                   : c == KF_CONNECT_CODE_COUNT + 1 ? "box_does_not_open"
                                                    : kf_connect_code_name((kf_connect_code)c),
                   r->errors[c]);
}

/* --get: one phase of fresh-connection GETs against a reference server. */
static int run_get(const opts *o, node *nodes)
{
    phase_result get = {0};
    run_phase(o, nodes, o->nodes, 0, &get);
    if (o->json) {
        printf("{\"nodes\":%d,\"concurrency\":%d,", o->nodes, o->concurrency);
        print_phase("get_fresh", &get, 1);
        printf(",\"server_peak_rss_kb\":%ld}\n", proc_hwm_kb(o->pid, "VmHWM:"));
    } else {
        printf("nodes %d, concurrency %d, GET %s\n", o->nodes, o->concurrency, o->get_path);
        print_phase("get", &get, 0);
    }
    int errors = get.done - get.ok;
    for (int i = 0; i < o->nodes; i++)
        free(nodes[i].wrapped);
    free(nodes);
    free(get.latency_ms);
    curl_global_cleanup();
    return errors == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    opts o = {.nodes = 1000, .concurrency = 64, .warm = 0};
    static const struct option lo[] = {{"fleet", required_argument, NULL, 'f'},  {"server", required_argument, NULL, 's'},
                                       {"pid", required_argument, NULL, 'p'},    {"nodes", required_argument, NULL, 'n'},
                                       {"concurrency", required_argument, NULL, 'c'},
                                       {"rate", required_argument, NULL, 'r'},   {"warm", required_argument, NULL, 'w'},
                                       {"cache", required_argument, NULL, 'C'},  {"json", no_argument, NULL, 'j'},
                                       {"get", required_argument, NULL, 'g'},
                                       {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (c) {
        case 'f': o.fleet = optarg; break;
        case 's': o.server = optarg; break;
        case 'p': o.pid = strtol(optarg, NULL, 10); break;
        case 'n': o.nodes = atoi(optarg); break;
        case 'c': o.concurrency = atoi(optarg); break;
        case 'r': o.rate = atof(optarg); break;
        case 'w': o.warm = atoi(optarg); break;
        case 'C': o.cache = optarg; break;
        case 'j': o.json = 1; break;
        case 'g': o.get_path = optarg; break;
        default: return 2;
        }
    }
    char cache[600];
    if (o.cache == NULL && o.fleet != NULL) {
        snprintf(cache, sizeof(cache), "%s/bench-nodes", o.fleet);
        o.cache = cache;
    }
    struct in_addr a;
    char host[64] = "";
    const char *colon = o.server != NULL ? strrchr(o.server, ':') : NULL;
    if (colon != NULL && (size_t)(colon - o.server) < sizeof(host))
        memcpy(host, o.server, (size_t)(colon - o.server));
    if (o.fleet == NULL || o.server == NULL || o.pid <= 0 || o.nodes < 1 || o.nodes > MAX_NODES || o.concurrency < 1 ||
        o.concurrency > 4096 || inet_pton(AF_INET, host, &a) != 1 || (ntohl(a.s_addr) >> 24) != 127 ||
        (o.get_path != NULL && (o.get_path[0] != '/' || strpbrk(o.get_path, " \r\n") != NULL))) {
        fprintf(stderr, "usage: keyfleet-bench --fleet DIR --server 127.x.y.z:PORT --pid PID [--nodes N<=%d]\n"
                        "         [--concurrency C<=4096] [--rate R] [--warm N] [--cache DIR] [--json] [--get /PATH]\n"
                        "(the server must be on 127.0.0.0/8)\n",
                MAX_NODES);
        return 2;
    }
    curl_global_init(CURL_GLOBAL_DEFAULT);
    node *nodes = calloc((size_t)o.nodes, sizeof(node));
    if (nodes == NULL || (o.get_path == NULL && put_policy(&o) != 0) || prepare(&o, nodes) != 0) {
        fprintf(stderr, "keyfleet-bench: setup failed (is keyfleetd running with this fleet?)\n");
        return 1;
    }
    if (o.get_path != NULL)
        return run_get(&o, nodes);
    phase_result floor = {0}, storm = {0}, warm = {0};
    run_phase(&o, nodes, o.nodes, 0, &floor);
    run_phase(&o, nodes, o.nodes, 1, &storm);
    if (o.warm > 0)
        run_warm(&o, nodes, o.concurrency < o.nodes ? o.concurrency : o.nodes, o.warm, &warm);
    long hwm = proc_hwm_kb(o.pid, "VmHWM:"), rss = proc_hwm_kb(o.pid, "VmRSS:");
    double floor_rps = floor.seconds > 0 ? floor.ok / floor.seconds : 0;
    double storm_rps = storm.seconds > 0 ? storm.ok / storm.seconds : 0;
    double ratio = floor_rps > 0 ? storm_rps / floor_rps : 0;
    if (o.json) {
        printf("{\"nodes\":%d,\"concurrency\":%d,", o.nodes, o.concurrency);
        print_phase("handshake_floor", &floor, 1);
        printf(",");
        print_phase("release_fresh", &storm, 1);
        if (o.warm > 0) {
            printf(",");
            print_phase("release_warm", &warm, 1);
        }
        printf(",\"ratio_to_floor\":%.3f,\"server_peak_rss_kb\":%ld,\"server_rss_kb\":%ld}\n", ratio, hwm, rss);
    } else {
        printf("nodes %d, concurrency %d%s\n", o.nodes, o.concurrency, o.rate > 0 ? ", open-loop" : ", all at once");
        print_phase("floor", &floor, 0);
        print_phase("release", &storm, 0);
        if (o.warm > 0)
            print_phase("warm", &warm, 0);
        printf("ratio release/floor: %.3f\nserver peak RSS: %ld KiB (now %ld KiB)\n", ratio, hwm, rss);
    }
    int errors = (floor.done - floor.ok) + (storm.done - storm.ok) + (warm.done - warm.ok);
    for (int i = 0; i < o.nodes; i++)
        free(nodes[i].wrapped);
    free(nodes);
    free(floor.latency_ms);
    free(storm.latency_ms);
    free(warm.latency_ms);
    curl_global_cleanup();
    return errors == 0 ? 0 : 1;
}
