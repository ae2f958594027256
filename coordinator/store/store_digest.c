/* The state digest (review rev17, R2): a hash over every replicated table outside the audit log,
 * so that a replica whose revocations, denylist, policy, accepted PCR values or approvals were
 * edited behind keyfleetd's back does not hold the same digest as the others after the same
 * entries. A new leader's head confirmation compares it (core/head_round.c).
 *
 * Each row is hashed from its typed column values; the row hashes of a table are sorted, so the
 * digest depends on the rows and not on their storage order, and then hashed with the table's
 * name. Replicas of another schema version hold other columns: the version goes with the digest
 * and digests of different versions are not compared. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "store/store_digest.h"
#include "store/store_internal.h"

/* Every table in the database, by name, except audit and audit_checkpoints (the chain and
 * checkpoints cover those) and raft_state (the applied index, the same by construction): a table
 * a later migration adds is covered without anyone remembering to list it (review rev17, R2). A
 * table written outside apply (local to one replica) must be excluded here, or every follower
 * diverges at the next state check. */
#define TABLES_SQL                                                                                          \
    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT IN "     \
    "('audit', 'audit_checkpoints', 'raft_state') ORDER BY name"

static void put_u64(EVP_MD_CTX *m, uint64_t v)
{
    uint8_t b[8];
    for (int i = 7; i >= 0; i--, v >>= 8)
        b[i] = (uint8_t)v;
    EVP_DigestUpdate(m, b, sizeof(b));
}

static int cmp_hash(const void *a, const void *b) { return memcmp(a, b, KFD_HASH_LEN); }

static int row_hash(EVP_MD_CTX *m, const EVP_MD *sha256, sqlite3_stmt *st, uint8_t out[KFD_HASH_LEN])
{
    int n = sqlite3_column_count(st);
    if (EVP_DigestInit_ex2(m, sha256, NULL) != 1)
        return -ENOMEM;
    put_u64(m, (uint64_t)n);
    for (int i = 0; i < n; i++) {
        int type = sqlite3_column_type(st, i);
        uint8_t tag = (uint8_t)type;
        EVP_DigestUpdate(m, &tag, 1);
        if (type == SQLITE_INTEGER) {
            put_u64(m, (uint64_t)sqlite3_column_int64(st, i));
        } else if (type == SQLITE_FLOAT) {
            double d = sqlite3_column_double(st, i);
            uint64_t u;
            memcpy(&u, &d, sizeof(u));
            put_u64(m, u);
        } else if (type == SQLITE_TEXT || type == SQLITE_BLOB) {
            const void *p = type == SQLITE_TEXT ? (const void *)sqlite3_column_text(st, i) : sqlite3_column_blob(st, i);
            int len = sqlite3_column_bytes(st, i);
            put_u64(m, (uint64_t)len);
            if (len > 0)
                EVP_DigestUpdate(m, p, (size_t)len);
        }
    }
    unsigned int len = KFD_HASH_LEN;
    return EVP_DigestFinal_ex(m, out, &len) == 1 ? 0 : -ENOMEM;
}

/* One table into the outer digest. 0, -ENOMEM, -EIO. */
static int table_digest(kfd_store *s, EVP_MD_CTX *outer, EVP_MD_CTX *m, const EVP_MD *sha256, const char *table)
{
    char *sql = sqlite3_mprintf("SELECT * FROM \"%w\"", table);
    sqlite3_stmt *st = NULL;
    int prc = sql != NULL ? sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) : SQLITE_NOMEM;
    sqlite3_free(sql);
    if (prc != SQLITE_OK)
        return prc == SQLITE_NOMEM ? -ENOMEM : -EIO;
    uint8_t(*rows)[KFD_HASH_LEN] = NULL;
    size_t n = 0, cap = 0;
    int rc, r = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 64;
            uint8_t(*v)[KFD_HASH_LEN] = realloc(rows, ncap * sizeof(*v));
            if (v == NULL) {
                r = -ENOMEM;
                break;
            }
            rows = v;
            cap = ncap;
        }
        if ((r = row_hash(m, sha256, st, rows[n])) != 0)
            break;
        n++;
    }
    if (r == 0 && rc != SQLITE_DONE)
        r = -EIO;
    sqlite3_finalize(st);
    if (r == 0) {
        if (n > 1)
            qsort(rows, n, sizeof(*rows), cmp_hash);
        put_u64(outer, strlen(table));
        EVP_DigestUpdate(outer, table, strlen(table));
        put_u64(outer, n);
        if (n > 0)
            EVP_DigestUpdate(outer, rows, n * sizeof(*rows));
    }
    free(rows);
    return r;
}

int kfd_store_state_digest(kfd_store *s, uint8_t out[KFD_HASH_LEN])
{
    EVP_MD_CTX *outer = EVP_MD_CTX_new(), *m = EVP_MD_CTX_new();
    /* Fetched once per digest: EVP_sha256() in each row's init looked the algorithm up in the
     * provider store (a lock and a search) for every row of every table, every checkpoint. */
    EVP_MD *sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    static const char tag[] = "keyfleet state digest v1";
    int r = outer != NULL && m != NULL && sha256 != NULL && EVP_DigestInit_ex2(outer, sha256, NULL) == 1 ? 0 : -ENOMEM;
    if (r == 0)
        EVP_DigestUpdate(outer, tag, sizeof(tag));
    sqlite3_stmt *names = NULL;
    if (r == 0 && sqlite3_prepare_v2(s->db, TABLES_SQL, -1, &names, NULL) != SQLITE_OK)
        r = -EIO;
    int rc = SQLITE_DONE;
    /* Copied: table_digest runs another statement on the connection while this one steps. */
    while (r == 0 && (rc = sqlite3_step(names)) == SQLITE_ROW) {
        char table[128];
        snprintf(table, sizeof(table), "%s", (const char *)sqlite3_column_text(names, 0));
        r = table_digest(s, outer, m, sha256, table);
    }
    if (r == 0 && rc != SQLITE_DONE)
        r = -EIO;
    sqlite3_finalize(names);
    unsigned int len = KFD_HASH_LEN;
    if (r == 0 && EVP_DigestFinal_ex(outer, out, &len) != 1)
        r = -ENOMEM;
    EVP_MD_CTX_free(outer);
    EVP_MD_CTX_free(m);
    EVP_MD_free(sha256);
    return r;
}

uint64_t kfd_state_note_gap_ms(uint64_t cost_ns, uint32_t draw)
{
    uint64_t base = cost_ns / 1000 * KFD_STATE_NOTE_SHARE / 1000;
    if (base < KFD_STATE_NOTE_MIN_MS)
        base = KFD_STATE_NOTE_MIN_MS;
    if (base > KFD_STATE_NOTE_MAX_MS)
        base = KFD_STATE_NOTE_MAX_MS;
    uint64_t gap = base * (512 + draw % 1024) / 1024; /* [0.5, 1.5) x base */
    return gap < KFD_STATE_NOTE_MAX_MS ? gap : KFD_STATE_NOTE_MAX_MS;
}

bool kfd_note_schedule_propose(kfd_note_schedule *s, uint64_t now_ms, uint64_t cost_ns, uint32_t draw)
{
    s->inflight = s->due_at == 0 || now_ms >= s->due_at;
    if (s->inflight)
        s->due_at = now_ms + kfd_state_note_gap_ms(cost_ns, draw);
    return s->inflight;
}

void kfd_note_schedule_missed(kfd_note_schedule *s)
{
    if (s->inflight)
        s->due_at = 0;
}

void kfd_note_schedule_new_term(kfd_note_schedule *s) { s->due_at = 0; }
