#include "kf_hostport.h"

#include <stdio.h>
#include <string.h>

bool kf_hostport_split(const char *s, char *host, size_t host_size, char *port, size_t port_size)
{
    const char *colon;
    size_t hlen;
    const char *h = s;
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (end == NULL || end[1] != ':')
            return false;
        h = s + 1;
        hlen = (size_t)(end - h);
        colon = end + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL)
            return false;
        hlen = (size_t)(colon - s);
    }
    size_t plen = strlen(colon + 1);
    if (hlen == 0 || hlen >= host_size || plen == 0 || plen >= port_size)
        return false;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    memcpy(port, colon + 1, plen + 1);
    return true;
}
