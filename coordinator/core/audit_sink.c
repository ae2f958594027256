#include "core/audit_sink.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "kf_audit_json.h"
#include "kf_log.h"
#include "store/store_audit.h"

/* LOG_AUTHPRIV (10) * 8 + LOG_INFO (6): who got which key is authorization data. */
#define SYSLOG_PRI 86
#define BATCH 256

typedef struct sink {
    kfd_sink_config cfg;
    int fd;
    uint64_t done;   /* the last seq this sink took */
    bool failing;    /* its last write failed */
    char error[160];
} sink;

struct kfd_sinks {
    kfd_store *store;
    char host[128], name[64];
    sink s[KFD_AUDIT_SINKS_MAX];
    size_t n;
};

static int open_sink(sink *s)
{
    if (s->fd >= 0)
        return 0;
    int fd;
    if (s->cfg.type == KFD_SINK_FILE) {
        fd = open(s->cfg.path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    } else {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        if (strlen(s->cfg.path) >= sizeof(a.sun_path))
            return -ENAMETOOLONG;
        memcpy(a.sun_path, s->cfg.path, strlen(s->cfg.path) + 1);
        fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
            int e = errno;
            close(fd);
            errno = e;
            fd = -1;
        }
    }
    if (fd < 0)
        return -errno;
    s->fd = fd;
    return 0;
}

static void close_sink(sink *s)
{
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
}

int kfd_sinks_open(const kfd_audit_config *cfg, const char *name, kfd_store *store, kfd_sinks **ret, kf_err *err)
{
    *ret = NULL;
    if (cfg->n_sinks == 0)
        return 0;
    kfd_sinks *k = calloc(1, sizeof(*k));
    if (k == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    k->store = store;
    snprintf(k->name, sizeof(k->name), "%s", name);
    if (gethostname(k->host, sizeof(k->host)) != 0 || k->host[0] == '\0')
        snprintf(k->host, sizeof(k->host), "-");
    kfd_audit_head h = {0};
    if (store != NULL && !kfd_store_failed(store))
        kfd_store_audit_head(store, &h);
    for (size_t i = 0; i < cfg->n_sinks; i++) {
        sink *s = &k->s[k->n++];
        s->cfg = cfg->sinks[i];
        s->fd = -1;
        s->done = h.seq;
        int r = open_sink(s);
        if (r != 0)
            kf_log_error("audit_sink_failed", "sink=%s required=%s error=%s", kf_log_q(s->cfg.path),
                         s->cfg.required ? "yes" : "no", kf_log_q(strerror(-r)));
    }
    *ret = k;
    return 0;
}

void kfd_sinks_free(kfd_sinks *k)
{
    if (k == NULL)
        return;
    for (size_t i = 0; i < k->n; i++)
        close_sink(&k->s[i]);
    free(k);
}

void kfd_sinks_reopen(kfd_sinks *k)
{
    for (size_t i = 0; k != NULL && i < k->n; i++)
        if (k->s[i].cfg.type == KFD_SINK_FILE) {
            close_sink(&k->s[i]);
            int r = open_sink(&k->s[i]);
            if (r != 0)
                kf_log_error("audit_sink_failed", "sink=%s error=%s", kf_log_q(k->s[i].cfg.path), kf_log_q(strerror(-r)));
            else
                kf_log_info("audit_sink_reopened", "sink=%s", kf_log_q(k->s[i].cfg.path));
        }
}

static int write_all(int fd, const char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        if (n == 0)
            return -EIO;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* One record to one sink. */
static int put(kfd_sinks *k, sink *s, const char *json, size_t json_len, uint64_t seq)
{
    int r = open_sink(s);
    if (r != 0)
        return r;
    if (s->cfg.type == KFD_SINK_FILE) {
        /* One write per line (O_APPEND). A short write (a full disk) fails, and what it did
         * write is cut off again, so the retry appends a whole line, not one after a fragment. */
        char *line = malloc(json_len + 1);
        if (line == NULL)
            return -ENOMEM;
        memcpy(line, json, json_len);
        line[json_len] = '\n';
        off_t start = lseek(s->fd, 0, SEEK_END);
        r = start < 0 ? -errno : write_all(s->fd, line, json_len + 1);
        free(line);
        if (r != 0 && start >= 0 && ftruncate(s->fd, start) != 0)
            kf_log_error("audit_sink_truncate_failed", "sink=%s error=%s", kf_log_q(s->cfg.path),
                         kf_log_q(strerror(errno)));
        return r;
    }
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    char ts[40];
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    /* RFC 5424: <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [SD] MSG */
    char *msg = NULL;
    int n = asprintf(&msg, "<%d>1 %s.%03ldZ %s keyfleetd %ld audit [keyfleet@32473 coordinator=\"%s\" seq=\"%llu\"] %.*s",
                     SYSLOG_PRI, ts, now.tv_nsec / 1000000, k->host, (long)getpid(), k->name,
                     (unsigned long long)seq, (int)json_len, json);
    if (n < 0)
        return -ENOMEM;
    ssize_t sent = send(s->fd, msg, (size_t)n, MSG_NOSIGNAL);
    r = sent == n ? 0 : sent < 0 ? -errno : -EMSGSIZE;
    free(msg);
    if (r == -ECONNREFUSED || r == -ENOTCONN)
        close_sink(s); /* the daemon restarted: connect again next time */
    return r;
}

int kfd_sinks_stream(kfd_sinks *k, kf_err *err)
{
    if (k == NULL || k->store == NULL || kfd_store_failed(k->store))
        return 0;
    kfd_audit_head h;
    kfd_store_audit_head(k->store, &h);
    int result = 0;
    for (size_t i = 0; i < k->n; i++) {
        sink *s = &k->s[i];
        while (s->done < h.seq) {
            Keyfleet__V1__AuditRecord **v = NULL;
            size_t n = 0;
            int r = kfd_store_records_after(k->store, s->done, BATCH, &v, &n);
            if (r == 0 && n == 0)
                r = -EIO; /* the store says it holds them */
            for (size_t j = 0; r == 0 && j < n; j++) {
                json_t *o = kf_audit_record_to_json(v[j]);
                char *js = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;
                json_decref(o);
                r = js != NULL ? put(k, s, js, strlen(js), v[j]->seq) : -ENOMEM;
                free(js);
                if (r == 0)
                    s->done = v[j]->seq;
            }
            kfd_store_free_records(v, n);
            if (r != 0) {
                if (!s->failing)
                    kf_log_error("audit_sink_failed", "sink=%s required=%s seq=%llu error=%s", kf_log_q(s->cfg.path),
                                 s->cfg.required ? "yes" : "no", (unsigned long long)(s->done + 1),
                                 kf_log_q(strerror(-r)));
                s->failing = true;
                snprintf(s->error, sizeof(s->error), "%s", strerror(-r));
                if (s->cfg.required && result == 0)
                    result = kf_err_set(err, -EIO, "required audit sink %s cannot take record %llu: %s",
                                        s->cfg.path, (unsigned long long)(s->done + 1), s->error);
                if (!s->cfg.required)
                    s->done = h.seq; /* an optional sink skips what it could not take */
                break;
            }
            if (s->failing) {
                s->failing = false;
                kf_log_info("audit_sink_recovered", "sink=%s seq=%llu", kf_log_q(s->cfg.path),
                            (unsigned long long)s->done);
            }
        }
    }
    return result;
}

bool kfd_sinks_ok(const kfd_sinks *k, const char **ret_why)
{
    static char why[300];
    for (size_t i = 0; k != NULL && i < k->n; i++)
        if (k->s[i].cfg.required && k->s[i].failing) {
            int n = snprintf(why, sizeof(why), "required audit sink %s failing: %s", k->s[i].cfg.path, k->s[i].error);
            (void)n;
            *ret_why = why;
            return false;
        }
    return true;
}
