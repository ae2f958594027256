/* "host:port" and "[v6]:port", as the configs and the keyfleet-leader header write them. */
#ifndef KF_HOSTPORT_H
#define KF_HOSTPORT_H

#include <stdbool.h>
#include <stddef.h>

/* Splits s into host (brackets removed) and port; false when either part is missing or does
 * not fit. */
bool kf_hostport_split(const char *s, char *host, size_t host_size, char *port, size_t port_size);

#endif
