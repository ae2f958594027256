/* Every RPC of keyfleet.v1, who may call it, and its handler (rpc_table.c); main binds the
 * table to the router. */
#ifndef KFD_RPC_TABLE_H
#define KFD_RPC_TABLE_H

#include <stddef.h>

#include "front/call.h"

extern const kfd_method kfd_methods[];
extern const size_t kfd_methods_count;

#endif
