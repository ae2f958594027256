#!/usr/bin/env bash
# Callers without a valid fleet certificate, or without TLS 1.3, are refused during the
# handshake and never reach a handler; connections per source address are bounded.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
O=$WORK/other
fleet_init "$O" # a second fleet: its own CA
issue "$F" operator expired --days 1 --backdate 10 --allow-expired
start_kfd "$F"

refused() { ! curl -sS --max-time 5 --http2 --cacert "$F/ca.crt" "$@" "$URL/healthz" >/dev/null 2>&1; }
check "no client certificate: refused" refused
check "a certificate from another CA: refused" refused --cert "$O/operator.crt" --key "$O/operator.key"
check "an expired certificate: refused" refused --cert "$F/expired.crt" --key "$F/expired.key"
check "a TLS 1.2-only client (curl): refused" refused --tls-max 1.2 --cert "$F/operator.crt" --key "$F/operator.key"
s_client_out=$(timeout 10 openssl s_client -connect "127.0.0.1:$PORT" -tls1_2 -cert "$F/operator.crt" \
    -key "$F/operator.key" -CAfile "$F/ca.crt" </dev/null 2>&1)
expect_match "a TLS 1.2-only client (openssl s_client): handshake fails" "$s_client_out" "Cipher is \(NONE\)|alert protocol version|no protocols available"

log=$(cat "$F/keyfleetd.log")
expect_match "the expiry is logged" "$log" 'event=tls_client_rejected reason="certificate has expired"'
expect_match "the foreign CA is logged" "$log" 'event=tls_client_rejected reason="unable to get local issuer certificate"'
expect_match "the missing certificate is logged" "$log" 'event=tls_handshake_failed alert=116'

m=$(kcurl "$F" operator "$URL/metrics")
expect_match "refused handshakes are counted" "$m" 'keyfleet_tls_handshakes_total\{result="failed"\} [4-9]'
expect_match "authentication failures are counted" "$m" 'keyfleet_auth_failures_total [3-9]'
if printf '%s' "$m" | grep -q '^keyfleet_rpc_requests_total'; then
    not_ok "no refused caller reached a handler" "$(printf '%s' "$m" | grep '^keyfleet_rpc_requests_total')"
else
    ok "no refused caller reached a handler"
fi
issue "$F" node n1
rpc "$F" n1 AdminService/ListPending -H 'content-type: application/proto' --data-binary '' >/dev/null
audit=$(ctl "$F" audit --action auth_fail --json)
expect_match "audit: the expired certificate" "$audit" '"action":"auth_fail","actor":"expired",.*"reason":"client certificate rejected: certificate has expired"'
expect_match "audit: the foreign CA" "$audit" '"actor":"admin",.*"reason":"client certificate rejected: unable to get local issuer certificate"'
expect_match "audit: a node calling the operators' API" "$audit" '"actor":"n1","node":"n1".*"reason":"node may not call keyfleet.v1.AdminService/ListPending"'

stop_kfd TERM
expect_eq "keyfleetd exits 0" "$KFD_EXIT" "0"

# Per-source connection limit: two idle TLS connections use it up, the third is closed.
cat >>"$F/keyfleetd.yaml" <<'YAML'
limits:
  max_connections_per_source: 2
YAML
start_kfd "$F"
idle=()
for i in 1 2; do
    (sleep 8 | timeout 10 openssl s_client -quiet -connect "127.0.0.1:$PORT" -alpn h2 -cert "$F/operator.crt" \
        -key "$F/operator.key" -CAfile "$F/ca.crt") >/dev/null 2>&1 &
    idle+=($!)
done
# Wait until both idle connections are established and past their handshake.
for _ in $(seq 1 100); do
    [ "$(ss -Htn state established "( dport = :$PORT )" | wc -l)" -ge 2 ] && break
    sleep 0.05
done
sleep 0.3
check "a third connection from the same address is refused" refused --cert "$F/operator.crt" --key "$F/operator.key"
expect_match "the refusal is logged" "$(cat "$F/keyfleetd.log")" 'event=connection_rejected source=127.0.0.1 reason=per_source_limit'
for p in "${idle[@]}"; do kill "$p" 2>/dev/null; done
pkill -f "openssl s_client -quiet -connect 127.0.0.1:$PORT" 2>/dev/null
ok_after=0
for _ in $(seq 1 100); do
    if kcurl "$F" operator -o /dev/null "$URL/healthz" 2>/dev/null; then ok_after=1; break; fi
    sleep 0.05
done
expect_eq "connections are accepted again once the others close" "$ok_after" "1"
expect_match "rejected connections are counted" "$(metric "$F" 'keyfleet_connections_total\{result="rejected"\}')" '^[1-9]'
stop_kfd TERM
expect_eq "keyfleetd exits 0" "$KFD_EXIT" "0"
# Handshakes per source address (review rev26 R11): the bucket is taken at accept, before any TLS
# work, and outlives the connections (each handshake below closes before the next starts, which
# must not refill it). A burst of 5 from 127.0.0.5 (refilled at 1 a second): the handshakes past
# it are closed before the server says anything, while 127.0.0.6 is still served.
sed -i '/^limits:/,$d' "$F/keyfleetd.yaml"
cat >>"$F/keyfleetd.yaml" <<'YAML'
limits:
  handshakes_per_source: {burst: 5, per_second: 1}
YAML
start_kfd "$F"
handshakes() { # SOURCE N: handshakes from SOURCE, one after another; prints how many completed
    python3 - "$PORT" "$F" "$1" "$2" <<'PY'
import socket, ssl, sys
port, fleet, source, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
ctx = ssl.create_default_context(cafile=fleet + "/ca.crt")
ctx.check_hostname = False
ctx.load_cert_chain(fleet + "/operator.crt", fleet + "/operator.key")
ctx.set_alpn_protocols(["h2"])
done = 0
for _ in range(n):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as s:
            with ctx.wrap_socket(s) as t:
                done += 1
    except (OSError, ssl.SSLError):
        pass
print(done)
PY
}
got=$(handshakes 127.0.0.5 20)
# The burst, plus at most one refilled while the 20 ran.
check "20 handshakes at once from one address: the burst of 5 (or 6) complete, got $got" test "$got" -ge 5 -a "$got" -le 6
expect_eq "another address is still served" "$(handshakes 127.0.0.6 3)" "3"
log=$(cat "$F/keyfleetd.log")
expect_match "the refusal is logged, with the limit" "$log" \
    'event=connection_rejected source=127.0.0.5 reason=handshake_rate burst=5 per_second=1 suppressed=0'
expect_eq "... once a second, not once per connection" \
    "$(grep -c 'reason=handshake_rate' "$F/keyfleetd.log")" "1"
expect_match "the refusals are counted" "$(metric "$F" keyfleet_handshakes_rate_limited_total)" '^1[4-5]$'
sleep 2.2
expect_eq "the bucket refills: 2 more after 2 s" "$(handshakes 127.0.0.5 2)" "2"
stop_kfd TERM
expect_eq "keyfleetd exits 0" "$KFD_EXIT" "0"
check_sanitizers
finish
