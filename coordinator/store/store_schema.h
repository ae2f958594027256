/* The database a store opens or installs must be one keyfleet made (review rev17c, C4): its
 * schema exactly what the migrations make, and its indexes saying what its tables say. The state
 * digest scans tables while decisions read through indexes and by column name, so a database
 * edited while stopped could otherwise digest like an honest one and decide differently. */
#ifndef KFD_STORE_SCHEMA_H
#define KFD_STORE_SCHEMA_H

#include <stddef.h>

#include <sqlite3.h>

/* Compares db's schema (type, name, tbl_name, sql of every table, index, trigger and view but
 * sqlite_sequence and the sqlite_stat tables) with what migrations 1..version make on an empty
 * database. 0 when equal; -EPERM naming the first object that differs in problem; -EIO or
 * -ENOMEM when either schema cannot be read. */
int kfd_store_schema_check(sqlite3 *db, int version, char *problem, size_t size);

/* PRAGMA integrity_check (every page, and every index entry against its table). 0 when "ok";
 * -EPERM with its first message in problem; -EIO when it cannot run. */
int kfd_store_integrity_check(sqlite3 *db, char *problem, size_t size);

/* PRAGMA user_version of db into *version: 0, or -EIO. */
int kfd_store_schema_version(sqlite3 *db, int *version);

#endif
