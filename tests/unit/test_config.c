/* Configuration errors name file:line:column and what was expected; a good file loads. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "config/config.h"
#include "kf_yaml.h"

#include "kf_test_tmpdir.h"


static const char *write_file(const char *name, const char *text)
{
    static char path[256];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    return path;
}

#define GOOD                                                                                                           \
    "name: coord-1\n"                                                                                                  \
    "listen: [\"127.0.0.1:0\"]\n"                                                                                      \
    "state_dir: state\n"                                                                                               \
    "tls:\n"                                                                                                           \
    "  cert: c.crt\n"                                                                                                  \
    "  key: c.key\n"                                                                                                   \
    "  ca: ca.crt\n"

static void expect_error(const char *text, const char *want)
{
    const char *path = write_file("k.yaml", text);
    kfd_config *cfg = NULL;
    kf_err err = {0};
    assert_int_equal(kfd_config_load(path, &cfg, &err), -EINVAL);
    assert_null(cfg);
    char full[512];
    snprintf(full, sizeof(full), "%s:%s", path, want);
    if (strstr(err.msg, full) == NULL)
        fail_msg("error '%s' does not contain '%s'", err.msg, full);
}

static void test_good_config_loads(void **state)
{
    (void)state;
    const char *path = write_file("k.yaml", GOOD "limits:\n  idle_timeout: 2m\n  max_body_bytes: 65536\n");
    kfd_config *cfg = NULL;
    kf_err err = {0};
    assert_int_equal(kfd_config_load(path, &cfg, &err), 0);
    assert_string_equal(cfg->name, "coord-1");
    assert_int_equal(cfg->listen.n, 1);
    assert_int_equal(cfg->limits.idle_timeout_ms, 120000);
    assert_int_equal(cfg->limits.max_body_bytes, 65536);
    assert_int_equal(cfg->limits.max_open_streams, 32768); /* the default: about 210 MB of h2o's streams */
    /* the defaults: a NAT'd group of 200 nodes at once, then 50 handshakes (about 50 ms of CPU) a second */
    assert_int_equal(cfg->limits.handshakes_per_source.burst, 200);
    assert_int_equal(cfg->limits.handshakes_per_source.per_second, 50);
    assert_int_equal(cfg->limits.ipv6_source_prefix, 128); /* each IPv6 address alone by default */
    kfd_config_free(cfg);
    path = write_file("k.yaml", GOOD "limits:\n  handshakes_per_source: {burst: 7, per_second: 3}\n");
    cfg = NULL;
    assert_int_equal(kfd_config_load(path, &cfg, &err), 0);
    assert_int_equal(cfg->limits.handshakes_per_source.burst, 7);
    assert_int_equal(cfg->limits.handshakes_per_source.per_second, 3);
    assert_int_equal(cfg->limits.max_open_streams, 32768); /* the rest of limits keeps its defaults */
    assert_int_equal(cfg->client_auth, KF_TLS_PEER_REQUIRED);
    char want[256];
    snprintf(want, sizeof(want), "%s/c.crt", tmpdir);
    assert_string_equal(cfg->tls_cert, want); /* relative to the config file */
    kfd_config_free(cfg);
}

/* A relative config path (keyfleetd -c sub/k.yaml): the default KEK directory is the state
 * directory's kek/, the state directory resolved against the config's directory once. */
static void test_relative_config_kek_dir(void **state)
{
    (void)state;
    write_file("k.yaml", GOOD);
    char cwd[1024];
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(chdir(tmpdir), 0);
    assert_int_equal(mkdir("sub", 0700) == 0 || errno == EEXIST, 1);
    FILE *f = fopen("sub/k.yaml", "w");
    assert_non_null(f);
    fputs(GOOD, f);
    fclose(f);
    kfd_config *cfg = NULL;
    kf_err err = {0};
    int r = kfd_config_load("sub/k.yaml", &cfg, &err);
    assert_int_equal(chdir(cwd), 0);
    assert_int_equal(r, 0);
    assert_string_equal(cfg->state_dir, "sub/state");
    assert_string_equal(cfg->kms.local_dir, "sub/state/kek");
    kfd_config_free(cfg);
}

static void test_unknown_key(void **state)
{
    (void)state;
    expect_error(GOOD "colour: blue\n", "8:1: unknown key 'colour'");
    expect_error(GOOD "limits:\n  max_bodies: 3\n", "9:3: unknown key 'max_bodies'");
}

static void test_missing_key(void **state)
{
    (void)state;
    expect_error("name: a\nlisten: [\"127.0.0.1:1\"]\nstate_dir: s\n", "1:1: missing required key 'tls'");
}

static void test_wrong_types(void **state)
{
    (void)state;
    expect_error(GOOD "limits:\n  max_body_bytes: lots\n", "9:19: expected an integer from 1024 to 1048576");
    expect_error(GOOD "limits:\n  max_body_bytes: 1\n", "9:19: expected an integer");
    expect_error(GOOD "limits:\n  idle_timeout: soon\n", "9:17: expected a duration");
    expect_error(GOOD "limits: [1, 2]\n", "8:9: expected a mapping");
    expect_error(GOOD "log_level: loud\n", "8:12: log_level must be");
    expect_error("name: a\nlisten: [\"nope\"]\nstate_dir: s\ntls: {cert: a, key: b, ca: c}\n",
                 "2:9: listen address 'nope' is not host:port");
    expect_error("name: \"bad name\"\nlisten: [\"127.0.0.1:1\"]\nstate_dir: s\ntls: {cert: a, key: b, ca: c}\n",
                 "1:8: name must be");
    expect_error(GOOD "tls: {}\n", "8:1: duplicate key 'tls'");
    expect_error(GOOD "probe_listen: [\"nope\"]\n", "8:15: probe_listen address 'nope' is not host:port");
    expect_error("name: a\nlisten: [\"127.0.0.1:1\"]\nprobe_listen: [\"127.0.0.1:1\"]\nstate_dir: s\n"
                 "tls: {cert: a, key: b, ca: c}\n",
                 "3:15: probe_listen address '127.0.0.1:1' is also in listen");
}

static void test_malformed_yaml(void **state)
{
    (void)state;
    expect_error("name: a\nlisten: [\"127.0.0.1:1\"\nstate_dir: s\n", "");
    expect_error("name: a\n  bad: indent\n", "");
    expect_error("a: &x 1\nb: *x\n", "1:7: anchors are not supported");
    expect_error("", "1: expected a mapping");
    /* libfyaml 0.8 loops for ever on a directive out of place (tests/fuzz/regressions/fuzz_yaml). */
    expect_error("name: a\n%  poll: 8\n", "2:1: YAML directives (%...) are not supported");
    expect_error("%YAML 1.2\n---\nname: a\n", "1:1: YAML directives");
    /* A bare CR starts a line too (fuzz_rpc_request found libfyaml looping on one, via PutPolicy),
     * and so do NEL and LS. */
    expect_error("name: a\r%  poll: 8\n", "2:1: YAML directives (%...) are not supported");
    expect_error("name: a\xc2\x85%x\n", "2:1: YAML directives");
    expect_error("name: a\xe2\x80\xa8%x\n", "2:1: YAML directives");
    expect_error("\xef\xbb\xbf%YAML 1.2\n---\nname: a\n", "1:1: YAML directives");
    expect_error("name: a\r\n%x\n", "2:1: YAML directives");
}

static void test_missing_file(void **state)
{
    (void)state;
    kfd_config *cfg = NULL;
    kf_err err = {0};
    assert_int_equal(kfd_config_load("/nonexistent/k.yaml", &cfg, &err), -ENOENT);
    assert_non_null(strstr(err.msg, "/nonexistent/k.yaml"));
}

static void test_duration_parser(void **state)
{
    (void)state;
    uint64_t v;
    assert_int_equal(kf_parse_duration_ms("250ms", &v), 0);
    assert_int_equal(v, 250);
    assert_int_equal(kf_parse_duration_ms("3h", &v), 0);
    assert_int_equal(v, 3 * 3600 * 1000);
    assert_int_equal(kf_parse_duration_ms("-1s", &v), -EINVAL);
    assert_int_equal(kf_parse_duration_ms("2d", &v), 0);
    assert_int_equal(v, 2 * 86400000ull);
    assert_int_equal(kf_parse_duration_ms("1w", &v), -EINVAL);
    assert_int_equal(kf_parse_duration_ms("99999999999999999999h", &v), -EINVAL);
}

/* audit.sinks (docs/audit.md): file and syslog sinks load, paths resolve against the config's
 * folder; a bad sink names its line. */
static void test_audit_sinks(void **state)
{
    (void)state;
    const char *path = write_file("k.yaml", GOOD "audit:\n  sinks:\n    - {type: file, path: audit.jsonl, required: true}\n"
                                               "    - {type: syslog}\n");
    kfd_config *cfg = NULL;
    kf_err err = {0};
    assert_int_equal(kfd_config_load(path, &cfg, &err), 0);
    assert_int_equal(cfg->audit.n_sinks, 2);
    assert_int_equal(cfg->audit.sinks[0].type, KFD_SINK_FILE);
    assert_true(cfg->audit.sinks[0].required);
    char want[300];
    snprintf(want, sizeof(want), "%s/audit.jsonl", tmpdir);
    assert_string_equal(cfg->audit.sinks[0].path, want);
    assert_int_equal(cfg->audit.sinks[1].type, KFD_SINK_SYSLOG);
    assert_false(cfg->audit.sinks[1].required);
    assert_string_equal(cfg->audit.sinks[1].path, "/dev/log");
    kfd_config_free(cfg);
    expect_error(GOOD "audit:\n  sinks:\n    - {type: kafka}\n", "10:7: sink type must be file or syslog");
    expect_error(GOOD "audit:\n  sinks:\n    - {type: file}\n", "10:7: a file sink needs path");
    expect_error(GOOD "audit:\n  sinks:\n    - {type: syslog, path: x}\n", "10:7: a syslog sink takes socket");
    expect_error(GOOD "audit:\n  sinks: x\n", "9:10: audit.sinks must be a list");
    expect_error(GOOD "audit:\n  sink: []\n", "9:3: unknown key 'sink' in audit");
}

#define AZURE(extra)                                                                                                   \
    GOOD "kms:\n  backend: azure-keyvault\n  azure:\n    key: kek-1\n" extra

/* One azure-keyvault config: its scope, login host and IMDS endpoint after loading. */
static void expect_azure(const char *extra, const char *scope, const char *login_host, const char *imds)
{
    const char *path = write_file("k.yaml", extra);
    kfd_config *cfg = NULL;
    kf_err err = {0};
    if (kfd_config_load(path, &cfg, &err) != 0)
        fail_msg("%s", err.msg);
    assert_string_equal(cfg->kms.scope, scope);
    if (login_host != NULL)
        assert_string_equal(cfg->kms.login_host, login_host);
    else
        assert_null(cfg->kms.login_host);
    if (imds != NULL)
        assert_string_equal(cfg->kms.imds_endpoint, imds);
    else
        assert_null(cfg->kms.imds_endpoint);
    kfd_config_free(cfg);
}

#define SECRET "    tenant: t\n    client_id: c\n    client_secret_file: s\n"

/* #23 items 7, 8 and 10: the scope and login host follow the vault's cloud and kind; identities
 * take only their options; Key Vault key names. */
static void test_azure_clouds_and_identities(void **state)
{
    (void)state;
    expect_azure(AZURE("    vault_url: https://kv1.vault.azure.net\n" SECRET), "https://vault.azure.net/.default",
                 "https://login.microsoftonline.com", NULL);
    expect_azure(AZURE("    vault_url: https://hsm1.managedhsm.azure.net\n" SECRET),
                 "https://managedhsm.azure.net/.default", "https://login.microsoftonline.com", NULL);
    expect_azure(AZURE("    vault_url: https://kv1.vault.usgovcloudapi.net\n" SECRET),
                 "https://vault.usgovcloudapi.net/.default", "https://login.microsoftonline.us", NULL);
    expect_azure(AZURE("    vault_url: https://hsm1.managedhsm.usgovcloudapi.net\n" SECRET),
                 "https://managedhsm.usgovcloudapi.net/.default", "https://login.microsoftonline.us", NULL);
    expect_azure(AZURE("    vault_url: https://kv1.vault.azure.cn\n" SECRET), "https://vault.azure.cn/.default",
                 "https://login.chinacloudapi.cn", NULL);
    expect_azure(AZURE("    vault_url: https://hsm1.managedhsm.azure.cn\n" SECRET),
                 "https://managedhsm.azure.cn/.default", "https://login.chinacloudapi.cn", NULL);
    /* explicit options win */
    expect_azure(AZURE("    vault_url: https://kv.example.com\n    scope: https://vault.azure.net/.default\n"
                       "    login_host: https://login.example\n" SECRET),
                 "https://vault.azure.net/.default", "https://login.example", NULL);
    expect_azure(AZURE("    vault_url: https://kv1.vault.azure.net\n    identity: managed\n"), "https://vault.azure.net/.default",
                 NULL, "http://169.254.169.254/metadata/identity/oauth2/token");
    expect_azure(AZURE("    vault_url: https://kv1.vault.azure.net\n    identity: managed\n    client_id: c\n"
                       "    imds_endpoint: https://127.0.0.1:9/metadata/identity/oauth2/token\n"),
                 "https://vault.azure.net/.default", NULL, "https://127.0.0.1:9/metadata/identity/oauth2/token");
    expect_azure(AZURE("    vault_url: https://kv1.vault.azure.net\n    identity: workload\n    tenant: t\n"
                       "    client_id: c\n    federated_token_file: /var/run/secrets/azure/tokens/azure-identity-token\n"),
                 "https://vault.azure.net/.default", "https://login.microsoftonline.com", NULL);

    /* a host that only looks like a vault's, or none of Azure's: no guessed audience */
    expect_error(AZURE("    vault_url: https://a.b.vault.azure.net\n" SECRET), "12:16: azure vault_url's host is not");
    expect_error(AZURE("    vault_url: https://vault.azure.net.evil.example\n" SECRET), "12:16: azure vault_url's host is not");
    /* what libcurl would read differently, or a kid would never match (review of #23) */
    expect_error(AZURE("    vault_url: https://kv1.vault.azure.net:443@evil.example\n" SECRET),
                 "12:16: azure vault_url must be an https:// URL");
    expect_error(AZURE("    vault_url: https://kv1.vault.azure.net:443\n" SECRET), "12:16: azure vault_url must be https://NAME");
    expect_error(AZURE("    vault_url: https://KV1.vault.azure.net\n" SECRET), "12:16: azure vault_url must be https://NAME");
    expect_error(AZURE("    vault_url: https://a%2eb.vault.azure.net\n" SECRET), "12:16: azure vault_url must be an https:// URL");
    /* a known vault gets only its own audience */
    expect_error(AZURE("    vault_url: https://kv1.vault.azure.net\n    scope: https://management.azure.com/.default\n" SECRET),
                 "13:12: azure scope https://management.azure.com/.default is not the token audience");
    expect_error(AZURE("    vault_url: https://kv1.vault.azure.net\n    scope: https://vault.azure.net\n" SECRET),
                 "13:12: azure scope must be an https:// resource followed by /.default");
    expect_error(AZURE("    vault_url: https://kv1.vault.azure.net\n    identity: msi\n"),
                 "13:15: azure identity must be client_secret, managed or workload");
    expect_error(AZURE("    vault_url: https://kv1.vault.azure.net\n    identity: managed\n    client_secret_file: s\n"),
                 "14:25: azure client_secret_file is not used with identity managed");
    expect_error(AZURE("    vault_url: https://kv1.vault.azure.net\n    identity: workload\n    tenant: t\n    client_id: c\n"),
                 "11:5: azure identity workload needs federated_token_file");
    expect_error(AZURE("    vault_url: https://kv1.vault.azure.net\n    client_id: c\n    client_secret_file: s\n"),
                 "11:5: azure identity client_secret needs tenant");
    expect_error(AZURE("    vault_url: https://kv1.vault.azure.net\n    identity: managed\n"
                       "    imds_endpoint: http://10.0.0.5/metadata/identity/oauth2/token\n"),
                 "14:20: azure imds_endpoint must be https://, or http:// to 169.254.169.254 or loopback");
    expect_error(GOOD "kms:\n  backend: azure-keyvault\n  azure:\n    key: kek_1\n    vault_url: https://kv1.vault.azure.net\n" SECRET,
                 "11:10: azure key must be 1..127 of [0-9a-zA-Z-]");
    expect_error(GOOD "kms:\n  backend: azure-keyvault\n  azure:\n    key: kek.1\n    vault_url: https://kv1.vault.azure.net\n" SECRET,
                 "11:10: azure key must be 1..127 of [0-9a-zA-Z-]");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_config_loads), cmocka_unit_test(test_unknown_key),
        cmocka_unit_test(test_relative_config_kek_dir),
        cmocka_unit_test(test_missing_key),       cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_malformed_yaml),    cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_duration_parser),   cmocka_unit_test(test_audit_sinks),
        cmocka_unit_test(test_azure_clouds_and_identities),
    };
    return cmocka_run_group_tests_name("config", tests, tmpdir_setup, tmpdir_teardown);
}
