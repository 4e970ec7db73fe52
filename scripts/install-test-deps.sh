#!/bin/sh
# What the test suite needs beyond pip: Debian's chromium and its driver, for tests/test_browser.py
# (selenium drives them; without them that test skips and says so). A no-op when both are present;
# installs them with apt-get when run as root (a failed install fails); otherwise says what to run
# and exits 0 (the rest of the suite runs; the browser test skips).
set -eu

have() { command -v "$1" >/dev/null 2>&1; }
browser_present() { have chromium || have chromium-browser || have google-chrome; }
driver_present() { have chromedriver || [ -x /usr/lib/chromium/chromedriver ]; }

if browser_present && driver_present; then
    echo "install-test-deps: chromium and chromedriver are present"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: chromium and/or chromedriver missing; as root run:" >&2
    echo "    apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver" >&2
    echo "install-test-deps: (until then tests/test_browser.py skips)" >&2
    exit 0
fi
if ! have apt-get; then
    echo "install-test-deps: no apt-get here; install chromium and chromedriver with this system's packages" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends chromium chromium-driver
browser_present && driver_present
echo "install-test-deps: installed chromium and chromedriver"
