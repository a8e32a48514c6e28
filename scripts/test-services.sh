#!/usr/bin/env bash
# Brings up what the test suite needs, where this machine lets it: a PostgreSQL server, and
# the Debian packages behind the acceptance tests (a real Alertmanager and amtool, a real
# Prometheus, Chromium for the status page). `make test` runs it before pytest.
#
# It never fails the build by itself: whatever is still missing afterwards, the tests name
# it loudly, and with CI=true they fail instead of skipping.
set -u

say() { printf 'test-services: %s\n' "$*"; }

pg_url=${ALERTQ_TEST_POSTGRES_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/postgres}
pg_hostport=${pg_url#*@}
pg_hostport=${pg_hostport%%/*}
pg_host=${pg_hostport%%:*}
pg_port=${pg_hostport##*:}
[ "$pg_port" = "$pg_hostport" ] && pg_port=5432

can_apt=false
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  can_apt=true
fi
apt_updated=false
apt_install() {
  $can_apt || { say "not root with apt: cannot install $*"; return 1; }
  if ! $apt_updated; then
    apt-get update -qq >/dev/null && apt_updated=true
  fi
  say "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pg_ready() { command -v pg_isready >/dev/null 2>&1 && pg_isready -h "$pg_host" -p "$pg_port" -q; }

# 1. PostgreSQL: start a local cluster that is installed but down; install one if none is.
if ! pg_ready && [ "$pg_host" = 127.0.0.1 -o "$pg_host" = localhost ]; then
  fresh=false
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    apt_install postgresql && fresh=true
  fi
  for version in $(ls /etc/postgresql 2>/dev/null); do
    hba=/etc/postgresql/$version/main/pg_hba.conf
    if $fresh && [ -f "$hba" ] && ! grep -q '^host all postgres 127.0.0.1/32 trust' "$hba"; then
      # A cluster installed just now, for tests only: let the test user in over loopback.
      sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
    fi
    say "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || true
  done
  for _ in $(seq 1 30); do pg_ready && break; sleep 1; done
fi
pg_ready || say "PostgreSQL at $pg_host:$pg_port is not answering"

# 2. Debian packages the acceptance tests run for real.
missing=()
[ -x /usr/bin/prometheus-alertmanager ] || missing+=(prometheus-alertmanager)
[ -x /usr/bin/prometheus ] || missing+=(prometheus)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}" || say "still missing: ${missing[*]}"
fi
# Installing the packages may start their own daemons on 9090/9093; the tests start theirs
# on free ports, so those are harmless.
exit 0
