/* libcryptsetup, loaded at run time (common/kf_dlopen.h says why): call kfa_cryptsetup_load
 * before any sym_crypt_* function. */
#ifndef KFA_CRYPTSETUP_DL_H
#define KFA_CRYPTSETUP_DL_H

#include <libcryptsetup.h>

#include "kf_dlopen.h"
#include "kf_err.h"

KF_DLSYM(crypt_init);
KF_DLSYM(crypt_init_by_name);
KF_DLSYM(crypt_load);
KF_DLSYM(crypt_free);
KF_DLSYM(crypt_set_log_callback);
KF_DLSYM(crypt_get_uuid);
KF_DLSYM(crypt_status);
KF_DLSYM(crypt_set_pbkdf_type);
KF_DLSYM(crypt_keyslot_add_by_passphrase);
KF_DLSYM(crypt_keyslot_destroy);
KF_DLSYM(crypt_keyslot_status);
KF_DLSYM(crypt_activate_by_passphrase);
KF_DLSYM(crypt_deactivate_by_name);
KF_DLSYM(crypt_token_status);
KF_DLSYM(crypt_token_json_get);
KF_DLSYM(crypt_token_json_set);
KF_DLSYM(crypt_dump_json);

/* Loads libcryptsetup.so.12 (2.4 or later, for crypt_dump_json) and the functions above; later
 * calls return 0 at once. On failure err says which library or function is missing (install
 * libcryptsetup12). Main thread only. */
int kfa_cryptsetup_load(kf_err *err);

#endif
