#include "kf_secmem.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "kf_err.h"
#include "kf_log.h"

static atomic_ulong lock_failures;

/* Freed one-page buffers are kept (wiped, still locked and DONTDUMP) for reuse: a release then
 * costs no mmap/mlock/munlock/munmap. */
#define POOL_MAX 64
static void *pool[POOL_MAX];
static size_t pool_n, page_size;
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t page_once = PTHREAD_ONCE_INIT;

static void init_page_size(void)
{
    long page = sysconf(_SC_PAGESIZE);
    page_size = page > 0 ? (size_t)page : 4096;
}

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
    pthread_once(&page_once, init_page_size);
    size_t psz = page_size;
    size_t cap = (len + psz - 1) / psz * psz;
    if (cap == psz) {
        void *reuse = NULL;
        pthread_mutex_lock(&pool_lock);
        if (pool_n > 0)
            reuse = pool[--pool_n];
        pthread_mutex_unlock(&pool_lock);
        kf_secbuf *b = reuse != NULL ? malloc(sizeof(*b)) : NULL;
        if (b != NULL) {
            b->data = reuse;
            b->len = len;
            b->cap = cap;
            return b;
        }
        if (reuse != NULL) {
            munlock(reuse, cap);
            munmap(reuse, cap);
        }
    }
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
    pthread_once(&page_once, init_page_size);
    if (b->cap == page_size) {
        pthread_mutex_lock(&pool_lock);
        bool kept = pool_n < POOL_MAX;
        if (kept)
            pool[pool_n++] = b->data;
        pthread_mutex_unlock(&pool_lock);
        if (kept) {
            free(b);
            return;
        }
    }
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

int kf_secbuf_read_file(const char *path, size_t max, kf_secbuf **ret, kf_err *err)
{
    /* O_NONBLOCK and a regular file only: a FIFO or a device would stall the caller's event loop
     * (symlinks are followed: Kubernetes mounts projected tokens through them). */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0)
        return kf_err_set(err, -errno, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return kf_err_set(err, -EINVAL, "%s: not a regular file", path);
    }
    kf_secbuf *b = kf_secbuf_new(max + 2);
    size_t len = 0;
    ssize_t n = 0;
    while (b != NULL && len <= max && (n = read(fd, b->data + len, max + 1 - len)) > 0)
        len += (size_t)n;
    int saved = errno;
    close(fd);
    if (b == NULL)
        return kf_err_set(err, -ENOMEM, "out of memory");
    if (n < 0) {
        kf_secbuf_free(b);
        return kf_err_set(err, -saved, "%s: %s", path, strerror(saved));
    }
    while (len > 0 && (b->data[len - 1] == '\n' || b->data[len - 1] == '\r'))
        len--;
    if (len == 0 || len > max) {
        kf_secbuf_free(b);
        return kf_err_set(err, -EINVAL, "%s: must hold 1 to %zu bytes", path, max);
    }
    b->data[len] = '\0';
    b->len = len;
    *ret = b;
    return 0;
}
