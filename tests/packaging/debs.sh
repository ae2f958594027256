#!/usr/bin/env bash
# The Debian packages (debian/): built from this tree with `dpkg-buildpackage -b -us -uc`,
# lintian-clean (remaining tags are justified in debian/*.lintian-overrides), unpacked into a
# throwaway root where the units pass `systemd-analyze verify` at their installed paths and
# systemd-sysusers creates the keyfleet user; and `cmake --install` lays out the same files.
# Skips (exit 77) without debhelper or lintian (scripts/install-deps installs them), and on the
# sanitizer build (the packages are built the same way from either).
set -uo pipefail
SRC=${KF_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
BUILD=${KF_BUILD_DIR:-}
if [ "${KF_SANITIZED:-0}" = 1 ]; then echo "skip: sanitizer build (packaging is checked on the release build)"; exit 77; fi
for tool in dpkg-buildpackage dh lintian scdoc systemd-analyze; do
    command -v "$tool" >/dev/null || { echo "skip: $tool not installed (scripts/install-deps)"; exit 77; }
done

WORK=$(mktemp -d /tmp/kf-debs.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
fails=0
pass() { echo "ok - $1"; }
fail() { echo "not ok - $1"; [ $# -gt 1 ] && printf '%s\n' "$2" | sed 's/^/    /' | head -40; fails=$((fails + 1)); }
check() { # check NAME COMMAND...: passes when COMMAND exits 0
    local name=$1; shift
    local out; if out=$("$@" 2>&1); then pass "$name"; else fail "$name" "$out"; fi
}

# The tree as committed plus what is not yet (git's view: no build directories).
mkdir "$WORK/keyfleet"
(cd "$SRC" && git ls-files -z -co --exclude-standard | xargs -0 tar -cf - --no-recursion 2>/dev/null) |
    tar -xf - -C "$WORK/keyfleet"
if ! (cd "$WORK/keyfleet" && DEB_BUILD_OPTIONS="parallel=$(nproc) nocheck noautodbgsym" \
      dpkg-buildpackage -b -us -uc >"$WORK/build.log" 2>&1); then
    fail "dpkg-buildpackage -b -us -uc builds the packages" "$(tail -40 "$WORK/build.log")"
    exit 1
fi
pass "dpkg-buildpackage -b -us -uc builds the packages"
debs=("$WORK"/*.deb)
names=$(for d in "${debs[@]}"; do dpkg-deb -f "$d" Package; done | sort | paste -sd' ')
[ "$names" = "keyfleet-agent keyfleetctl keyfleetd" ] && pass "three packages: $names" ||
    fail "three packages: keyfleet-agent keyfleetctl keyfleetd" "got: $names"

# lintian: errors and warnings fail; overrides (debian/*.lintian-overrides) carry their reason.
out=$(lintian --fail-on error,warning --suppress-tags-from-file /dev/null "$WORK"/*.changes 2>&1)
rc=$?
[ $rc = 0 ] && pass "lintian: no error or warning" || fail "lintian: no error or warning" "$out"
for d in debian/*.lintian-overrides; do
    [ -e "$SRC/$d" ] || continue
    # every override line is preceded by a comment saying why
    awk '/^[^#[:space:]]/ && prev !~ /^#/ {bad=1; print FILENAME": "$0} {prev=$0} END {exit bad}' "$SRC/$d" >/dev/null ||
        fail "$d: each override has a comment above it"
done

# Unpacked into a throwaway root, as dpkg would place them (maintainer scripts do not run).
R=$WORK/root
mkdir -p "$R"
for d in "${debs[@]}"; do dpkg-deb -x "$d" "$R"; done
for f in usr/sbin/keyfleetd usr/sbin/keyfleet-agent usr/bin/keyfleetctl lib/systemd/system/keyfleetd.service \
         lib/systemd/system/keyfleet-unlock.service lib/systemd/system/keyfleet-watch.service \
         usr/lib/sysusers.d/keyfleet.conf usr/lib/keyfleet/keyscript \
         "usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH)/cryptsetup/libcryptsetup-token-keyfleet.so" \
         usr/share/initramfs-tools/hooks/keyfleet usr/share/initramfs-tools/scripts/local-top/keyfleet \
         usr/share/initramfs-tools/conf.d/keyfleet usr/lib/dracut/modules.d/90keyfleet/module-setup.sh \
         usr/share/man/man8/keyfleetd.8.gz usr/share/man/man8/keyfleet-agent.8.gz usr/share/man/man8/keyfleetctl.8.gz \
         usr/share/man/man5/keyfleetd.yaml.5.gz usr/share/man/man5/agent.yaml.5.gz usr/share/man/man5/keyfleet-policy.5.gz \
         usr/share/bash-completion/completions/keyfleetctl usr/share/bash-completion/completions/keyfleet-agent; do
    [ -e "$R/$f" ] || fail "the packages install /$f"
done
pass "the packages install the binaries, units, sysusers.d, hooks, dracut module, token plugin, man pages, completion"
for b in usr/sbin/keyfleetd usr/sbin/keyfleet-agent usr/bin/keyfleetctl; do
    v=$("$R/$b" --version 2>&1)
    [ "$v" = "$(basename $b) $(dpkg-parsechangelog -l "$SRC/debian/changelog" -S Version)" ] &&
        pass "/$b --version matches the package version" || fail "/$b --version matches the package version" "$v"
done
check "the units name the installed binaries" grep -q '^ExecStart=/usr/sbin/keyfleetd ' "$R/lib/systemd/system/keyfleetd.service"

# postinst: the user from sysusers.d; the units installed, neither enabled nor started.
post=$(dpkg-deb -I "$WORK"/keyfleetd_*.deb postinst 2>/dev/null)
case $post in *"systemd-sysusers "*" keyfleet.conf"*) pass "keyfleetd's postinst creates the user with systemd-sysusers" ;;
    *) fail "keyfleetd's postinst creates the user with systemd-sysusers" "$post" ;; esac
# dh_installsystemd --no-enable --no-start: no start, and enable only when the admin had enabled it.
if printf '%s\n' "$post" | grep -q 'deb-systemd-invoke' ||
   [ "$(printf '%s\n' "$post" | grep -c 'deb-systemd-helper enable')" != "$(printf '%s\n' "$post" | grep -c 'was-enabled')" ]; then
    fail "keyfleetd's postinst neither enables nor starts the unit" "$post"
else pass "keyfleetd's postinst neither enables nor starts the unit"; fi
mkdir -p "$R/etc"
if systemd-sysusers --root="$R" >/dev/null 2>&1 && grep -q '^keyfleet:x:[0-9]*:[0-9]*:.*:/var/lib/keyfleet:/usr/sbin/nologin$' "$R/etc/passwd"; then
    pass "systemd-sysusers --root makes the keyfleet system user from the packaged sysusers.d"
else fail "systemd-sysusers --root makes the keyfleet system user from the packaged sysusers.d" "$(cat "$R/etc/passwd" 2>&1)"; fi

# systemd-analyze verify on the installed units at their installed paths: a root holding the
# host's systemd units (their dependencies) and these packages.
mkdir -p "$R/usr/lib/systemd" "$R/etc/keyfleet" "$R/bin"
cp -an /lib/systemd/system "$R/usr/lib/systemd/"
cp /bin/kill "$R/bin/"   # keyfleetd.service's ExecReload: util-linux's, not in these packages
: >"$R/etc/keyfleet/agent.yaml"
out=$(MANPATH=$R/usr/share/man SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --root="$R" --man=yes \
      keyfleetd.service keyfleet-unlock.service keyfleet-watch.service 2>&1)
rc=$?
[ "$rc:$out" = "0:" ] && pass "systemd-analyze verify --root: the installed units, no warning, their man pages found" ||
    fail "systemd-analyze verify --root: the installed units, no warning, their man pages found" "$out"
rm "$R/usr/sbin/keyfleetd"
out=$(systemd-analyze verify --root="$R" --man=no keyfleetd.service 2>&1)
case $out in *"/usr/sbin/keyfleetd"*) pass "... and it fails when the binary is not where the unit says (the check has teeth)" ;;
    *) fail "... and it fails when the binary is not where the unit says (the check has teeth)" "$out" ;; esac

# cmake --install with the same prefix lays out the same files (Debian 12 puts units in /lib).
if [ -n "$BUILD" ] && [ -f "$BUILD/CMakeCache.txt" ]; then
    C=$WORK/cmake-root
    DESTDIR=$C cmake --install "$BUILD" --prefix /usr >/dev/null 2>&1
    pkg=$(for d in "${debs[@]}"; do dpkg-deb -c "$d"; done | awk '$1 !~ /^d/ {print $6}' | sed -e 's#^\./##' -e 's#^lib/#usr/lib/#' \
          -e 's#\.gz$##' | grep -v -e '^usr/share/doc/' -e '^usr/share/lintian/' | sort)
    cm=$(cd "$C" && find . -type f -o -type l | sed 's#^\./##' | grep -v '^usr/share/doc/' | sort)
    [ "$pkg" = "$cm" ] && pass "cmake --install --prefix /usr lays out the packages' files" ||
        fail "cmake --install --prefix /usr lays out the packages' files" "$(diff <(echo "$pkg") <(echo "$cm"))"
    check "... its units name /usr/sbin" grep -q '^ExecStart=/usr/sbin/keyfleetd ' "$C/usr/lib/systemd/system/keyfleetd.service"
    # The default prefix: the units name /usr/local/sbin, where the binaries are.
    L=$WORK/local-root
    DESTDIR=$L cmake --install "$BUILD" --prefix /usr/local >/dev/null 2>&1
    check "cmake --install --prefix /usr/local: keyfleetd.service runs /usr/local/sbin/keyfleetd, which is installed" \
        bash -c "grep -q '^ExecStart=/usr/local/sbin/keyfleetd ' '$L/usr/local/lib/systemd/system/keyfleetd.service' && [ -x '$L/usr/local/sbin/keyfleetd' ]"
    check "... keyfleet-unlock.service runs /usr/local/sbin/keyfleet-agent" \
        grep -q '^ExecStart=/usr/local/sbin/keyfleet-agent ' "$L/usr/local/lib/systemd/system/keyfleet-unlock.service"
    check "... the initramfs hook copies /usr/local/sbin/keyfleet-agent and /usr/local/lib/keyfleet/keyscript" \
        grep -q 'AGENT=${KEYFLEET_AGENT:-/usr/local/sbin/keyfleet-agent}' "$L/usr/local/share/initramfs-tools/hooks/keyfleet"
fi
[ $fails = 0 ] && echo "all passed" || echo "$fails failed"
[ $fails = 0 ]
