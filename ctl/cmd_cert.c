/* keyfleetctl cert issue node|operator|coordinator NAME, cert revoke SERIAL|--cert FILE */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/pem.h>

#include "ca.h"
#include "tpm_evidence.h"
#include "ctl.h"
#include "keyfleet/v1/admin.pb-c.h"
#include "kf_identity.h"

#define MAX_SANS 16

/* keyfleetctl cert revoke SERIAL|--cert FILE [--reason TEXT]: denylists a certificate of any kind. */
static int cert_revoke(kfctl *ctl, int argc, char **argv)
{
    const char *file = NULL, *reason = "", *serial_arg = NULL;
    static const struct option opts[] = {{"cert", required_argument, NULL, 'c'},
                                         {"reason", required_argument, NULL, 'r'},
                                         {NULL, 0, NULL, 0}};
    argc--;
    argv++;
    optind = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'c')
            file = optarg;
        else if (c == 'r')
            reason = optarg;
        else
            goto usage;
    }
    if (optind < argc)
        serial_arg = argv[optind++];
    if (optind != argc || (file == NULL) == (serial_arg == NULL))
        goto usage;
    char serial[KF_SERIAL_MAX];
    kf_identity id = {0};
    if (file != NULL) {
        FILE *f = fopen(file, "r");
        X509 *x = f != NULL ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
        if (f != NULL)
            fclose(f);
        kf_err err = {0};
        if (x == NULL || kf_identity_from_cert(x, &id, &err) != 0) {
            fprintf(stderr, "keyfleetctl: %s: not a keyfleet certificate%s%s\n", file, err.msg[0] ? ": " : "",
                    err.msg);
            X509_free(x);
            return 1;
        }
        X509_free(x);
        snprintf(serial, sizeof(serial), "%s", id.serial);
    } else if (kf_serial_normalize(serial_arg, serial) != 0) {
        fprintf(stderr, "keyfleetctl: '%s' is not a certificate serial (hex, as openssl x509 -serial prints it)\n",
                serial_arg);
        return KFCTL_EXIT_USAGE;
    }
    Keyfleet__V1__RevokeCertRequest req = KEYFLEET__V1__REVOKE_CERT_REQUEST__INIT;
    req.serial = serial;
    req.kind = id.kind != KF_PEER_NONE ? (char *)kf_peer_kind_name(id.kind) : (char *)"";
    req.name = id.name;
    req.reason = (char *)reason;
    ProtobufCMessage *m = NULL;
    if (kfctl_call_once(ctl, "keyfleet.v1.AdminService/RevokeCert", &req.base,
                        &keyfleet__v1__revoke_cert_response__descriptor, &m) != 0)
        return 1;
    protobuf_c_message_free_unpacked(m, NULL);
    printf("certificate %s%s%s revoked: refused from now on\n", serial, id.name[0] ? " of " : "", id.name);
    return 0;
usage:
    kfctl_usage("cert");
    return KFCTL_EXIT_USAGE;
}

/* cert issue's options, pointing into argv. */
typedef struct issue_args {
    const char *dir, *out, *csr, *evidence;
    long days, backdate;
    const char *sans[MAX_SANS], *ek_cas[MAX_SANS];
    size_t n_sans, n_ek_cas;
    bool force, allow_expired;
} issue_args;

/* Parses the options of `cert issue` (argv[0] is "issue"): 0 with optind at KIND, or the exit
 * status of a usage error (printed). */
static int parse_issue_args(int argc, char **argv, issue_args *a)
{
    static const struct option opts[] = {{"dir", required_argument, NULL, 'd'},
                                         {"allow-expired", no_argument, NULL, 'X'},
                                         {"out", required_argument, NULL, 'o'},
                                         {"days", required_argument, NULL, 'D'},
                                         {"backdate", required_argument, NULL, 'b'},
                                         {"san", required_argument, NULL, 's'},
                                         {"force", no_argument, NULL, 'f'},
                                         {"csr", required_argument, NULL, 'C'},
                                         {"tpm-evidence", required_argument, NULL, 'T'},
                                         {"ek-ca", required_argument, NULL, 'E'},
                                         {NULL, 0, NULL, 0}};
    int c;
    optind = 0; /* glibc resets its permutation state */
    char *end;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'd':
            a->dir = optarg;
            break;
        case 'o':
            a->out = optarg;
            break;
        case 'D':
        case 'b': {
            long v = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || v < 0 || v > 3650) {
                fprintf(stderr, "keyfleetctl: --%s must be a number of days from 0 to 3650\n",
                        c == 'D' ? "days" : "backdate");
                return KFCTL_EXIT_USAGE;
            }
            *(c == 'D' ? &a->days : &a->backdate) = v;
            break;
        }
        case 's':
            if (a->n_sans == MAX_SANS || (strncmp(optarg, "DNS:", 4) != 0 && strncmp(optarg, "IP:", 3) != 0) ||
                strchr(optarg, ',') != NULL) {
                fprintf(stderr, "keyfleetctl: --san takes DNS:name or IP:address (at most %d)\n", MAX_SANS);
                return KFCTL_EXIT_USAGE;
            }
            a->sans[a->n_sans++] = optarg;
            break;
        case 'f':
            a->force = true;
            break;
        case 'X':
            a->allow_expired = true;
            break;
        case 'C':
            a->csr = optarg;
            break;
        case 'T':
            a->evidence = optarg;
            break;
        case 'E':
            if (a->n_ek_cas == MAX_SANS) {
                fprintf(stderr, "keyfleetctl: at most %d --ek-ca files\n", MAX_SANS);
                return KFCTL_EXIT_USAGE;
            }
            a->ek_cas[a->n_ek_cas++] = optarg;
            break;
        default:
            kfctl_usage("cert");
            return KFCTL_EXIT_USAGE;
        }
    }
    if (optind + 2 != argc) {
        kfctl_usage("cert");
        return KFCTL_EXIT_USAGE;
    }
    /* Valid from BACKDATE days ago for DAYS days: ended already when DAYS <= BACKDATE. Such a
     * certificate only fails later, looking like a network fault; --allow-expired is for tests
     * of exactly that refusal. */
    if (a->days <= a->backdate && !a->allow_expired) {
        fprintf(stderr, "keyfleetctl: --days %ld with --backdate %ld: the certificate would have expired %ld days ago "
                        "(--days must exceed --backdate)\n", a->days, a->backdate, a->backdate - a->days);
        return KFCTL_EXIT_USAGE;
    }
    return 0;
}

int kfctl_cmd_cert(kfctl *ctl, int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "revoke") == 0)
        return cert_revoke(ctl, argc, argv);
    if (argc < 2 || strcmp(argv[1], "issue") != 0) {
        kfctl_usage("cert");
        return KFCTL_EXIT_USAGE;
    }
    issue_args a = {.dir = ".", .days = 365};
    /* Parse after "issue". */
    argc--;
    argv++;
    int usage = parse_issue_args(argc, argv, &a);
    if (usage != 0)
        return usage;
    kf_peer_kind kind;
    if (kf_peer_kind_parse(argv[optind], &kind) != 0) {
        fprintf(stderr, "keyfleetctl: kind must be node, operator or coordinator\n");
        return KFCTL_EXIT_USAGE;
    }
    const char *name = argv[optind + 1];
    char ca_cert[4096], ca_key[4096], cert_out[4096], key_out[4096];
    snprintf(ca_cert, sizeof(ca_cert), "%s/ca.crt", a.dir);
    snprintf(ca_key, sizeof(ca_key), "%s/ca.key", a.dir);
    if (a.out != NULL) {
        snprintf(cert_out, sizeof(cert_out), "%s.crt", a.out);
        snprintf(key_out, sizeof(key_out), "%s.key", a.out);
    } else {
        snprintf(cert_out, sizeof(cert_out), "%s/%s.crt", a.dir, name);
        snprintf(key_out, sizeof(key_out), "%s/%s.key", a.dir, name);
    }
    kfctl_cert_opts copts = {.kind = kind, .name = name, .days = (int)a.days, .backdate_days = (int)a.backdate,
                             .extra_sans = a.sans, .n_extra_sans = a.n_sans};
    kf_err err = {0};
    if (a.csr != NULL && kfctl_csr_read(a.csr, name, &copts.public_key, &err) != 0) {
        fprintf(stderr, "keyfleetctl: cert issue: %s\n", err.msg);
        return KFCTL_EXIT_USAGE;
    }
    if ((a.evidence != NULL || a.n_ek_cas > 0) && (a.csr == NULL || a.evidence == NULL)) {
        fprintf(stderr, "keyfleetctl: --tpm-evidence needs --csr, and --ek-ca needs --tpm-evidence\n");
        EVP_PKEY_free(copts.public_key);
        return KFCTL_EXIT_USAGE;
    }
    kf_tpm_verified tv = {0};
    char *pem = NULL;
    if (a.evidence != NULL) {
        if (kfctl_tpm_evidence_check(a.evidence, a.ek_cas, a.n_ek_cas, copts.public_key, &tv, &err) != 0) {
            fprintf(stderr, "keyfleetctl: cert issue: %s\n", err.msg);
            EVP_PKEY_free(copts.public_key);
            return 1;
        }
        copts.tpm = &tv;
        copts.ret_pem = &pem;
    }
    int r = kfctl_cert_issue(ca_cert, ca_key, &copts, cert_out, key_out, a.force, &err);
    EVP_PKEY_free(copts.public_key);
    if (r == 0 && a.evidence != NULL) {
        char cred_out[4200];
        snprintf(cred_out, sizeof(cred_out), "%s.tpmcred", cert_out);
        kf_tpm_credential cred = {0};
        r = kf_tpm_credential_make(&tv, pem, strlen(pem), &cred, &err);
        if (r == 0)
            r = kf_tpm_credential_write(&cred, cred_out, &err);
        kf_tpm_credential_clear(&cred);
        free(pem);
        bool ek_verified = tv.ek_cert_verified;
        kf_tpm_verified_clear(&tv);
        if (r == 0) {
            printf("issued keyfleet://%s/%s, TPM-bound (EK certificate %s), sealed to that TPM: %s\n"
                   "next, on the node: keyfleet-agent identity activate %s\n",
                   kf_peer_kind_name(kind), name,
                   ek_verified ? "verified" : "not verified: no --ek-ca; policy's require: [tpm_key] will not accept it",
                   cred_out, cred_out);
            return 0;
        }
    }
    if (r != 0) {
        fprintf(stderr, "keyfleetctl: cert issue: %s\n", err.msg);
        return 1;
    }
    if (a.csr != NULL)
        printf("issued keyfleet://%s/%s for the key of %s: %s\n"
               "(not marked TPM-bound: without --tpm-evidence it does not pass policy require: [tpm_key])\n",
               kf_peer_kind_name(kind), name, a.csr, cert_out);
    else
        printf("issued keyfleet://%s/%s: %s %s\n", kf_peer_kind_name(kind), name, cert_out, key_out);
    return 0;
}
