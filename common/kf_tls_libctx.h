/* The OpenSSL library context of keyfleet's TLS servers: the default provider, offering fewer
 * key types to certificate parsing. */
#ifndef KF_TLS_LIBCTX_H
#define KF_TLS_LIBCTX_H

#include <openssl/types.h>

/* The key types a server's handshake can meet in TLS 1.3: certificates (the fleet's are EC;
 * an operator's own CA may issue RSA, RSA-PSS, Ed25519 or Ed448) and key shares (X25519, X448,
 * and EC for the NIST groups). Withheld: DH (so no ffdhe groups), DSA, SM2. */
#define KF_TLS_KEY_TYPES "EC, RSA, RSA-PSS, ED25519, ED448, X25519, X448"

/* The provider through which that context offers them (what a key parsed there names). */
#define KF_TLS_PROVIDER_NAME "keyfleet-tls"

/* A library context whose one provider is OpenSSL's default provider (loaded into a private
 * context of its own) with key management, decoders and encoders limited to KF_TLS_KEY_TYPES;
 * every other operation is the default provider's, unchanged. Why: OpenSSL 3.0 parses each
 * certificate's public key by building a decoder context from every decoder and key type on
 * offer (OSSL_DECODER_CTX_new_for_pkey), and that walk, not the key, was 150-190 us of each
 * ~900 us mTLS handshake; over these key types it costs about two thirds (docs/performance.md,
 * issue #29). Created once, kept for the process. NULL when OpenSSL is not configured as by
 * default (openssl.cnf loads another provider, or asks for FIPS) or the context could not be
 * set up: the caller then uses the default context, with the same checks at the default cost.
 * Thread-safe. */
OSSL_LIB_CTX *kf_tls_server_libctx(void);

#endif
