/* Review rev17c, C4: a database keyfleet did not make is refused, at open and as a snapshot
 * image. The state digest scans tables while decisions read through indexes and by column name,
 * so an index pointed at another b-tree or a table's schema text with two column names swapped
 * digests like the honest database and decides otherwise. Databases migrated one step per open
 * from every older version still pass. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "store/store.h"
#include "store/store_audit.h"
#include "store/store_internal.h"
#include "store/store_read.h"
#include "store/store_snapshot.h"

#include "kf_test_tmpdir.h"

static void db_path(const char *name, char *out, size_t size) { snprintf(out, size, "%s/%s", tmpdir, name); }

static void exec_db(const char *name, const char *sql)
{
    char path[300];
    db_path(name, path, sizeof(path));
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
        fail_msg("%s: %s", sql, msg);
    sqlite3_close(db);
}

static char *query1(const char *name, const char *sql)
{
    char path[300];
    db_path(name, path, sizeof(path));
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    char *out = strdup(sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0) != NULL
                           ? (const char *)sqlite3_column_text(st, 0)
                           : "");
    sqlite3_finalize(st);
    sqlite3_close(db);
    return out;
}

/* A store with n1 revoked (reason "stolen") and n2 not, closed again. */
static void make_db(const char *name)
{
    char path[300];
    db_path(name, path, sizeof(path));
    kfd_store *s = NULL;
    kf_err err = {0};
    if (kfd_store_open(path, &s, &err) != 0)
        fail_msg("open %s: %s", name, err.msg);
    kfd_store_close(s);
    exec_db(name, "INSERT INTO nodes (name, revoked, reason) VALUES ('n1', 1, 'stolen');"
                  "INSERT INTO nodes (name, revoked) VALUES ('n2', 0)");
}

/* Opens name: 0 and the store, or the error (which must contain want) with the store failed. */
static int open_want(const char *name, const char *want)
{
    char path[300];
    db_path(name, path, sizeof(path));
    kfd_store *s = NULL;
    kf_err err = {0};
    int r = kfd_store_open(path, &s, &err);
    if (want == NULL && r != 0)
        fail_msg("open %s: %s", name, err.msg);
    if (want != NULL && (r == 0 || strstr(err.msg, want) == NULL || !kfd_store_failed(s)))
        fail_msg("open %s: r=%d '%s', want '%s'", name, r, err.msg, want);
    if (r == 0) {
        bool revoked = false;
        assert_int_equal(kfd_store_node_revoked(s, "n1", &revoked), 0);
        assert_true(revoked);
    } else {
        bool revoked = false;
        assert_int_equal(kfd_store_node_revoked(s, "n1", &revoked), -EIO);
    }
    kfd_store_close(s);
    return r;
}

/* The image of name checked by a store that holds nothing yet: 0, or the error containing want. */
static int image_want(const char *name, const char *want)
{
    char path[300];
    db_path(name, path, sizeof(path));
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_int64 n = 0;
    unsigned char *img = sqlite3_serialize(db, "main", &n, 0);
    assert_non_null(img);
    sqlite3_close(db);
    char epath[300];
    db_path("empty-receiver.db", epath, sizeof(epath));
    kfd_store *s = NULL;
    kf_err err = {0};
    assert_int_equal(kfd_store_open(epath, &s, &err), 0);
    kfd_image_check ic;
    int r = kfd_store_check_image(s, img, (size_t)n, &ic, &err);
    kfd_audit_free_record(ic.newest);
    if ((want == NULL) != (r == 0) || (want != NULL && strstr(err.msg, want) == NULL))
        fail_msg("image %s: r=%d '%s', want '%s'", name, r, err.msg, want != NULL ? want : "ok");
    sqlite3_free(img);
    kfd_store_close(s);
    return r;
}

/* The index variant: nodes intact, its primary-key index pointed at an empty one. */
static void test_index_pointed_elsewhere(void **state)
{
    (void)state;
    make_db("idx.db");
    assert_int_equal(open_want("idx.db", NULL), 0);
    assert_int_equal(image_want("idx.db", NULL), 0);
    exec_db("idx.db", "CREATE TABLE x (name TEXT PRIMARY KEY)");
    char *root = query1("idx.db", "SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_x_1'");
    char sql[300];
    snprintf(sql, sizeof(sql),
             "PRAGMA writable_schema = ON; UPDATE sqlite_master SET rootpage = %s WHERE name = "
             "'sqlite_autoindex_nodes_1'; DELETE FROM sqlite_master WHERE tbl_name = 'x'",
             root);
    free(root);
    exec_db("idx.db", sql);
    char *found = query1("idx.db", "SELECT count(*) FROM nodes WHERE name = 'n1'");
    assert_string_equal(found, "0"); /* the attack works on the file */
    free(found);
    assert_int_equal(image_want("idx.db", "integrity check: "), -EPERM);
    assert_int_equal(open_want("idx.db", "integrity check: "), -EIO);
}

/* An index that lacks a row its table holds, every page still accounted for (the index hidden
 * from sqlite_master while the row went in): PRAGMA quick_check says ok, integrity_check not. */
static void test_index_missing_a_row(void **state)
{
    (void)state;
    make_db("row.db");
    char *root = query1("row.db", "SELECT rootpage FROM sqlite_master WHERE name = 'tokens_role'");
    char *sql = query1("row.db", "SELECT sql FROM sqlite_master WHERE name = 'tokens_role'");
    exec_db("row.db", "PRAGMA writable_schema = ON; DELETE FROM sqlite_master WHERE name = 'tokens_role'");
    exec_db("row.db", "INSERT INTO tokens (token_id, role_name, token_hash, expires_at) VALUES ('t1', 'r1', x'00', 0)");
    char put[600];
    snprintf(put, sizeof(put),
             "PRAGMA writable_schema = ON; INSERT INTO sqlite_master (type, name, tbl_name, rootpage, sql) "
             "VALUES ('index', 'tokens_role', 'tokens', %s, '%s')",
             root, sql);
    free(root);
    free(sql);
    exec_db("row.db", put);
    char *n = query1("row.db", "SELECT count(*) FROM tokens WHERE role_name = 'r1'");
    assert_string_equal(n, "0"); /* looked up through the index: no such token */
    free(n);
    char *quick = query1("row.db", "PRAGMA quick_check");
    assert_string_equal(quick, "ok");
    free(quick);
    assert_int_equal(image_want("row.db", "missing from index tokens_role"), -EPERM);
    assert_int_equal(open_want("row.db", "missing from index tokens_role"), -EIO);
}

/* The schema variant: revoked and reason swapped in the table's text, not a byte of data. */
static void test_columns_swapped(void **state)
{
    (void)state;
    make_db("swap.db");
    char *sql = query1("swap.db", "SELECT sql FROM sqlite_master WHERE name = 'nodes'");
    char *a = strstr(sql, "revoked INTEGER NOT NULL"), *b = strstr(sql, "reason TEXT");
    assert_non_null(a);
    assert_non_null(b);
    char edited[1024];
    snprintf(edited, sizeof(edited), "%.*sreason INTEGER NOT NULL%.*srevoked TEXT%s", (int)(a - sql), sql,
             (int)(b - a - strlen("revoked INTEGER NOT NULL")), a + strlen("revoked INTEGER NOT NULL"),
             b + strlen("reason TEXT"));
    free(sql);
    char upd[1400];
    snprintf(upd, sizeof(upd), "PRAGMA writable_schema = ON; UPDATE sqlite_master SET sql = '%s' WHERE name = 'nodes'",
             edited);
    exec_db("swap.db", upd);
    char *rev = query1("swap.db", "SELECT CAST(revoked AS INTEGER) FROM nodes WHERE name = 'n1'");
    assert_string_equal(rev, "0"); /* the attack works on the file */
    free(rev);
    assert_int_equal(image_want("swap.db", "table nodes differs from what keyfleet's migrations make"), -EPERM);
    assert_int_equal(open_want("swap.db", "table nodes differs from what keyfleet's migrations make"), -EIO);
}

/* An extra index, an extra table, a dropped index: each named. */
static void test_objects_added_or_missing(void **state)
{
    (void)state;
    static const struct {
        const char *edit, *want;
    } cases[] = {
        {"CREATE INDEX nodes_reason ON nodes(reason)", "index nodes_reason is not one keyfleet's migrations make"},
        {"CREATE TABLE extra (a)", "table extra is not one keyfleet's migrations make"},
        {"DROP INDEX audit_node", "index audit_node is missing"},
        {"CREATE TRIGGER t AFTER INSERT ON audit BEGIN DELETE FROM nodes; END",
         "trigger t is not one keyfleet's migrations make"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char name[32];
        snprintf(name, sizeof(name), "obj-%zu.db", i);
        make_db(name);
        exec_db(name, cases[i].edit);
        /* a trigger is refused earlier on an image, by name (image_without_code) */
        assert_int_equal(image_want(name, i != 3 ? cases[i].want : "holds a trigger (t)"), -EPERM);
        assert_int_equal(open_want(name, cases[i].want), -EIO);
    }
}

/* A database left at every older schema version by an older keyfleetd (each step its own
 * transaction and open) migrates to the same text as a fresh one and opens. */
static void test_older_versions_migrate(void **state)
{
    (void)state;
    for (uint32_t k = 0; k < kfd_store_state_version(); k++) {
        char name[32], path[300];
        snprintf(name, sizeof(name), "old-%u.db", k);
        db_path(name, path, sizeof(path));
        for (uint32_t v = 0; v < k; v++) {
            sqlite3 *db = NULL;
            assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
            assert_int_equal(kfd_store_migration_step(db, (int)v), SQLITE_OK);
            sqlite3_close(db);
        }
        kfd_store *s = NULL;
        kf_err err = {0};
        if (kfd_store_open(path, &s, &err) != 0)
            fail_msg("open at version %u: %s", k, err.msg);
        kfd_store_close(s);
        exec_db(name, "INSERT INTO nodes (name, revoked, reason) VALUES ('n1', 1, 'stolen')");
        assert_int_equal(open_want(name, NULL), 0);
    }
}

/* A database at an older version with an object added is refused before it is migrated. */
static void test_older_image_edited(void **state)
{
    (void)state;
    char path[300];
    db_path("old-edited.db", path, sizeof(path));
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    for (int v = 0; v < 10; v++)
        assert_int_equal(kfd_store_migration_step(db, v), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "CREATE INDEX nodes_reason ON nodes(reason)", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(open_want("old-edited.db", "index nodes_reason is not one"), -EIO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_index_pointed_elsewhere),
        cmocka_unit_test(test_index_missing_a_row),
        cmocka_unit_test(test_columns_swapped),
        cmocka_unit_test(test_objects_added_or_missing),
        cmocka_unit_test(test_older_versions_migrate),
        cmocka_unit_test(test_older_image_edited),
    };
    return cmocka_run_group_tests_name("store_schema", tests, tmpdir_setup, tmpdir_teardown);
}
