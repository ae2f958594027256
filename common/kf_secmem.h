/* Secure memory for key material: page-backed buffers that are mlock'ed (kept out of swap),
 * MADV_DONTDUMP (kept out of core dumps), and wiped with OPENSSL_cleanse when freed. */
#ifndef KF_SECMEM_H
#define KF_SECMEM_H

#include <stddef.h>
#include <stdint.h>

struct kf_err;

typedef struct kf_secbuf {
    uint8_t *data;
    size_t len; /* bytes in use */
    size_t cap; /* usable bytes */
} kf_secbuf;

/* Allocates a zeroed buffer of len bytes (len > 0). Returns NULL on allocation failure.
 * If mlock is refused (RLIMIT_MEMLOCK), the buffer is still DONTDUMP and a warning is logged once. */
kf_secbuf *kf_secbuf_new(size_t len);
/* Wipes and frees; NULL is allowed. */
void kf_secbuf_free(kf_secbuf *b);
/* For KF_CLEANUP (kf_cleanup.h): wipes and frees *b when the variable goes out of scope. */
static inline void kf_secbuf_freep(kf_secbuf **b)
{
    kf_secbuf_free(*b);
}
/* Number of buffers whose mlock failed since start (exported in metrics). */
unsigned long kf_secmem_lock_failures(void);

/* Makes this process non-dumpable (no core, no ptrace by other users, /proc/PID/mem closed)
 * and sets RLIMIT_CORE to 0. Daemons and the agent call it first thing. */
int kf_process_harden(void);

/* Reads a secret file (a token, a secret id, a client secret) of 1..max bytes into secure memory,
 * without its trailing newline, NUL-terminated. Errors name the file, never its content. */
int kf_secbuf_read_file(const char *path, size_t max, kf_secbuf **ret, struct kf_err *err);
/* The same from an open descriptor (stdin, a pipe), read until end of file; name is for messages. */
int kf_secbuf_read_fd(int fd, const char *name, size_t max, kf_secbuf **ret, struct kf_err *err);

/* Wipes len bytes at p in a way the compiler cannot drop. */
void kf_wipe(void *p, size_t len);

#endif
