#include "kf_secmem.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "kf_log.h"

static atomic_ulong lock_failures;

void kf_wipe(void *p, size_t len)
{
    if (p != NULL && len > 0)
        OPENSSL_cleanse(p, len);
}

unsigned long kf_secmem_lock_failures(void) { return atomic_load(&lock_failures); }

kf_secbuf *kf_secbuf_new(size_t len)
{
    if (len == 0)
        return NULL;
    long page = sysconf(_SC_PAGESIZE);
    size_t psz = page > 0 ? (size_t)page : 4096;
    size_t cap = (len + psz - 1) / psz * psz;
    void *p = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    (void)madvise(p, cap, MADV_DONTDUMP);
    (void)madvise(p, cap, MADV_WIPEONFORK);
    if (mlock(p, cap) != 0) {
        if (atomic_fetch_add(&lock_failures, 1) == 0)
            kf_log_warn("secmem_mlock_failed", "errno=%d hint=\"raise RLIMIT_MEMLOCK\"", errno);
    }
    kf_secbuf *b = malloc(sizeof(*b));
    if (b == NULL) {
        munlock(p, cap);
        munmap(p, cap);
        return NULL;
    }
    b->data = p;
    b->len = len;
    b->cap = cap;
    return b;
}

void kf_secbuf_free(kf_secbuf *b)
{
    if (b == NULL)
        return;
    OPENSSL_cleanse(b->data, b->cap);
    munlock(b->data, b->cap);
    munmap(b->data, b->cap);
    free(b);
}

int kf_process_harden(void)
{
    struct rlimit nocore = {0, 0};
    if (setrlimit(RLIMIT_CORE, &nocore) != 0)
        return -errno;
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
        return -errno;
    return 0;
}
