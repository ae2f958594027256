/* The Connect unary router (router.c): checks in a fixed order, then the handler bound to the
 * route; GET /healthz, /readyz and /metrics. */
#ifndef KFD_ROUTER_H
#define KFD_ROUTER_H

#include <stddef.h>

#include <h2o.h>

#include "front/call.h"

struct kfd_server;

/* Serves methods[0..n) (main binds rpc_table.c's table; metrics rows follow its order). */
void kfd_router_bind(struct kfd_server *srv, const kfd_method *methods, size_t n);

/* Every request the server accepts. */
int kfd_router_on_req(struct kfd_server *srv, h2o_req_t *req);

#endif
