#include "kf_identity.h"

#include "kf_tpm_evidence.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/x509v3.h>

static const char *const kind_names[] = {
    [KF_PEER_NONE] = "none",
    [KF_PEER_NODE] = "node",
    [KF_PEER_OPERATOR] = "operator",
    [KF_PEER_COORDINATOR] = "coordinator",
};

const char *kf_peer_kind_name(kf_peer_kind kind)
{
    if ((size_t)kind >= sizeof(kind_names) / sizeof(kind_names[0]))
        return "none";
    return kind_names[kind];
}

int kf_peer_kind_parse(const char *s, kf_peer_kind *ret)
{
    for (int k = KF_PEER_NODE; k <= KF_PEER_COORDINATOR; k++) {
        if (strcmp(s, kind_names[k]) == 0) {
            *ret = (kf_peer_kind)k;
            return 0;
        }
    }
    return -EINVAL;
}

static bool name_char(char c, bool first)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return !first && (c == '.' || c == '_' || c == '-');
}

bool kf_name_valid(const char *s, size_t len)
{
    if (len == 0 || len > KF_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (!name_char(s[i], i == 0))
            return false;
    return true;
}

int kf_identity_from_uri(const char *uri, size_t len, kf_identity *ret, kf_err *err)
{
    static const char scheme[] = "keyfleet://";
    const size_t slen = sizeof(scheme) - 1;
    if (len < slen || memcmp(uri, scheme, slen) != 0)
        return kf_err_set(err, -EINVAL, "identity URI does not start with %s", scheme);
    const char *kind = uri + slen;
    const char *end = uri + len;
    const char *slash = memchr(kind, '/', (size_t)(end - kind));
    if (slash == NULL)
        return kf_err_set(err, -EINVAL, "identity URI has no /NAME part");
    char kbuf[16];
    size_t klen = (size_t)(slash - kind);
    if (klen == 0 || klen >= sizeof(kbuf))
        return kf_err_set(err, -EINVAL, "identity URI has a bad kind");
    memcpy(kbuf, kind, klen);
    kbuf[klen] = '\0';
    kf_peer_kind k;
    if (kf_peer_kind_parse(kbuf, &k) != 0)
        return kf_err_set(err, -EINVAL, "identity kind must be node, operator or coordinator");
    const char *name = slash + 1;
    size_t nlen = (size_t)(end - name);
    if (!kf_name_valid(name, nlen))
        return kf_err_set(err, -EINVAL, "identity name must be 1..63 of [A-Za-z0-9._-]");
    ret->kind = k;
    memcpy(ret->name, name, nlen);
    ret->name[nlen] = '\0';
    return 0;
}

int kf_identity_from_cert(X509 *cert, kf_identity *ret, kf_err *err)
{
    GENERAL_NAMES *sans = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    if (sans == NULL)
        return kf_err_set(err, -EACCES, "certificate has no subjectAltName");
    int found = 0, r = 0;
    kf_identity id = {0};
    for (int i = 0; i < sk_GENERAL_NAME_num(sans); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(sans, i);
        if (gn->type != GEN_URI)
            continue;
        const ASN1_IA5STRING *s = gn->d.uniformResourceIdentifier;
        const char *data = (const char *)ASN1_STRING_get0_data(s);
        size_t len = (size_t)ASN1_STRING_length(s);
        if (len < 11 || memcmp(data, "keyfleet://", 11) != 0)
            continue;
        if (++found > 1)
            break;
        r = kf_identity_from_uri(data, len, &id, err);
    }
    GENERAL_NAMES_free(sans);
    if (found == 0)
        return kf_err_set(err, -EACCES, "certificate has no keyfleet:// URI SAN");
    if (found > 1)
        return kf_err_set(err, -EACCES, "certificate has more than one keyfleet:// URI SAN");
    if (r != 0)
        return -EACCES;
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
    char *hex = bn != NULL ? BN_bn2hex(bn) : NULL;
    int sr = hex != NULL ? kf_serial_normalize(hex, id.serial) : -EINVAL;
    OPENSSL_free(hex);
    BN_free(bn);
    if (sr != 0)
        return kf_err_set(err, -EACCES, "certificate serial is not usable");
    id.tpm_key = kf_tpm_ext_get(cert, id.tpm_ak);
    struct tm tm;
    if (ASN1_TIME_to_tm(X509_get0_notAfter(cert), &tm) == 1)
        id.not_after = (int64_t)timegm(&tm);
    *ret = id;
    return 0;
}

int64_t kf_cert_not_before(const X509 *cert)
{
    struct tm tm;
    const ASN1_TIME *nb = cert != NULL ? X509_get0_notBefore(cert) : NULL;
    return nb != NULL && ASN1_TIME_to_tm(nb, &tm) == 1 ? (int64_t)timegm(&tm) : INT64_MIN;
}

int kf_serial_normalize(const char *in, char out[KF_SERIAL_MAX])
{
    if (strncmp(in, "serial=", 7) == 0)
        in += 7;
    size_t n = 0;
    bool leading = true;
    for (const char *p = in; *p != '\0'; p++) {
        char c = *p;
        if (c == ':')
            continue;
        if (c >= 'A' && c <= 'F')
            c = (char)(c - 'A' + 'a');
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return -EINVAL;
        if (leading && c == '0')
            continue;
        leading = false;
        if (n + 1 >= KF_SERIAL_MAX)
            return -EINVAL;
        out[n++] = c;
    }
    if (n == 0 && strchr(in, '0') == NULL)
        return -EINVAL;
    if (n == 0)
        out[n++] = '0';
    out[n] = '\0';
    return 0;
}

int kf_identity_uri(const kf_identity *id, char *buf, size_t size)
{
    int n = snprintf(buf, size, "keyfleet://%s/%s", kf_peer_kind_name(id->kind), id->name);
    return n < 0 || (size_t)n >= size ? -ENOSPC : 0;
}
