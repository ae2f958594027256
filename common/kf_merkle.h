/* RFC 9162 (Certificate Transparency 2.0) Merkle trees over SHA-256: leaf and node hashing, the
 * tree head (MTH), inclusion and consistency proofs (§2.1.3, §2.1.4) and their verification, and
 * a frontier (the roots of the perfect subtrees a tree of n leaves splits into) that appends a
 * leaf and yields the current root in O(log n) without keeping the leaves.
 *
 *   leaf hash = SHA-256(0x00 || leaf)     node hash = SHA-256(0x01 || left || right)
 *   MTH({})  = SHA-256("")                for n > 1, the left subtree holds the largest power
 *                                         of two smaller than n leaves. */
#ifndef KF_MERKLE_H
#define KF_MERKLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KF_MERKLE_HASH 32
/* A proof for a tree of up to 2^63 leaves has at most this many hashes. */
#define KF_MERKLE_MAX_PROOF 64

typedef uint8_t kf_merkle_hash[KF_MERKLE_HASH];

/* SHA-256 over a || b || c (any may be empty): the fetched-once, per-thread-context hash the
 * tree and the audit chain use. */
void kf_sha256_parts(const void *a, size_t alen, const void *b, size_t blen, const void *c, size_t clen,
                     uint8_t out[32]);

void kf_merkle_leaf_hash(const void *leaf, size_t len, kf_merkle_hash out);
void kf_merkle_node_hash(const kf_merkle_hash left, const kf_merkle_hash right, kf_merkle_hash out);

/* MTH over n leaf hashes. */
void kf_merkle_root(const kf_merkle_hash *leaves, uint64_t n, kf_merkle_hash out);
/* PATH(index, D[n]): the inclusion proof of leaf index (0-based) in the tree of the first n
 * leaves, leaf to root. proof holds KF_MERKLE_MAX_PROOF hashes. -EINVAL when index >= n. */
int kf_merkle_inclusion_proof(const kf_merkle_hash *leaves, uint64_t n, uint64_t index, kf_merkle_hash *proof,
                              size_t *ret_len);
/* PROOF(m, D[n]): that the tree of the first m leaves is a prefix of the tree of n.
 * -EINVAL unless 0 < m <= n. */
int kf_merkle_consistency_proof(const kf_merkle_hash *leaves, uint64_t n, uint64_t m, kf_merkle_hash *proof,
                                size_t *ret_len);

/* RFC 9162 §2.1.3.2: true when proof shows leaf_hash at index in the tree of size with root. */
bool kf_merkle_verify_inclusion(uint64_t index, uint64_t size, const kf_merkle_hash leaf_hash,
                                const kf_merkle_hash *proof, size_t len, const kf_merkle_hash root);
/* RFC 9162 §2.1.4.2: true when proof shows the tree (size1, root1) is a prefix of (size2, root2).
 * Equal sizes need an empty proof and equal roots; size1 0 is refused (nothing to prove). */
bool kf_merkle_verify_consistency(uint64_t size1, uint64_t size2, const kf_merkle_hash root1,
                                  const kf_merkle_hash root2, const kf_merkle_hash *proof, size_t len);

/* nodes[k] is the root of a perfect subtree of 2^k leaves, for each bit k set in size; those
 * subtrees, largest first, are the tree of size leaves. */
typedef struct kf_merkle_frontier {
    uint64_t size;
    kf_merkle_hash nodes[64];
} kf_merkle_frontier;

void kf_merkle_frontier_init(kf_merkle_frontier *f);
void kf_merkle_frontier_append(kf_merkle_frontier *f, const kf_merkle_hash leaf_hash);
void kf_merkle_frontier_root(const kf_merkle_frontier *f, kf_merkle_hash out);

#endif
