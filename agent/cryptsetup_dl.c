#include "cryptsetup_dl.h"

#include <stddef.h>

/* The soname of libcryptsetup 2.x (since 2.0, 2017). */
#define CRYPTSETUP_SONAME "libcryptsetup.so.12"

KF_DLSYM_DEFINE(crypt_init);
KF_DLSYM_DEFINE(crypt_init_by_name);
KF_DLSYM_DEFINE(crypt_load);
KF_DLSYM_DEFINE(crypt_free);
KF_DLSYM_DEFINE(crypt_set_log_callback);
KF_DLSYM_DEFINE(crypt_get_uuid);
KF_DLSYM_DEFINE(crypt_status);
KF_DLSYM_DEFINE(crypt_set_pbkdf_type);
KF_DLSYM_DEFINE(crypt_keyslot_add_by_passphrase);
KF_DLSYM_DEFINE(crypt_keyslot_destroy);
KF_DLSYM_DEFINE(crypt_keyslot_status);
KF_DLSYM_DEFINE(crypt_activate_by_passphrase);
KF_DLSYM_DEFINE(crypt_deactivate_by_name);
KF_DLSYM_DEFINE(crypt_token_status);
KF_DLSYM_DEFINE(crypt_token_json_get);
KF_DLSYM_DEFINE(crypt_token_json_set);
KF_DLSYM_DEFINE(crypt_dump_json);

static void *handle;

int kfa_cryptsetup_load(kf_err *err)
{
    return kf_dlopen_all(&handle, CRYPTSETUP_SONAME, err, KF_DLSYM_ARG(crypt_init), KF_DLSYM_ARG(crypt_init_by_name),
                         KF_DLSYM_ARG(crypt_load), KF_DLSYM_ARG(crypt_free), KF_DLSYM_ARG(crypt_set_log_callback),
                         KF_DLSYM_ARG(crypt_get_uuid), KF_DLSYM_ARG(crypt_status), KF_DLSYM_ARG(crypt_set_pbkdf_type),
                         KF_DLSYM_ARG(crypt_keyslot_add_by_passphrase), KF_DLSYM_ARG(crypt_keyslot_destroy), KF_DLSYM_ARG(crypt_keyslot_status),
                         KF_DLSYM_ARG(crypt_activate_by_passphrase), KF_DLSYM_ARG(crypt_deactivate_by_name),
                         KF_DLSYM_ARG(crypt_token_status), KF_DLSYM_ARG(crypt_token_json_get),
                         KF_DLSYM_ARG(crypt_token_json_set), KF_DLSYM_ARG(crypt_dump_json), NULL);
}
