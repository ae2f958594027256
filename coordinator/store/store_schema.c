/* The schema check and the integrity check run on every database a store opens (kfd_store_open,
 * a snapshot's reopen) and on every snapshot image before it is installed (review rev17c, C4). */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "store/store_internal.h"
#include "store/store_schema.h"

/* Every schema object but those SQLite itself makes and fills (AUTOINCREMENT's counters, ANALYZE's
 * statistics), in a fixed order. Automatic indexes have no sql; their names and tables compare. */
static const char schema_sql[] =
    "SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE NOT (type = 'table' AND name IN "
    "('sqlite_sequence', 'sqlite_stat1', 'sqlite_stat2', 'sqlite_stat3', 'sqlite_stat4')) "
    "ORDER BY type COLLATE BINARY, name COLLATE BINARY";

int kfd_store_schema_version(sqlite3 *db, int *version)
{
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK)
        return -EIO;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        *version = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return rc == SQLITE_ROW ? 0 : -EIO;
}

/* A fresh in-memory database migrated to version by the store's own migration steps. */
static int expected_db(int version, sqlite3 **ret)
{
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(":memory:", &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK) {
        sqlite3_close(db);
        return -ENOMEM;
    }
    for (int v = 0; v < version; v++) {
        if (kfd_store_migration_step(db, v) != SQLITE_OK) {
            sqlite3_close(db);
            return -EIO;
        }
    }
    *ret = db;
    return 0;
}

static const char *col(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return t != NULL ? (const char *)t : NULL;
}

static bool same_text(const char *a, const char *b) { return (a == NULL) == (b == NULL) && (a == NULL || strcmp(a, b) == 0); }

/* One step of the merge of both ordered lists: -1 the database has an object the migrations do
 * not make, 1 it lacks one they make, 0 the same object (then compared). */
static int order(sqlite3_stmt *got, int got_rc, sqlite3_stmt *want, int want_rc)
{
    if (got_rc != SQLITE_ROW)
        return 1;
    if (want_rc != SQLITE_ROW)
        return -1;
    int c = strcmp(col(got, 0) ? col(got, 0) : "", col(want, 0) ? col(want, 0) : "");
    if (c == 0)
        c = strcmp(col(got, 1) ? col(got, 1) : "", col(want, 1) ? col(want, 1) : "");
    return c < 0 ? -1 : c > 0 ? 1 : 0;
}

static int compare(sqlite3_stmt *got, sqlite3_stmt *want, char *problem, size_t size)
{
    int grc = sqlite3_step(got), wrc = sqlite3_step(want);
    while (grc == SQLITE_ROW || wrc == SQLITE_ROW) {
        if ((grc != SQLITE_ROW && grc != SQLITE_DONE) || (wrc != SQLITE_ROW && wrc != SQLITE_DONE))
            break;
        int o = order(got, grc, want, wrc);
        if (o < 0) {
            snprintf(problem, size, "%.16s %.64s is not one keyfleet's migrations make", col(got, 0) ? col(got, 0) : "?",
                     col(got, 1) ? col(got, 1) : "?");
            return -EPERM;
        }
        if (o > 0) {
            snprintf(problem, size, "%.16s %.64s is missing", col(want, 0), col(want, 1));
            return -EPERM;
        }
        if (!same_text(col(got, 2), col(want, 2)) || !same_text(col(got, 3), col(want, 3))) {
            snprintf(problem, size, "%.16s %.64s differs from what keyfleet's migrations make", col(want, 0),
                     col(want, 1));
            return -EPERM;
        }
        grc = sqlite3_step(got);
        wrc = sqlite3_step(want);
    }
    if (grc != SQLITE_DONE || wrc != SQLITE_DONE) {
        snprintf(problem, size, "the schema cannot be read");
        return -EIO;
    }
    return 0;
}

int kfd_store_schema_check(sqlite3 *db, int version, char *problem, size_t size)
{
    sqlite3 *fresh = NULL;
    int r = expected_db(version, &fresh);
    if (r != 0) {
        snprintf(problem, size, "keyfleet's own schema could not be built");
        return r;
    }
    sqlite3_stmt *got = NULL, *want = NULL;
    if (sqlite3_prepare_v2(db, schema_sql, -1, &got, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(fresh, schema_sql, -1, &want, NULL) != SQLITE_OK) {
        snprintf(problem, size, "the schema cannot be read: %s", sqlite3_errmsg(got == NULL ? db : fresh));
        r = -EIO;
    } else {
        r = compare(got, want, problem, size);
    }
    sqlite3_finalize(got);
    sqlite3_finalize(want);
    sqlite3_close(fresh);
    return r;
}

int kfd_store_integrity_check(sqlite3 *db, char *problem, size_t size)
{
    sqlite3_stmt *st = NULL;
    /* Not quick_check: that one skips whether each index holds exactly its table's rows. One
     * message is enough to refuse. */
    if (sqlite3_prepare_v2(db, "PRAGMA integrity_check(1)", -1, &st, NULL) != SQLITE_OK) {
        snprintf(problem, size, "integrity check cannot run: %s", sqlite3_errmsg(db));
        return -EIO;
    }
    int rc = sqlite3_step(st), r = 0;
    const char *msg = rc == SQLITE_ROW ? col(st, 0) : NULL;
    if (rc != SQLITE_ROW) {
        snprintf(problem, size, "integrity check failed to run: %s", sqlite3_errmsg(db));
        r = -EIO;
    } else if (msg == NULL || strcmp(msg, "ok") != 0) {
        snprintf(problem, size, "integrity check: %.180s", msg != NULL ? msg : "no answer");
        r = -EPERM;
    }
    sqlite3_finalize(st);
    return r;
}
