/* The OpenSSL library context of keyfleet's TLS servers: the default provider, offering fewer
 * key types to certificate parsing. */
#ifndef KF_TLS_LIBCTX_H
#define KF_TLS_LIBCTX_H

#include <openssl/types.h>

/* The key types a server's handshake can meet: the fleet's certificates (EC), RSA certificates
 * from an operator's own CA, and the X25519 key share. */
#define KF_TLS_KEY_TYPES "EC, RSA, X25519"

/* The provider through which that context offers them (what a key parsed there names). */
#define KF_TLS_PROVIDER_NAME "keyfleet-tls"

/* A library context whose one provider is OpenSSL's default provider (loaded into a private
 * context of its own) with key management, decoders and encoders limited to KF_TLS_KEY_TYPES;
 * every other operation is the default provider's, unchanged. Why: OpenSSL 3.0 parses each
 * certificate's public key by building a decoder context from every decoder and key type on
 * offer (OSSL_DECODER_CTX_new_for_pkey), and that walk, not the key, was 150-190 us of each
 * ~900 us mTLS handshake; over three key types it costs about half (docs/performance.md,
 * issue #29). Created once, kept for the process. NULL when it could not be set up; the caller
 * then uses the default context (the same checks, at the default cost). Thread-safe. */
OSSL_LIB_CTX *kf_tls_server_libctx(void);

#endif
