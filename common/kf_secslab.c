#include "kf_secslab.h"

#include <pthread.h>
#include <stdlib.h>

#include <openssl/crypto.h>

#include "kf_secmem.h"

#define CHUNK_BYTES (64u * 1024u)

typedef struct free_obj {
    struct free_obj *next;
} free_obj;

struct kf_secslab {
    pthread_mutex_t lock;
    size_t obj_size, per_chunk, max_objs, live, carved;
    kf_secbuf **chunks;
    size_t n_chunks, max_chunks;
    free_obj *free_list;
};

kf_secslab *kf_secslab_new(size_t obj_size, size_t max_objs)
{
    if (obj_size == 0 || max_objs == 0)
        return NULL;
    obj_size = (obj_size + 15u) & ~(size_t)15u;
    if (obj_size > CHUNK_BYTES)
        return NULL;
    kf_secslab *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->obj_size = obj_size;
    s->per_chunk = CHUNK_BYTES / obj_size;
    s->max_objs = max_objs;
    s->max_chunks = (max_objs + s->per_chunk - 1) / s->per_chunk;
    s->chunks = calloc(s->max_chunks, sizeof(*s->chunks));
    if (s->chunks == NULL) {
        free(s);
        return NULL;
    }
    pthread_mutex_init(&s->lock, NULL);
    return s;
}

/* The next never-used object, growing by one chunk when the last is used up. */
static void *carve(kf_secslab *s)
{
    size_t chunk = s->carved / s->per_chunk, slot = s->carved % s->per_chunk;
    if (chunk >= s->max_chunks)
        return NULL;
    if (chunk == s->n_chunks) {
        kf_secbuf *b = kf_secbuf_new(CHUNK_BYTES);
        if (b == NULL)
            return NULL;
        s->chunks[s->n_chunks++] = b;
    }
    s->carved++;
    return s->chunks[chunk]->data + slot * s->obj_size;
}

void *kf_secslab_alloc(kf_secslab *s)
{
    pthread_mutex_lock(&s->lock);
    void *p = NULL;
    if (s->live < s->max_objs) {
        if (s->free_list != NULL) {
            p = s->free_list;
            s->free_list = s->free_list->next;
            ((free_obj *)p)->next = NULL; /* the rest was wiped on free */
        } else {
            p = carve(s);
        }
    }
    if (p != NULL)
        s->live++;
    pthread_mutex_unlock(&s->lock);
    return p;
}

void kf_secslab_free(kf_secslab *s, void *p)
{
    if (p == NULL)
        return;
    OPENSSL_cleanse(p, s->obj_size);
    pthread_mutex_lock(&s->lock);
    free_obj *f = p;
    f->next = s->free_list;
    s->free_list = f;
    s->live--;
    pthread_mutex_unlock(&s->lock);
}

size_t kf_secslab_live(const kf_secslab *s)
{
    pthread_mutex_lock((pthread_mutex_t *)&s->lock);
    size_t n = s->live;
    pthread_mutex_unlock((pthread_mutex_t *)&s->lock);
    return n;
}

void kf_secslab_destroy(kf_secslab *s)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->n_chunks; i++)
        kf_secbuf_free(s->chunks[i]);
    free(s->chunks);
    pthread_mutex_destroy(&s->lock);
    free(s);
}
