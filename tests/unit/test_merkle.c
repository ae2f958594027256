/* RFC 9162 Merkle trees (common/kf_merkle.c) against two references: the RFC 6962/9162 test
 * vectors published with Certificate Transparency (roots of its eight-leaf tree and two of its
 * inclusion proofs), and tests/unit/merkle_ref.py, an implementation written from the RFC's text
 * in Python (roots up to 70 leaves; every inclusion and consistency proof up to 33). Every proof
 * also verifies, and a proof with one bit flipped, a wrong index or a wrong size does not. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kf_merkle.h"

static void unhex(const char *s, uint8_t *out, size_t n)
{
    assert_int_equal(strlen(s), 2 * n);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        assert_int_equal(sscanf(s + 2 * i, "%2x", &v), 1);
        out[i] = (uint8_t)v;
    }
}

/* The Certificate Transparency reference tree: 8 leaves and the roots of sizes 1..8. */
static const char *const ct_leaves[] = {"", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                        "606162636465666768696a6b6c6d6e6f"};
static const char *const ct_roots[] = {
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
};

static void ct_tree(kf_merkle_hash leaves[8])
{
    for (int i = 0; i < 8; i++) {
        uint8_t d[16];
        size_t n = strlen(ct_leaves[i]) / 2;
        unhex(ct_leaves[i], d, n);
        kf_merkle_leaf_hash(d, n, leaves[i]);
    }
}

static void test_ct_roots(void **state)
{
    (void)state;
    kf_merkle_hash leaves[8], want, got;
    ct_tree(leaves);
    kf_merkle_frontier f;
    kf_merkle_frontier_init(&f);
    for (uint64_t n = 0; n <= 8; n++) {
        unhex(ct_roots[n], want, 32);
        kf_merkle_root(leaves, n, got);
        assert_memory_equal(got, want, 32);
        kf_merkle_frontier_root(&f, got);
        assert_memory_equal(got, want, 32);
        if (n < 8)
            kf_merkle_frontier_append(&f, leaves[n]);
    }
}

static void test_ct_inclusion(void **state)
{
    (void)state;
    static const struct {
        uint64_t index, size;
        const char *proof[3];
    } v[] = {
        {0, 8,
         {"96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
          "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
          "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"}},
        {5, 8,
         {"bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
          "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
          "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"}},
    };
    kf_merkle_hash leaves[8], root, proof[KF_MERKLE_MAX_PROOF], want;
    ct_tree(leaves);
    kf_merkle_root(leaves, 8, root);
    for (size_t i = 0; i < 2; i++) {
        size_t len = 0;
        assert_int_equal(kf_merkle_inclusion_proof(leaves, v[i].size, v[i].index, proof, &len), 0);
        assert_int_equal(len, 3);
        for (size_t j = 0; j < 3; j++) {
            unhex(v[i].proof[j], want, 32);
            assert_memory_equal(proof[j], want, 32);
        }
        assert_true(kf_merkle_verify_inclusion(v[i].index, v[i].size, leaves[v[i].index], proof, len, root));
    }
}

#define BIG 70

static void ref_leaves(kf_merkle_hash *leaves, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char d[32];
        int len = snprintf(d, sizeof(d), "leaf-%zu", i);
        kf_merkle_leaf_hash(d, (size_t)len, leaves[i]);
    }
}

static size_t parse_proof(char *s, kf_merkle_hash *out)
{
    size_t n = 0;
    for (char *tok = strtok(s, ",\n"); tok != NULL; tok = strtok(NULL, ",\n")) {
        assert_true(n < KF_MERKLE_MAX_PROOF);
        unhex(tok, out[n++], 32);
    }
    return n;
}

static void test_python_reference(void **state)
{
    (void)state;
    kf_merkle_hash leaves[BIG], got[KF_MERKLE_MAX_PROOF], want[KF_MERKLE_MAX_PROOF], root, root2, bad;
    ref_leaves(leaves, BIG);
    FILE *p = popen("python3 " KF_MERKLE_REF, "r");
    assert_non_null(p);
    char line[8192];
    size_t roots = 0, incls = 0, conss = 0;
    kf_merkle_frontier f;
    kf_merkle_frontier_init(&f);
    while (fgets(line, sizeof(line), p) != NULL) {
        char kind[8], hexes[8000] = "";
        unsigned long long a = 0, b = 0;
        if (strncmp(line, "root ", 5) == 0) {
            assert_int_equal(sscanf(line, "%7s %llu %7999s", kind, &a, hexes), 3);
            unhex(hexes, want[0], 32);
            kf_merkle_root(leaves, a, root);
            assert_memory_equal(root, want[0], 32);
            assert_int_equal(f.size, a);
            kf_merkle_frontier_root(&f, root);
            assert_memory_equal(root, want[0], 32);
            if (a < BIG)
                kf_merkle_frontier_append(&f, leaves[a]);
            roots++;
            continue;
        }
        int fields = sscanf(line, "%7s %llu %llu %7999s", kind, &a, &b, hexes);
        assert_true(fields >= 3);
        size_t wlen = parse_proof(hexes, want), glen = 0;
        kf_merkle_root(leaves, b, root);
        if (strcmp(kind, "incl") == 0) {
            assert_int_equal(kf_merkle_inclusion_proof(leaves, b, a, got, &glen), 0);
            assert_int_equal(glen, wlen);
            assert_memory_equal(got, want, 32 * wlen);
            assert_true(kf_merkle_verify_inclusion(a, b, leaves[a], got, glen, root));
            /* A wrong leaf or index, or a flipped bit, fails. (A wrong size alone can pass: the
             * verifier learns the shape from the size, and RFC 9162 signs the size with the root.) */
            assert_false(kf_merkle_verify_inclusion(a, b, leaves[(a + 1) % BIG], got, glen, root));
            if (b > 1)
                assert_false(kf_merkle_verify_inclusion((a + 1) % b, b, leaves[a], got, glen, root));
            for (size_t i = 0; i < glen; i++) {
                memcpy(bad, got[i], 32);
                got[i][i % 32] ^= 0x01;
                assert_false(kf_merkle_verify_inclusion(a, b, leaves[a], got, glen, root));
                memcpy(got[i], bad, 32);
            }
            incls++;
        } else {
            assert_string_equal(kind, "cons");
            assert_int_equal(kf_merkle_consistency_proof(leaves, b, a, got, &glen), 0);
            assert_int_equal(glen, wlen);
            assert_memory_equal(got, want, 32 * wlen);
            kf_merkle_root(leaves, a, root2);
            assert_true(kf_merkle_verify_consistency(a, b, root2, root, got, glen));
            /* The old root of another tree, or a flipped bit, fails. */
            kf_merkle_root(leaves + 1, a, bad);
            assert_false(kf_merkle_verify_consistency(a, b, bad, root, got, glen));
            for (size_t i = 0; i < glen; i++) {
                memcpy(bad, got[i], 32);
                got[i][(i * 7) % 32] ^= 0x80;
                assert_false(kf_merkle_verify_consistency(a, b, root2, root, got, glen));
                memcpy(got[i], bad, 32);
            }
            conss++;
        }
    }
    assert_int_equal(pclose(p), 0);
    assert_int_equal(roots, BIG + 1);
    assert_int_equal(incls, 33 * 34 / 2);
    assert_int_equal(conss, 33 * 34 / 2);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    kf_merkle_hash leaves[4], proof[KF_MERKLE_MAX_PROOF], root;
    ref_leaves(leaves, 4);
    kf_merkle_root(leaves, 4, root);
    size_t len;
    assert_int_equal(kf_merkle_inclusion_proof(leaves, 4, 4, proof, &len), -EINVAL);
    assert_int_equal(kf_merkle_consistency_proof(leaves, 4, 0, proof, &len), -EINVAL);
    assert_int_equal(kf_merkle_consistency_proof(leaves, 3, 4, proof, &len), -EINVAL);
    assert_false(kf_merkle_verify_inclusion(4, 4, leaves[0], proof, 0, root));
    assert_false(kf_merkle_verify_consistency(0, 4, root, root, proof, 0));
    assert_false(kf_merkle_verify_consistency(5, 4, root, root, proof, 0));
    assert_true(kf_merkle_verify_consistency(4, 4, root, root, proof, 0));
    assert_false(kf_merkle_verify_consistency(4, 4, root, leaves[0], proof, 0));
    /* A tree of one leaf: the leaf hash is the root, the proof empty. */
    kf_merkle_root(leaves, 1, root);
    assert_true(kf_merkle_verify_inclusion(0, 1, leaves[0], proof, 0, root));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ct_roots),
        cmocka_unit_test(test_ct_inclusion),
        cmocka_unit_test(test_python_reference),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
