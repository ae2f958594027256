#include "kf_dlopen.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>

#include "kf_err.h"

static void reset_slots(va_list ap)
{
    void **slot;
    while ((slot = va_arg(ap, void **)) != NULL) {
        (void)va_arg(ap, const char *);
        *slot = NULL;
    }
}

int kf_dlopen_all(void **handle, const char *soname, kf_err *err, ...)
{
    if (*handle != NULL)
        return 0;
    void *h = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        const char *why = dlerror();
        return kf_err_set(err, -ENOENT, "cannot load %s: %s", soname, why != NULL ? why : "unknown error");
    }
    va_list ap;
    va_start(ap, err);
    void **slot;
    const char *missing = NULL;
    while (missing == NULL && (slot = va_arg(ap, void **)) != NULL) {
        const char *name = va_arg(ap, const char *);
        if ((*slot = dlsym(h, name)) == NULL)
            missing = name;
    }
    va_end(ap);
    if (missing == NULL) {
        *handle = h;
        return 0;
    }
    va_start(ap, err);
    reset_slots(ap);
    va_end(ap);
    dlclose(h);
    return kf_err_set(err, -ENOENT, "%s lacks %s: a newer version is needed", soname, missing);
}
