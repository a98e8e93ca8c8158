#!/usr/bin/env bash
# What several system tests need, made once by tests/system/run before they start side by side
# (so that they neither make it each nor race at it): the amd64 .debs of revisions 1 and 2
# (deb_install.sh, setup_boot.sh, systemd_boot.sh: common.bash's amd64_debs takes them from
# here when SYSTEM_TEST_DEBS names DIR). Not a test: run runs *.sh only.
#
#   prepare.bash DIR   the packages in DIR/1 and DIR/2
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=tests/system/common.bash
. tests/system/common.bash

dir=$1
rm -rf "$dir"
amd64_debs "$dir" 1 2
touch "$dir/1/made" "$dir/2/made"
