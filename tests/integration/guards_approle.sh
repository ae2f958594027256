#!/usr/bin/env bash
# AppRole Login guards, at their edges:
#   - bound CIDRs that end inside a byte (/12, /25): the last address inside logs in, the next
#     one is refused with the generic 401 (every 127.0.0.0/8 address is local, so curl
#     --interface picks the source);
#   - an expired secret id: 401, where the same role's fresh secret id logs in.
# tests/unit/test_cidr.c covers the same prefixes for IPv6 and policy rules.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
start_optional_auth_fleet "$F"

role() { # role NAME ARGS... -> role_id
    local name=$1
    shift
    ctl "$F" approle create "$name" "$@" >/dev/null
    ctl "$F" approle show "$name" | sed -n 's/^role_id: //p'
}
secret() { ctl "$F" approle secret-id "$1" | sed -n 's/^secret_id: //p'; }
GENERIC='^401 \{"code":"unauthenticated","message":"invalid role or secret ID"\}'

# /25: 127.0.0.0-127.0.0.127.
ID25=$(role net25 --node web-25 --cidr 127.0.0.0/25)
S25=$(secret net25)
expect_match "/25: the last address inside (127.0.0.127) logs in" "$(approle_login "$ID25" "$S25" --interface 127.0.0.127)" '^200 '
expect_match "/25: the next address (127.0.0.128) is refused" "$(approle_login "$ID25" "$S25" --interface 127.0.0.128)" "$GENERIC"
# /12: 127.0.0.0-127.15.255.255.
ID12=$(role net12 --node web-12 --cidr 127.0.0.0/12)
S12=$(secret net12)
expect_match "/12: the last address inside (127.15.255.254) logs in" "$(approle_login "$ID12" "$S12" --interface 127.15.255.254)" '^200 '
expect_match "/12: the first address outside (127.16.0.1) is refused" "$(approle_login "$ID12" "$S12" --interface 127.16.0.1)" "$GENERIC"
# A /12 that does not start at a byte boundary of the address: 127.16.0.0/12 is 127.16-127.31.
ID12B=$(role net12b --node web-13 --cidr 127.16.0.0/12)
S12B=$(secret net12b)
expect_match "/12 from 127.16: 127.31.255.254 logs in" "$(approle_login "$ID12B" "$S12B" --interface 127.31.255.254)" '^200 '
expect_match "/12 from 127.16: 127.32.0.1 is refused" "$(approle_login "$ID12B" "$S12B" --interface 127.32.0.1)" "$GENERIC"
expect_match "/12 from 127.16: 127.15.0.1 is refused" "$(approle_login "$ID12B" "$S12B" --interface 127.15.0.1)" "$GENERIC"
expect_match "the refusals are audited with their reason" "$(ctl "$F" audit)" \
    "auth_fail.*approle login: source address outside the role's bound CIDRs"

# Secret-id expiry: a role whose secret ids live 3 s.
IDT=$(role ttl --node web-t --secret-id-ttl 3s)
OLD=$(secret ttl)
OLD_AT=$(date +%s)
expect_match "control: a fresh secret id logs in" "$(approle_login "$IDT" "$OLD" --interface 127.0.0.5)" '^200 '
while [ "$(date +%s)" -le $((OLD_AT + 4)) ]; do sleep 0.5; done
expect_match "an expired secret id: 401, the generic error" "$(approle_login "$IDT" "$OLD" --interface 127.0.0.5)" "$GENERIC"
expect_match "control: a new secret id of the same role logs in" "$(approle_login "$IDT" "$(secret ttl)" --interface 127.0.0.5)" '^200 '
expect_match "the expired login is audited" "$(ctl "$F" audit)" "auth_fail.*approle ttl.*wrong, expired or spent secret id"

stop_kfd TERM
expect_eq "keyfleetd exits 0" "$KFD_EXIT" "0"
check_sanitizers
finish
