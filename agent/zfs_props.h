/* What `zfs get` and `zfs list` print about datasets, parsed and checked. The keyfleet user
 * properties (org.keyfleet:*) live on the pool, which whoever holds the disk can edit (an evil
 * maid), so every field is checked as strictly as the LUKS2 token's (luks2_token.h). In kfa_core,
 * apart from zfs.c's commands, so it can be fuzzed (tests/fuzz/fuzz_zfs_props.c). */
#ifndef KFA_ZFS_PROPS_H
#define KFA_ZFS_PROPS_H

#include <stdbool.h>
#include <stddef.h>

#include "volume.h"

#define KFA_ZFS_PROP_WRAPPED "org.keyfleet:wrapped-key"
#define KFA_ZFS_PROP_ID "org.keyfleet:volume-id"
#define KFA_ZFS_PROP_TPM "org.keyfleet:tpm-sealed"
#define KFA_ZFS_PROP_NEXT "org.keyfleet:wrapped-next" /* a key rotation in progress (rotate.c) */
/* require: [tpm_and_network]: the TPM part of the rotation's new key (kftpmnet1:), staged with
 * wrapped-next in the same command, before the dataset's key changes. */
#define KFA_ZFS_PROP_TPM_NEXT "org.keyfleet:tpm-next"
/* The properties kfa_zfs_parse_probe reads, in its order. */
#define KFA_ZFS_PROBE_PROPS                                                                                             \
    "guid,keystatus,encryptionroot," KFA_ZFS_PROP_ID "," KFA_ZFS_PROP_WRAPPED "," KFA_ZFS_PROP_TPM "," KFA_ZFS_PROP_NEXT      \
    "," KFA_ZFS_PROP_TPM_NEXT

/* Parses `zfs get -H -p -o property,value -s local,none KFA_ZFS_PROBE_PROPS v->path` (out,
 * edited in place) into v: the id (the GUID), whether the key is loaded, and, when the dataset
 * itself carries keyfleet metadata, the wrapped key, the TPM-sealed copy (or TPM part) and a
 * rotation's next wrapped key and, for a TPM part, its next TPM part (malloc'ed). tpm-next is
 * read only beside wrapped-next and a TPM part (a rotation cut off after wrapped-next was dropped
 * leaves it behind, ignored, replaced by the next staging). User properties are inherited by child datasets; -s local,none leaves
 * out the inherited ones (guid, keystatus and encryptionroot have no source: "none"), so a
 * child encryption root never reads its parent's metadata as its own (review F6).
 * -EIO: not "PROPERTY\tVALUE" lines of the probed properties, guid, keystatus and
 * encryptionroot among them;
 * -EBADMSG: metadata that is not valid, or not this dataset's. */
int kfa_zfs_parse_probe(kfa_volume *v, char *out, kf_err *err);

/* Parses `zfs list -H -o PROPS` (nf properties, the dataset name first; out edited in place) and
 * returns the names (malloc'ed) of the datasets whose fields keep() accepts. A line without
 * exactly nf fields is skipped. */
int kfa_zfs_parse_list(char *out, size_t nf, bool (*keep)(char **fields, const void *arg), const void *arg,
                       char ***ret_names, size_t *ret_n, kf_err *err);

#endif
