#include "privileges.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <string.h>
#include <unistd.h>

int kfd_drop_privileges(const char *user, kf_err *err)
{
    errno = 0;
    struct passwd *pw = getpwnam(user);
    if (pw == NULL)
        return kf_err_set(err, errno ? -errno : -ENOENT, "user '%s' not found", user);
    if (getuid() == pw->pw_uid && geteuid() == pw->pw_uid)
        return 0;
    if (initgroups(pw->pw_name, pw->pw_gid) != 0 || setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0)
        return kf_err_set(err, -errno, "dropping to user '%s': %s", user, strerror(errno));
    /* Make sure there is no way back. */
    if (setuid(0) == 0)
        return kf_err_set(err, -EPERM, "dropping to user '%s': root could be regained", user);
    return 0;
}
