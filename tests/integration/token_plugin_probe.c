/* Drives libcryptsetup-token-keyfleet.so as libcryptsetup does, without installing it: dlopen,
 * dlvsym(..., "CRYPTSETUP_TOKEN_1.0"), then its entry points against a LUKS2 container in a
 * file (no device-mapper: a released key is checked with crypt_activate_by_passphrase and no
 * name). Each line of the plugin's crypt_log output is printed as "log LEVEL: MESSAGE".
 *   token_plugin_probe PLUGIN symbols
 *   token_plugin_probe PLUGIN open FILE          ("open ok len=N keyslot=K opens=yes" or "open r=-EXXX")
 *   token_plugin_probe PLUGIN validate FILE JSON ("validate r=N"; JSON is a file)
 *   token_plugin_probe PLUGIN dump FILE */
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libcryptsetup.h>

#define ABI CRYPT_TOKEN_ABI_VERSION1

static void log_line(int level, const char *msg, void *usrptr)
{
    (void)usrptr;
    const char *name = level == CRYPT_LOG_ERROR ? "error" : level == CRYPT_LOG_NORMAL ? "normal"
                       : level == CRYPT_LOG_VERBOSE                                   ? "verbose"
                                                                                      : NULL;
    if (name == NULL)
        return; /* libcryptsetup's own debug lines */
    size_t n = strlen(msg);
    printf("log %s: %.*s\n", name, (int)(n > 0 && msg[n - 1] == '\n' ? n - 1 : n), msg);
}

static const char *errname(int r)
{
    const char *s = r < 0 ? strerrorname_np(-r) : NULL;
    return s != NULL ? s : "?";
}

static int keyfleet_token(struct crypt_device *cd)
{
    for (int t = 0; t < 32; t++) {
        const char *type = NULL;
        crypt_token_info info = crypt_token_status(cd, t, &type);
        if (info != CRYPT_TOKEN_INACTIVE && info != CRYPT_TOKEN_INVALID && type != NULL && strcmp(type, "keyfleet") == 0)
            return t;
    }
    return -ENOENT;
}

static int symbols(void *h)
{
    static const char *const want[] = {CRYPT_TOKEN_ABI_OPEN, CRYPT_TOKEN_ABI_BUFFER_FREE, CRYPT_TOKEN_ABI_VALIDATE,
                                       CRYPT_TOKEN_ABI_DUMP, CRYPT_TOKEN_ABI_VERSION};
    int bad = 0;
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        int ok = dlvsym(h, want[i], ABI) != NULL;
        printf("symbol %s@%s %s\n", want[i], ABI, ok ? "present" : "MISSING");
        bad += !ok;
    }
    printf("symbol %s %s\n", CRYPT_TOKEN_ABI_OPEN_PIN, dlsym(h, CRYPT_TOKEN_ABI_OPEN_PIN) != NULL ? "present" : "absent");
    /* What the static libraries bring in stays local. */
    static const char *const hidden[] = {"kf_log", "kfa_release", "kfa_token_parse", "kf_secbuf_new", "kfa_config_load"};
    for (size_t i = 0; i < sizeof(hidden) / sizeof(hidden[0]); i++)
        printf("symbol %s %s\n", hidden[i], dlsym(h, hidden[i]) != NULL ? "exported" : "hidden");
    const char *(*version)(void) = (const char *(*)(void))dlvsym(h, CRYPT_TOKEN_ABI_VERSION, ABI);
    printf("version %s\n", version != NULL ? version() : "?");
    return bad;
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    char *buf = malloc(1 << 20);
    size_t n = buf != NULL ? fread(buf, 1, (1 << 20) - 1, f) : 0;
    fclose(f);
    if (buf != NULL)
        buf[n] = '\0';
    return buf;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: token_plugin_probe PLUGIN symbols|open FILE|validate FILE JSON|dump FILE\n");
        return 2;
    }
    /* NODELETE, as libcryptsetup keeps its plugins until its own exit-time unload: kf_hpke's
     * once-per-process OpenSSL fetches (3 ciphers, 1 MAC) then stay reachable at exit instead of
     * being reported as leaked by an unmapped plugin, and sanitizer reports name its frames. */
    void *h = dlopen(argv[1], RTLD_LAZY | RTLD_NODELETE);
    if (h == NULL) {
        fprintf(stderr, "dlopen: %s\n", dlerror());
        return 2;
    }
    if (strcmp(argv[2], "symbols") == 0) {
        int bad = symbols(h);
        dlclose(h);
        return bad != 0;
    }
    crypt_token_open_func open_fn = (crypt_token_open_func)dlvsym(h, CRYPT_TOKEN_ABI_OPEN, ABI);
    crypt_token_buffer_free_func free_fn = (crypt_token_buffer_free_func)dlvsym(h, CRYPT_TOKEN_ABI_BUFFER_FREE, ABI);
    crypt_token_validate_func validate_fn = (crypt_token_validate_func)dlvsym(h, CRYPT_TOKEN_ABI_VALIDATE, ABI);
    crypt_token_dump_func dump_fn = (crypt_token_dump_func)dlvsym(h, CRYPT_TOKEN_ABI_DUMP, ABI);
    struct crypt_device *cd = NULL;
    if (argc < 4 || open_fn == NULL || free_fn == NULL || validate_fn == NULL || dump_fn == NULL ||
        crypt_init(&cd, argv[3]) < 0 || crypt_load(cd, CRYPT_LUKS2, NULL) < 0) {
        fprintf(stderr, "cannot load the plugin's entry points or the LUKS2 file\n");
        return 2;
    }
    crypt_set_log_callback(cd, log_line, NULL);
    int rc = 0;
    int token = keyfleet_token(cd);
    if (strcmp(argv[2], "validate") == 0 && argc == 5) {
        char *json = read_file(argv[4]);
        int r = json != NULL ? validate_fn(cd, json) : -EIO;
        printf("validate r=%d\n", r);
        free(json);
    } else if (strcmp(argv[2], "dump") == 0) {
        const char *json = NULL;
        if (token < 0 || crypt_token_json_get(cd, token, &json) < 0) {
            printf("dump: no keyfleet token\n");
            rc = 1;
        } else {
            dump_fn(cd, json);
        }
    } else if (strcmp(argv[2], "open") == 0) {
        const char *json = NULL;
        char *key = NULL;
        size_t len = 0;
        int r = token < 0 ? token : crypt_token_json_get(cd, token, &json);
        /* As libcryptsetup: validate first, and a token that fails it is not opened. */
        if (r >= 0 && validate_fn(cd, json) != 0)
            r = -ENOENT;
        else if (r >= 0)
            r = open_fn(cd, token, &key, &len, NULL);
        if (r == 0) {
            int slot = crypt_activate_by_passphrase(cd, NULL, CRYPT_ANY_SLOT, key, len, 0);
            printf("open ok len=%zu keyslot=%d opens=%s\n", len, slot, slot >= 0 ? "yes" : "no");
            free_fn(key, len);
            rc = slot >= 0 ? 0 : 1;
        } else {
            printf("open r=-%s\n", errname(r));
            rc = 1;
        }
    } else {
        fprintf(stderr, "unknown command %s\n", argv[2]);
        rc = 2;
    }
    crypt_free(cd);
    dlclose(h);
    return rc;
}
