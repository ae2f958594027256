#ifndef KFD_PRIVILEGES_H
#define KFD_PRIVILEGES_H

#include "kf_err.h"

/* Switches to user (and its groups) for good. Call kf_process_harden() afterwards: changing
 * credentials resets the dumpable flag. */
int kfd_drop_privileges(const char *user, kf_err *err);

#endif
