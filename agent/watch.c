/* keyfleet-agent watch: the node side of the kill switch. Every watch_interval (with 10%
 * jitter) it sends a Heartbeat, which also reports queued offline unlocks. While a coordinator
 * answers lock (the node was revoked), every volume of this node is locked: ZFS datasets
 * unmounted and their keys unloaded, LUKS2 mappings closed. An unreachable coordinator changes
 * nothing, unless the policy gives the node a dead-man window (dead_man.after of its groups, told
 * in each heartbeat's answer): once no heartbeat has succeeded for that long, the volumes are
 * locked the same way, and the lock is reported (audited) at the next contact. The window and the
 * last contact are kept in the state file, so a restarted watcher keeps counting. SIGTERM and
 * SIGINT stop it between heartbeats. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <openssl/rand.h>

#include "agent.h"
#include "kf_log.h"

/* Locks every volume; returns how many could not be locked, and in *ret_locked how many it
 * locked (that were unlocked before). */
static size_t lock_all(kfa_ctx *ctx, size_t *ret_locked)
{
    kfa_volume *vs = NULL;
    size_t n = 0, failed = 0;
    *ret_locked = 0;
    if (kfa_collect_volumes(ctx, 0, NULL, false, &vs, &n) != 0)
        return 1;
    for (size_t i = 0; i < n; i++) {
        kf_err err = {0};
        bool changed = false;
        int r = vs[i].drv->probe(ctx->cfg, &vs[i], &err);
        if (r == 0)
            r = vs[i].drv->lock(ctx->cfg, &vs[i], &changed, &err);
        if (r != 0) {
            failed++;
            kf_log_error("lock_failed", "volume=%s error=%s", kf_log_q(vs[i].path), kf_log_q(err.msg));
            fprintf(stderr, "keyfleet-agent: watch: %s\n", err.msg);
        } else if (changed) {
            (*ret_locked)++;
            kf_log_warn("locked", "kind=%s volume=%s id=%s", vs[i].drv->name, kf_log_q(vs[i].path), kf_log_q(vs[i].id));
            printf("%s %s: locked\n", vs[i].drv->name, vs[i].path);
        }
        kfa_volume_clear(&vs[i]);
    }
    free(vs);
    fflush(stdout);
    return failed;
}

/* Waits ms, or until SIGTERM/SIGINT (blocked, so they are taken here); true when told to stop. */
static bool wait_or_stop(const sigset_t *stop, uint64_t ms)
{
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L};
    for (;;) {
        int sig = sigtimedwait(stop, NULL, &ts);
        if (sig > 0)
            return true;
        if (errno != EINTR)
            return false; /* EAGAIN: the time is up */
    }
}

/* Seconds since boot, suspend included: the dead-man clock, which a wall-clock step cannot move. */
static int64_t boot_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_BOOTTIME, &ts);
    return (int64_t)ts.tv_sec;
}

static uint64_t jittered(uint64_t ms)
{
    uint16_t r = 0;
    RAND_bytes((unsigned char *)&r, sizeof(r));
    return ms - ms / 10 + (ms / 5) * r / 65535; /* 0.9x .. 1.1x */
}

/* The dead-man clock (boot time, s) of the last contact the state file remembers, or now. A wall
 * clock well behind that contact (set back, say, to win a new window at each boot) counts as the
 * whole window silent. Sets ctx->dead_man_after_s from the state file. */
static int64_t dead_man_start(kfa_ctx *ctx)
{
    int64_t last_wall = 0;
    kfa_state_dead_man_get(ctx->cfg, &ctx->dead_man_after_s, &last_wall);
    int64_t wall = time(NULL), since = 0;
    if (last_wall > 0 && wall > last_wall)
        since = wall - last_wall;
    else if (last_wall > 0 && last_wall - wall > KFA_DEAD_MAN_CLOCK_SLACK_S)
        since = (int64_t)ctx->dead_man_after_s;
    int64_t contact = boot_s() - since;
    if (ctx->dead_man_after_s > 0)
        kf_log_info("dead_man_armed", "after_s=%llu silent_s=%lld", (unsigned long long)ctx->dead_man_after_s,
                    (long long)(boot_s() - contact));
    return contact;
}

/* One heartbeat, sent again once after an AppRole login when the token had expired. */
static int heartbeat(kfa_ctx *ctx, bool *lock, kf_err *err)
{
    bool relogged = false;
    int r;
    for (;;) {
        r = kfa_heartbeat(ctx, true, lock, err);
        if (r == -EACCES && ctx->logged_in && !relogged) { /* AppRole token expired: log in again */
            ctx->logged_in = false;
            relogged = true;
            continue;
        }
        break;
    }
    return r;
}

int kfa_watch(kfa_ctx *ctx, int argc, char **argv)
{
    long count = 0; /* 0: until stopped */
    if (argc == 3 && strcmp(argv[1], "--count") == 0) {
        char *end;
        count = strtol(argv[2], &end, 10);
        if (*end != '\0' || count < 1 || count > 1000000) {
            fprintf(stderr, "keyfleet-agent: watch: --count takes 1..1000000\n");
            return KFA_EXIT_USAGE;
        }
    } else if (argc != 1) {
        kfa_usage("watch");
        return KFA_EXIT_USAGE;
    }
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    kf_log_info("watching", "interval_ms=%llu coordinators=%zu", (unsigned long long)ctx->cfg->watch_interval_ms,
                ctx->cfg->coordinators.n);
    ctx->deadline = UINT64_MAX; /* a long-running watcher has no run deadline; each call has its timeout */
    bool locking = false, reached = false, stopped = false, dead_locked = false;
    size_t failed = 0, locked = 0;
    int64_t contact = dead_man_start(ctx);
    for (long i = 0; count == 0 || i < count; i++) {
        bool lock = false;
        kf_err err = {0};
        int r = heartbeat(ctx, &lock, &err);
        reached = r == 0;
        uint64_t silent = (uint64_t)(boot_s() - contact);
        if (r == 0) {
            contact = boot_s();
            if (dead_locked)
                kf_log_info("dead_man_contact", "node=%s hint=\"a coordinator answers again; the volumes stay locked "
                            "until unlocked (keyfleet-agent unlock --all)\"", kf_log_q(ctx->me.name));
            dead_locked = false;
            /* An answer that says lock (revoked) is not a contact the offline fallback may count
             * from (review rev19, F1). */
            if (!lock && kfa_state_dead_man_contact(ctx->cfg, ctx->dead_man_after_s, time(NULL)) != 0)
                kf_log_warn("state_update_failed", "state_file=%s hint=\"a restarted watcher counts from its start\"",
                            kf_log_q(ctx->cfg->state_file));
            if (!lock) /* revealed recovery keys: replaced now, so the revealed one is refused (docs/recovery.md) */
                kfa_recovery_replace(ctx, ctx->recovery_replace, ctx->n_recovery_replace);
        }
        if (r != 0 && ctx->dead_man_after_s > 0 && silent >= ctx->dead_man_after_s) {
            /* Dead-man switch: silent for longer than the policy allows. */
            if (!dead_locked)
                kf_log_error("dead_man_lock", "node=%s silent_s=%llu after_s=%llu error=%s", kf_log_q(ctx->me.name),
                             (unsigned long long)silent, (unsigned long long)ctx->dead_man_after_s, kf_log_q(err.msg));
            failed = lock_all(ctx, &locked);
            if (!dead_locked && kfa_state_queue_dead_man(ctx->cfg, time(NULL), silent, ctx->dead_man_after_s,
                                                         (unsigned)locked, (unsigned)failed) != 0)
                kf_log_warn("state_update_failed", "state_file=%s hint=\"the dead-man lock is not reported\"",
                            kf_log_q(ctx->cfg->state_file));
            dead_locked = true;
        } else if (r != 0 && ctx->dead_man_after_s == 0) {
            kf_log_warn("heartbeat_failed", "error=%s hint=\"nothing is locked while no coordinator answers\"",
                        kf_log_q(err.msg));
        } else if (r != 0) {
            kf_log_warn("heartbeat_failed", "error=%s silent_s=%llu dead_man_after_s=%llu hint=\"the dead-man switch "
                        "locks every volume once no coordinator answered for dead_man_after_s\"",
                        kf_log_q(err.msg), (unsigned long long)silent, (unsigned long long)ctx->dead_man_after_s);
        } else if (lock) {
            if (!locking)
                kf_log_error("lock_ordered", "node=%s hint=\"a coordinator says this node is revoked\"",
                             kf_log_q(ctx->me.name));
            locking = true;
            failed = lock_all(ctx, &locked);
        } else {
            if (locking)
                kf_log_info("lock_lifted", "node=%s", kf_log_q(ctx->me.name));
            locking = false;
            failed = 0;
        }
        /* The next heartbeat no later than the dead-man deadline, so the lock is not late by up to an
         * interval. */
        uint64_t wait = jittered(ctx->cfg->watch_interval_ms);
        silent = (uint64_t)(boot_s() - contact);
        if (ctx->dead_man_after_s > 0 && !dead_locked && silent < ctx->dead_man_after_s &&
            (ctx->dead_man_after_s - silent) * 1000 < wait)
            wait = (ctx->dead_man_after_s - silent) * 1000;
        if ((count == 0 || i + 1 < count) && wait_or_stop(&stop, wait)) {
            stopped = true;
            break;
        }
    }
    kf_log_info("watch_stopped", "reason=%s locking=%s dead_man_locked=%s", stopped ? "signal" : "count",
                locking ? "yes" : "no", dead_locked ? "yes" : "no");
    /* Stopped by a signal is a clean stop; after --count N, the last heartbeat decides. */
    return stopped || (reached && failed == 0) ? KFA_EXIT_ALL : KFA_EXIT_NONE;
}

static const char *utc(int64_t t, char buf[32])
{
    if (t <= 0)
        return "-";
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(buf, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

/* As the watcher left it in the state file: the window from the last heartbeat it got an answer
 * to, that contact, and whether the switch locked the volumes since (locked_at after the last
 * contact; a lock made before the contact that ended it is only the last lock). Both are whole
 * seconds, and a lock comes at least after_s (>= 1) seconds after the contact before it, so a
 * contact in the same second as the lock is the one after it, not before. */
void kfa_dead_man_status(const kfa_config *cfg, json_t *obj)
{
    kfa_dead_man_state s;
    kfa_state_dead_man_read(cfg, &s);
    int64_t now = time(NULL);
    int64_t silent = s.last_contact > 0 && now > s.last_contact ? now - s.last_contact : 0;
    bool past = s.after_s > 0 && s.last_contact > 0 && (uint64_t)silent >= s.after_s;
    bool locked = s.locked_at > 0 && s.locked_at > s.last_contact;
    char b1[32], b2[32], b3[32];
    const char *contact = utc(s.last_contact, b1), *lock = utc(s.locked_at, b2);
    const char *deadline = utc(s.after_s > 0 && s.last_contact > 0 ? s.last_contact + (int64_t)s.after_s : 0, b3);
    if (obj != NULL) {
        json_object_set_new(obj, "dead_man",
                            json_pack("{s:I, s:s, s:I, s:s, s:b, s:b, s:s, s:I}", "after_s", (json_int_t)s.after_s,
                                      "last_contact", contact, "silent_s", (json_int_t)silent, "locks_at", deadline,
                                      "past", past, "locked", locked, "locked_at", lock, "unreported_locks",
                                      (json_int_t)s.unreported));
        return;
    }
    if (s.after_s == 0) {
        printf("dead-man: off (%s)\n", s.last_contact > 0 ? "no dead_man.after for this node at the last contact"
                                                          : "keyfleet-agent watch has not reached a coordinator");
        return;
    }
    printf("dead-man: after %llus; last contact %s (%llds ago); ", (unsigned long long)s.after_s, contact,
           (long long)silent);
    if (locked)
        printf("LOCKED at %s (%s)\n", lock, s.unreported > 0 ? "not reported yet" : "reported");
    else if (past)
        printf("PAST the window: keyfleet-agent watch locks at its next failed heartbeat\n");
    else
        printf("locks at %s without a coordinator%s%s\n", deadline, s.locked_at > 0 ? "; last lock " : "",
               s.locked_at > 0 ? lock : "");
}
