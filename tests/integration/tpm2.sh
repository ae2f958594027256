#!/usr/bin/env bash
# The TPM2 fallback's sealing against a real software TPM (swtpm, started here): seal, then
# unseal; after PCR 7 is extended the unseal is refused with a clear message; a wrong TCTI fails
# clearly; every transient object and session is flushed.
. "$(dirname "$0")/lib.sh"

TPM_PROBE=$BUILD/tests/tpm_probe
start_swtpm "$WORK/tpm"
KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')

blob=$("$TPM_PROBE" "$TCTI" seal 7 "$KEY" 2>"$WORK/err")
expect_match "seal under PCR 7 (verified by unsealing)" "$blob" '^kftpm1:[A-Za-z0-9+/=]+$'
expect_eq "unseal gives the key back" "$("$TPM_PROBE" "$TCTI" unseal "$blob" 2>&1)" "$KEY"
transient=$(TPM2TOOLS_TCTI="$TCTI" tpm2_getcap handles-transient 2>/dev/null | grep -c 0x)
expect_eq "no transient objects are left in the TPM" "$transient" "0"
sessions=$(TPM2TOOLS_TCTI="$TCTI" tpm2_getcap handles-loaded-session 2>/dev/null | grep -c 0x)
expect_eq "no sessions are left in the TPM" "$sessions" "0"

TPM2TOOLS_TCTI="$TCTI" tpm2_pcrextend 7:sha256=$(printf '%064d' 1) >/dev/null 2>&1
out=$("$TPM_PROBE" "$TCTI" unseal "$blob" 2>&1)
expect_match "after PCR 7 is extended the unseal is refused, clearly" "$out" "PCR values changed since the key was sealed"
transient=$(TPM2TOOLS_TCTI="$TCTI" tpm2_getcap handles-transient 2>/dev/null | grep -c 0x)
expect_eq "... and nothing is left in the TPM after the failure" "$transient" "0"

out=$("$TPM_PROBE" "swtpm:host=127.0.0.1,port=1" unseal "$blob" 2>&1)
expect_match "a wrong TCTI fails clearly" "$out" "TPM: cannot open TCTI|TPM .*failed"
out=$("$TPM_PROBE" "$TCTI" unseal "kftpm1:AAAA" 2>&1)
expect_match "a corrupted blob is refused" "$out" "TPM blob: malformed"
finish
