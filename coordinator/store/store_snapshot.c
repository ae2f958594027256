/* The store's side of replication: the applied index, and whole-database images for Raft
 * snapshots. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "kf_log.h"
#include "store/store_internal.h"
#include "store/store_snapshot.h"

uint64_t kfd_store_applied_index(const kfd_store *s) { return s != NULL ? s->applied_index : 0; }

void kfd_store_set_deferred(kfd_store *s, bool deferred) { s->deferred = deferred; }

bool kfd_store_tx_open(const kfd_store *s) { return s != NULL && s->tx_open; }

size_t kfd_store_tx_commands(const kfd_store *s) { return s != NULL && s->tx_open ? s->tx_commands : 0; }

int kfd_store_commit(kfd_store *s, kf_err *err)
{
    uint64_t applied = s->tx_applied;
    s->tx_applied = 0;
    /* sqlite rolls a transaction back by itself on some errors (an I/O error, a full disk, no
     * memory), a read's on this connection included: the entries it held are gone, so their
     * index must not be written (alone, in autocommit, it would skip them after a restart; they
     * are applied again from the Raft log instead). Review rev41b H1. */
    if (sqlite3_get_autocommit(s->db))
        return kfd_store_fail(s, "committing", "sqlite rolled the open transaction back", 0, err);
    int r = 0;
    if (applied != 0) {
        sqlite3_stmt *st = kfd_store_stmt(s, ST_APPLIED_SET);
        sqlite3_bind_int64(st, 1, (sqlite3_int64)applied);
        r = kfd_store_step_done(s, st, "recording the applied index", err);
    }
    return r != 0 ? r : kfd_store_step_done(s, kfd_store_stmt(s, ST_COMMIT), "committing", err);
}

int kfd_store_flush(kfd_store *s, kf_err *err)
{
    if (!s->tx_open)
        return 0;
    s->tx_open = false;
    s->tx_commands = 0;
    int r = kfd_store_commit(s, err);
    if (r != 0) {
        sqlite3_step(kfd_store_stmt(s, ST_ROLLBACK));
        sqlite3_reset(s->st[ST_ROLLBACK]);
    }
    return r;
}

int kfd_store_reset_applied(kfd_store *s, kf_err *err)
{
    if (kfd_store_flush(s, err) != 0 || s->failed)
        return kf_err_set(err, -EIO, "state store unavailable: %s", s->failure);
    sqlite3_stmt *st = kfd_store_stmt(s, ST_APPLIED_SET);
    sqlite3_bind_int64(st, 1, 0);
    int r = kfd_store_step_done(s, st, "resetting the applied index", err);
    if (r == 0)
        s->applied_index = 0;
    return r;
}

int kfd_store_serialize(kfd_store *s, unsigned char **ret, size_t *ret_len, kf_err *err)
{
    if (kfd_store_flush(s, err) != 0 || s->failed)
        return kf_err_set(err, -EIO, "state store unavailable: %s", s->failure);
    sqlite3_int64 size = 0;
    unsigned char *img = sqlite3_serialize(s->db, "main", &size, 0);
    if (img == NULL)
        return kf_err_set(err, -ENOMEM, "serializing the database failed");
    *ret = img;
    *ret_len = (size_t)size;
    return 0;
}

static int write_all(int fd, const unsigned char *p, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -errno;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int kfd_store_replace(kfd_store *s, const unsigned char *image, size_t len, kf_err *err)
{
    s->policy_judged_ok = false; /* whatever the image holds */
    /* A SQLite file starts with this; anything else is not ours to install. */
    static const char magic[] = "SQLite format 3";
    if (len < 100 || memcmp(image, magic, sizeof(magic)) != 0)
        return kf_err_set(err, -EINVAL, "snapshot is not a database image");
    char tmp[4200], wal[4200], shm[4200], dir[4096];
    snprintf(tmp, sizeof(tmp), "%s.restore", s->path);
    snprintf(wal, sizeof(wal), "%s-wal", s->path);
    snprintf(shm, sizeof(shm), "%s-shm", s->path);
    snprintf(dir, sizeof(dir), "%s", s->path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int e = fd < 0 ? -errno : write_all(fd, image, len);
    if (e == 0 && fsync(fd) != 0)
        e = -errno;
    if (fd >= 0)
        close(fd);
    if (e != 0) {
        unlink(tmp);
        return kf_err_set(err, e, "writing %s: %s", tmp, strerror(-e));
    }
    /* Not a witness until a live checkpoint covers it, across restarts too (review rev17, R7): a
     * marker next to the database, removed when a checkpoint vouches for it (store_audit.c). */
    char mark[4200];
    kfd_store_restored_path(s, mark, sizeof(mark));
    int mfd = open(mark, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (mfd < 0 || fsync(mfd) != 0) {
        e = -errno;
        if (mfd >= 0)
            close(mfd);
        unlink(tmp);
        return kf_err_set(err, e, "writing %s: %s", mark, strerror(-e));
    }
    close(mfd);
    /* From here the old database is gone whatever happens; a failure fails the store closed.
     * An open deferred transaction is superseded by the snapshot. */
    if (s->tx_open) {
        s->tx_open = false;
        s->tx_applied = 0;
        sqlite3_step(kfd_store_stmt(s, ST_ROLLBACK));
        sqlite3_reset(s->st[ST_ROLLBACK]);
    }
    kfd_store_close_db(s);
    unlink(wal);
    unlink(shm);
    if (rename(tmp, s->path) != 0)
        return kfd_store_fail(s, "installing the snapshot", strerror(errno), 0, err);
    int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    s->failed = false;
    s->head_seq = 0;
    int r = kfd_store_open_db(s, err);
    s->restored = true; /* reopening reset vouched and start_head: a live checkpoint must cover it */
    if (r == 0)
        kf_log_info("store_restored", "bytes=%zu applied_index=%llu audit_head=%llu", len,
                    (unsigned long long)s->applied_index, (unsigned long long)s->head_seq);
    return r;
}
