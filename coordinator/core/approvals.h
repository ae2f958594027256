/* Approval deadlines (approvals.c). */
#ifndef KFD_APPROVALS_H
#define KFD_APPROVALS_H

struct kfd_app;

/* Expires waiting requests past their deadline, on the leader; a no-op elsewhere. */
void kfd_approvals_expire(struct kfd_app *app);

#endif
