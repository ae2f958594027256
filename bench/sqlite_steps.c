/* A benchmark shim (LD_PRELOAD into keyfleetd by scripts/bench-guards): counts sqlite3_step calls
 * per SQL statement. The count is the noise-free side of issue #29's "fewer round trips to
 * sqlite": it does not move with the machine's load, as CPU time does.
 *
 * SIGWINCH asks for a dump; the next step (keyfleetd's one-second tick runs a statement, and
 * every checkpoint does) appends "TOTAL n" and one "count<TAB>sql" line per statement to
 * $KF_SQLITE_STEPS_OUT.
 * Never for production: it is not thread-safe beyond keyfleetd's one loop thread. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#define SLOTS 1024

typedef struct slot {
    char *sql;
    unsigned long steps;
} slot;

static slot slots[SLOTS];
static unsigned long total;
static volatile sig_atomic_t dump_asked;
static int (*real_step)(sqlite3_stmt *);

static uint32_t hash(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s != '\0'; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static void count(const char *sql)
{
    if (sql == NULL)
        sql = "(no sql)";
    for (uint32_t i = hash(sql) % SLOTS, n = 0; n < SLOTS; i = (i + 1) % SLOTS, n++) {
        if (slots[i].sql == NULL) {
            slots[i].sql = strdup(sql);
            if (slots[i].sql == NULL)
                return;
        } else if (strcmp(slots[i].sql, sql) != 0) {
            continue;
        }
        slots[i].steps++;
        return;
    }
}

static void dump(void)
{
    const char *path = getenv("KF_SQLITE_STEPS_OUT");
    FILE *f = path != NULL ? fopen(path, "a") : NULL;
    if (f == NULL)
        return;
    fprintf(f, "TOTAL %lu\n", total);
    for (size_t i = 0; i < SLOTS; i++) {
        if (slots[i].sql == NULL)
            continue;
        fprintf(f, "%lu\t", slots[i].steps);
        for (const char *c = slots[i].sql; *c != '\0'; c++) /* one line per statement */
            fputc(*c == '\n' || *c == '\t' ? ' ' : *c, f);
        fputc('\n', f);
    }
    fclose(f);
}

int sqlite3_step(sqlite3_stmt *st)
{
    if (real_step == NULL)
        *(void **)&real_step = dlsym(RTLD_NEXT, "sqlite3_step");
    if (dump_asked) {
        dump_asked = 0;
        dump();
    }
    total++;
    count(sqlite3_sql(st));
    return real_step(st);
}

static void on_winch(int sig)
{
    (void)sig;
    dump_asked = 1;
}

__attribute__((constructor)) static void install(void)
{
    signal(SIGWINCH, on_winch);
}
