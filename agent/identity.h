/* keyfleet-agent identity create: a TPM-resident node key and its certificate request. */
#ifndef KFA_IDENTITY_H
#define KFA_IDENTITY_H

#include "config.h"

int kfa_cmd_identity(const kfa_config *cfg, int argc, char **argv);

#endif
