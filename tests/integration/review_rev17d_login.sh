#!/usr/bin/env bash
# Review rev17d, finding D1: the dispute withheld only a release's key. Any other answer the
# edited leader gives after its apply was still sent, and some carry a credential. Here: the
# running leader's `secret_ids` row of an AppRole role bound to node web-7 gets the SHA-256 of a
# secret id the writer knows (no key needed; the accessor stays). Login with it: the leader
# matches its edited hash, commits CmdLogin, and every follower applies it (the accessor exists
# there, so the token's hash is stored cluster-wide). The leader is disputed at that apply
# (data_version), but on_login_committed answered the token anyway, which then authenticates as
# web-7 at every replica. With one use left, the login deletes the edited row everywhere, so the
# states agree again, the round settles the leader and `audit verify` is ok (a first foreign commit
# is settled by a majority holding the same state; a second one is not, review_rev17d_noop).
# Expected (fixed): a disputed or diverged replica answers no command it applied (the answer is
# withheld centrally, cluster/replication.c), so the writer gets no token.
. "$(dirname "$0")/lib.sh"

F=$WORK/fleet
fleet_init "$F"
issue "$F" node n9
. "$(dirname "$0")/cluster_lib.sh"

start_cluster c 3
out=$(ctlx "$L" approle create web-role --node web-7 --cidr 127.0.0.1/32 --secret-id-uses 1 2>&1)
ROLE_ID=$(printf '%s\n' "$out" | sed -n 's/^role_id: //p')
expect_match "an AppRole role bound to web-7" "$ROLE_ID" "^[0-9a-f-]{36}$"
out=$(ctlx "$L" approle secret-id web-role --out "$WORK/legit.secret" 2>&1)
expect_match "its one-use secret id (the writer never sees it)" "$out" "accessor: [0-9a-f]{32}"
for n in c1 c2 c3; do signed_on "$n"; done

# The writer's own secret id, in keyfleet's format, and its SHA-256 in the leader's row.
EVIL="kfs.$(printf 'E%.0s' $(seq 1 43))"
HASH=$(printf '%s' "$EVIL" | sha256sum | cut -d' ' -f1)
sqlite3 -cmd ".timeout 5000" "$WORK/$L/state/keyfleet.db" \
    "UPDATE secret_ids SET secret_hash = X'$HASH' WHERE role_name = 'web-role'"
URL="https://${RPC[$L]}"
out=$(approle_login "$ROLE_ID" "$EVIL" --cert "$F/n9.crt" --key "$F/n9.key")
TOKEN=$(printf '%s' "$out" | grep -oE 'kft\.[0-9a-f]{16}\.[A-Za-z0-9_-]{43}' | head -1)
check "the edited leader answers no token for the writer's secret id ($(printf "%s" "$out" | head -c 60))" test -z "$TOKEN"
check "the edited leader saw the commit into its database" grep -q "event=audit_disputed" "$WORK/$L/keyfleetd.log"

# Whatever the answer was: once the dispute is over, a token (if any) must not authenticate.
for _ in $(seq 1 50); do
    nl=$(leader_seen_by c1) || true
    [ -n "$nl" ] && [[ "$(readyz "$nl")" == *" 200" ]] && break
    sleep 0.2
done
if [ -n "$TOKEN" ]; then
    TID=$(printf '%s' "$TOKEN" | cut -d. -f2)
    for n in c1 c2 c3; do
        [ "$n" = "$L" ] && continue
        echo "# $n holds the writer's token $TID: $(sqlite3 -readonly "$WORK/$n/state/keyfleet.db" \
            "SELECT count(*) FROM tokens WHERE token_id = '$TID'" 2>&1)"
    done
    URL="https://${RPC[$nl]}"
    out=$(curl -sS --max-time 5 --http2 --cacert "$F/ca.crt" --cert "$F/n9.crt" --key "$F/n9.key" \
        -H 'content-type: application/proto' -H "authorization: Bearer $TOKEN" --data-binary '' \
        -w ' %{http_code}' "$URL/keyfleet.v1.NodeService/Heartbeat" 2>&1)
    check "the writer's token does not authenticate as web-7 at the leader $nl after the round ($(printf "%s" "$out" | tail -c 60))" \
        test "${out: -3}" != "200"
fi
verdict=$(ctlx "$L" audit verify 2>&1)
echo "# audit verify against the edited $L (leader now ${nl:-none}): $(printf '%s' "$verdict" | tail -1 | head -c 240)"
stop_replicas c1 c2 c3
check_sanitizers
finish
