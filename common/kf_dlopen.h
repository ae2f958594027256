/* Loads a shared library and a set of its symbols at run time, all or nothing. The agent loads
 * libcryptsetup and tpm2-tss this way: they are 16 of its 24 libraries, a node that has only
 * ZFS (or no TPM) never needs them, and at boot libcryptsetup loads on the main thread while
 * the helper thread sets up TLS (docs/performance.md). Each symbol is declared with the type of
 * the library's own prototype, so calls through it are checked by the compiler:
 *     KF_DLSYM(crypt_init);              in a header: extern __typeof__(crypt_init) *sym_crypt_init
 *     KF_DLSYM_DEFINE(crypt_init);       in one .c file
 *     kf_dlopen_all(&handle, "libcryptsetup.so.12", err, KF_DLSYM_ARG(crypt_init), NULL); */
#ifndef KF_DLOPEN_H
#define KF_DLOPEN_H

struct kf_err;

#define KF_DLSYM(fn) extern __typeof__(fn) *sym_##fn
#define KF_DLSYM_DEFINE(fn) __typeof__(fn) *sym_##fn
#define KF_DLSYM_ARG(fn) (void **)&sym_##fn, #fn

/* Opens soname (RTLD_NOW) unless *handle is already set, then resolves each (void **slot,
 * const char *name) pair up to a NULL slot. On any failure nothing is kept: every slot is
 * reset to NULL, the library is closed, and err names the library or the missing symbol.
 * Not thread-safe: callers serialize (the agent loads from its main thread). */
int kf_dlopen_all(void **handle, const char *soname, struct kf_err *err, ...);

#endif
