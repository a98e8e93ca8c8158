#!/usr/bin/env bash
# A real browser at the portal: Debian's headless Chromium, driven through chromedriver's
# WebDriver HTTP API with plain curl, runs inside the client's network namespace of a
#
#   client (10.66.0.2) ── lan0 [gateway] wan0 ── upstream (10.99.0.2, .3 and .4, port 80)
#
# testbed (as in scripts/demo, local codes). It opens a page on the "internet" and is sent to
# the portal, types a code, submits and lands on "You are online"; then a page on the internet
# loads for real. A second run with JavaScript switched off in the browser does the
# same with a second code: the form posts without any script. A third run is a Spanish phone
# (Accept-Language es-MX) 360 px wide: the portal speaks Spanish, carries the provider's name,
# logo and colours from the config, switches to French by its language link (and keeps it), shows
# the terms, and its status page after the login is French and updates itself; nothing is wider
# than the screen, also at 320 px. Screenshots of the code form and of the success page are
# kept in artifacts/browser/ (portal-form.png, portal-success.png, portal-success-nojs.png,
# portal-form-es-360.png, portal-success-fr-360.png).
#
# Needs root, nftables, iproute2, and the packages chromium and chromium-driver
# (scripts/install-deps). Where one is missing it says so and passes, except under CI=true,
# where it fails. Binaries come from target/debug (built by scripts/test). Traffic stays in the
# namespaces made here; all of them, and every process started, are removed on exit.
# shellcheck source=tests/system/netns.bash
. "$(dirname "$0")/netns.bash"

[ "$(id -u)" = 0 ] || unavailable "needs root (network namespaces, nftables)"
for tool in ip nft curl jq base64; do
  command -v "$tool" >/dev/null 2>&1 || unavailable "$tool is not installed (bash scripts/install-deps)"
done
CHROMIUM=$(command -v chromium || true)
CHROMEDRIVER=$(command -v chromedriver || true)
[ -n "$CHROMIUM" ] || unavailable "chromium is not installed (bash scripts/install-deps)"
[ -n "$CHROMEDRIVER" ] || unavailable "chromedriver is not installed (package chromium-driver; bash scripts/install-deps)"
for bin in edgeshare-gateway edgeshare-standin; do
  [ -x "$BIN_DIR/$bin" ] || fail "$BIN_DIR/$bin is missing: run cargo build --workspace --bins first"
done
BIN=$(cd "$BIN_DIR" && pwd)
OUT=$ARTIFACTS/browser
mkdir -p "$OUT"
rm -f "$OUT"/*.png

ID=$$
MAC=$NETNS_CLIENT_MAC
PORTAL=http://10.66.0.1:8080/
WORK=$(mktemp -d)
chmod 755 "$WORK"
SID=
# The browser runs in the client's namespace (a phone) until the provider's dashboard, which
# it opens from the gateway's own (the provider on the Pi).
WD=http://127.0.0.1:9515
WD_NS=
DASHBOARD=http://127.0.0.1:8090/
DASHBOARD_PASSWORD="browser test password $ID"
FIGURES=$OUT/figures.txt
: >"$FIGURES"

# Every process this test starts runs in one of its namespaces; netns_cleanup ends them (the
# recorded ones, then whatever else still runs there, such as Chromium's children started by
# chromedriver), each by its PID, and deletes the namespaces. Before that, if the test failed,
# what the browser showed; after it, the client's resolver file and the files.
failure_screenshot() {
  if [ "$1" != 0 ] && [ -n "${SID:-}" ]; then
    ip netns exec "$WD_NS" curl -sS -m 10 "$WD/session/$SID/screenshot" 2>/dev/null |
      jq -r '.value' 2>/dev/null | base64 -d >"$OUT/failure.png" 2>/dev/null
  fi
}
remove_files() {
  [ -z "$NS_C" ] || rm -rf "/etc/netns/$NS_C"
  rmdir /etc/netns 2>/dev/null
  cp "$WORK"/*.log "$OUT"/ 2>/dev/null
  rm -rf "$WORK"
}
netns_exit_traps failure_screenshot remove_files
trap 'echo "browser: interrupted" >&2; exit 130' INT TERM

netns_testbed br
WD_NS=$NS_C
# The client's resolver is the gateway (which runs none): names the browser may look up go
# nowhere, and never to the host's own resolver.
mkdir -p "/etc/netns/$NS_C"
echo "nameserver 10.66.0.1" >"/etc/netns/$NS_C/resolv.conf"

# "The internet": a stand-in on port 80 of 10.99.0.3 and 10.99.0.4 (its /__standin/state page
# is plain JSON).
in_ns "$NS_U" ip addr add 10.99.0.4/24 dev u0
netns_start_standin "$NS_U" "$WORK/internet" "$BIN/edgeshare-standin" --listen 0.0.0.0:80

netns_gateway_config "$WORK/gateway.toml" "$WORK/state" "$WORK/gateway.sock" "es_br_$ID" local
# The provider's look: a name, an SVG logo, a colour and terms.
BRAND="Café Sol"
cat >"$WORK/logo.svg" <<'SVG'
<svg xmlns="http://www.w3.org/2000/svg" width="96" height="48" viewBox="0 0 96 48"><circle cx="24" cy="24" r="20" fill="#ffd23f"/><text x="50" y="32" font-size="20" fill="#fff">Sol</text></svg>
SVG
chmod 644 "$WORK/logo.svg"
# No catalogues of the host's own (/etc/edgeshare/locales): the built-in languages.
sed -i "s|^\\[portal\\]\$|[portal]\\nlocales_dir = \"$WORK/locales\"\\nssid = \"Café Sol; guests\"|" "$WORK/gateway.toml"
cat >>"$WORK/gateway.toml" <<TOML
[portal.brand]
name = "$BRAND"
logo = "$WORK/logo.svg"
terms = """
Be fair to others.

No spam, no attacks on other networks."""
[portal.brand.colors]
accent = "#b3261e"

[dashboard]
listen = "127.0.0.1:8090"
TOML
export EDGESHARE_DASHBOARD__PASSWORD="$DASHBOARD_PASSWORD"
GW=("$BIN/edgeshare-gateway" --config "$WORK/gateway.toml")
netns_start_gateway "$WORK/gateway.sock" "$WORK/gateway.log" "${GW[@]}"

mapfile -t CODES < <(in_ns "$NS_G" "${GW[@]}" codes create --mb 50 --hours 1 --count 3)
[ "${#CODES[@]}" = 3 ] || fail "codes create printed ${#CODES[@]} codes"

# chromedriver on the client's loopback; it starts Chromium in the same namespace.
ip netns exec "$NS_C" "$CHROMEDRIVER" --port=9515 --log-path="$WORK/chromedriver.log" >/dev/null 2>&1 &
netns_track_pid $!
for _ in $(seq 1 100); do
  in_ns "$NS_C" curl -sf -m 2 "$WD/status" 2>/dev/null | jq -e '.value.ready' >/dev/null 2>&1 && break
  sleep 0.1
done
in_ns "$NS_C" curl -sf -m 2 "$WD/status" | jq -e '.value.ready' >/dev/null ||
  fail "chromedriver did not get ready within 10 s"

# wd METHOD PATH [JSON]: one WebDriver call; prints the reply's "value", fails on an error.
wd() {
  local method=$1 path=$2 body=${3:-} reply
  local args=(-sS -m 60 -X "$method" "$WD$path")
  [ -n "$body" ] && args+=(-H 'content-type: application/json' -d "$body")
  reply=$(in_ns "$WD_NS" curl "${args[@]}") || fail "WebDriver $method $path: no reply"
  if echo "$reply" | jq -e '.value | type == "object" and has("error")' >/dev/null 2>&1; then
    fail "WebDriver $method $path: $(echo "$reply" | jq -c '.value | {error, message}')"
  fi
  echo "$reply" | jq -c '.value'
}
ELEMENT_KEY=element-6066-11e4-a52e-4f735466cecf
# el CSS: the element's WebDriver id.
el() { wd POST "/session/$SID/element" "$(jq -nc --arg v "$1" '{using: "css selector", value: $v}')" | jq -r --arg k "$ELEMENT_KEY" '.[$k]'; }
text_of() { wd GET "/session/$SID/element/$(el "$1")/text" | jq -r .; }
current_url() { wd GET "/session/$SID/url" | jq -r .; }
go() { wd POST "/session/$SID/url" "$(jq -nc --arg u "$1" '{url: $u}')" >/dev/null; }
screenshot() { wd GET "/session/$SID/screenshot" | jq -r . | base64 -d >"$1"; }

# run_js SCRIPT: the value the script returns (WebDriver runs it past the page's CSP).
run_js() { wd POST "/session/$SID/execute/sync" "$(jq -nc --arg s "$1" '{script: $s, args: []}')"; }

# measure NAME: the page just loaded: the bytes it transferred (the page, and what it loaded:
# headers included) in how many requests, and Chromium's first contentful paint; printed and
# added to $FIGURES.
measure() {
  local figures
  figures=$(run_js 'const nav = performance.getEntriesByType("navigation")[0];
    const res = performance.getEntriesByType("resource");
    const fcp = performance.getEntriesByName("first-contentful-paint")[0];
    return {bytes: nav.transferSize + res.reduce((s, r) => s + r.transferSize, 0),
            html: nav.transferSize, requests: 1 + res.length,
            fcp_ms: fcp ? Math.round(fcp.startTime) : null};')
  echo "$figures" | jq -e '.bytes > 0 and .fcp_ms != null' >/dev/null ||
    fail "$1: no transfer size or first paint measured: $figures"
  echo "$1: $(echo "$figures" | jq -r '"\(.bytes) bytes in \(.requests) request(s) (the page \(.html)), first contentful paint \(.fcp_ms) ms"')" |
    tee -a "$FIGURES"
}

# new_session JAVASCRIPT(true|false) [WIDTH HEIGHT ACCEPT-LANGUAGE]: a fresh profile each time;
# a phone 412×860 speaking English unless told otherwise.
new_session() {
  local profile caps
  profile=$(mktemp -d "$WORK/profile.XXXX")
  caps=$(jq -nc --arg bin "$CHROMIUM" --arg profile "$profile" --argjson js "$1" \
    --argjson width "${2:-412}" --argjson height "${3:-860}" --arg lang "${4:-en-US,en}" '{
    capabilities: {alwaysMatch: {
      browserName: "chrome",
      pageLoadStrategy: "normal",
      timeouts: {pageLoad: 20000, script: 10000, implicit: 0},
      "goog:chromeOptions": ({
        binary: $bin,
        args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
               "--user-data-dir=\($profile)", "--window-size=500,860",
               "--lang=\($lang | split(",")[0])", "--accept-lang=\($lang)"],
        prefs: ({"intl.accept_languages": $lang}
          + (if $js then {} else {"profile.managed_default_content_settings.javascript": 2} end))
      }
      # A phone-sized page for the screenshots. Not with JavaScript off: chromedriver 156 then
      # never completes a click (its emulated tap waits for ever).
      + (if $js then {mobileEmulation: {deviceMetrics: {width: $width, height: $height, pixelRatio: 1}}} else {} end))
    }}
  }')
  SID=$(wd POST /session "$caps" | jq -r .sessionId)
  if [ -z "$SID" ] || [ "$SID" = null ]; then fail "no WebDriver session"; fi
}

# login CODE SHOT [FORM-SHOT]: from a page on the internet to the portal, the code typed
# (the filled-in form kept as FORM-SHOT) and submitted, the success page checked and kept as
# SHOT; then the internet page again, loaded for real.
login() {
  local code=$1 shot=$2 url heading source
  go "http://10.99.0.3/__standin/state"
  url=$(current_url)
  [ "$url" = "$PORTAL" ] || fail "a captive browser opening the internet should land on $PORTAL, got $url"
  [ "$(text_of h1)" = "Get online" ] || fail "portal form heading: $(text_of h1)"
  # The form the way a person meets it: http://10.66.0.1:8080/ typed in.
  go "$PORTAL"
  [ -n "${PORTAL_MEASURED:-}" ] || measure "portal form (phone, captive)"
  PORTAL_MEASURED=1
  [ "$(wd GET "/session/$SID/title" | jq -r .)" = "Get online · $BRAND" ] || fail "form title"
  [ "$(text_of 'label[for=code]')" = "Access code" ] || fail "label of the code input"
  wd POST "/session/$SID/element/$(el 'input#code[name=code]')/value" \
    "$(jq -nc --arg t "$code" '{text: $t}')" >/dev/null
  [ -z "${3:-}" ] || screenshot "$3"
  wd POST "/session/$SID/element/$(el 'form[action="/login"] button[type=submit]')/click" '{}' >/dev/null
  for _ in $(seq 1 100); do
    heading=$(in_ns "$WD_NS" curl -sS -m 5 -X POST -H 'content-type: application/json' \
      -d '{"using":"css selector","value":"h1"}' "$WD/session/$SID/element" |
      jq -r --arg k "$ELEMENT_KEY" '.value[$k] // empty')
    [ -n "$heading" ] && [ "$(wd GET "/session/$SID/element/$heading/text" | jq -r .)" = "You are online" ] && break
    sleep 0.1
  done
  [ "$(text_of h1)" = "You are online" ] || fail "after submitting: $(text_of main)"
  [ "$(current_url)" = "${PORTAL}login" ] || fail "success page URL: $(current_url)"
  text_of '[role=status]' | grep -qx "Your code was accepted. You can use the internet now." ||
    fail "no acceptance message: $(text_of main)"
  text_of dl | tr '\n' ' ' | grep -Eq "^Data left (50|49) MB Time left (5[5-9] min|1 h) $" ||
    fail "data and time left: $(text_of dl | tr '\n' ' ')"
  screenshot "$shot"
  # Online now: pages on the internet load for real, also on the host the browser opened
  # while captive (the portal closed that redirected connection, so a new one is made).
  local host
  for host in 10.99.0.4 10.99.0.3; do
    go "http://$host/__standin/state"
    [ "$(current_url)" = "http://$host/__standin/state" ] || fail "online, but sent to $(current_url)"
    source=$(wd GET "/session/$SID/source" | jq -r .)
    if ! grep -q '"codes"' <<<"$source" || grep -q "$BRAND" <<<"$source"; then
      fail "the internet page on $host did not load: $source"
    fi
  done
}

png_ok() { # FILE: a PNG, and not an empty one
  [ "$(head -c 8 "$1" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "$1 is not a PNG"
  [ "$(stat -c %s "$1")" -gt 2000 ] || fail "$1 is suspiciously small"
}

# submit_code HEADING WHAT: submits the portal's code form and waits up to 10 s for the page
# headed HEADING; fails with WHAT and the page's text if it does not come.
submit_code() {
  wd POST "/session/$SID/element/$(el 'form[action="/login"] button[type=submit]')/click" '{}' >/dev/null
  for _ in $(seq 1 100); do
    [ "$(run_js 'return document.querySelector("h1") ? document.querySelector("h1").textContent : ""' | jq -r .)" = "$1" ] && break
    sleep 0.1
  done
  [ "$(text_of h1)" = "$1" ] || fail "$2: $(text_of main)"
}

echo "browser: Chromium $("$CHROMIUM" --version 2>/dev/null | awk '{print $2}') in $NS_C, portal $PORTAL"
new_session true
login "${CODES[0]}" "$OUT/portal-success.png" "$OUT/portal-form.png"
png_ok "$OUT/portal-form.png"
png_ok "$OUT/portal-success.png"
wd DELETE "/session/$SID" >/dev/null
clients=$(in_ns "$NS_G" "${GW[@]}" clients --json)
echo "$clients" | jq -e --arg code "${CODES[0]}" --arg mac "$MAC" \
  '[.[] | select(.code == $code) | .devices[].client | select(.mac == $mac and .ip == "10.66.0.2")] | length == 1' \
  >/dev/null || fail "the gateway does not list the client online: $clients"
echo "browser: logged in with JavaScript on; screenshots in $OUT"

# Log the device out, then the same with JavaScript off in the browser.
in_ns "$NS_G" "${GW[@]}" kick "$MAC" >/dev/null
new_session false
go 'data:text/html,<title>js-off</title><script>document.title="js-on"</script>'
[ "$(wd GET "/session/$SID/title" | jq -r .)" = js-off ] || fail "JavaScript is not off in the no-JS browser"
login "${CODES[1]}" "$OUT/portal-success-nojs.png"
png_ok "$OUT/portal-success-nojs.png"
wd DELETE "/session/$SID" >/dev/null
echo "browser: logged in with JavaScript off"

# fits: nothing on the page is wider than the screen (no sideways scrolling).
fits() {
  [ "$(run_js 'return document.documentElement.scrollWidth <= window.innerWidth')" = true ] ||
    fail "$1 is wider than the screen: $(run_js 'return [document.documentElement.scrollWidth, window.innerWidth]')"
}

# A Spanish phone, 360×640: the provider's portal in Spanish, then French by its link.
in_ns "$NS_G" "${GW[@]}" kick "$MAC" >/dev/null
new_session true 360 640 es-MX,es
go "$PORTAL"
[ "$(text_of h1)" = "Conéctate" ] || fail "a Spanish browser got the heading: $(text_of h1)"
el 'html[lang=es]' >/dev/null
[ "$(text_of header)" = "$BRAND" ] || fail "the provider's name: $(text_of header)"
[ "$(run_js 'return document.querySelector("header img").naturalWidth')" -gt 0 ] ||
  fail "the provider's logo did not load"
[ "$(run_js 'return getComputedStyle(document.querySelector("button")).backgroundColor')" = '"rgb(179, 38, 30)"' ] ||
  fail "the button is not in the provider's colour"
fits "the Spanish form at 360 px"
screenshot "$OUT/portal-form-es-360.png"
png_ok "$OUT/portal-form-es-360.png"
wd POST "/session/$SID/element/$(el 'a[hreflang=fr]')/click" '{}' >/dev/null
[ "$(text_of h1)" = "Se connecter" ] || fail "after the French link: $(text_of h1)"
go "$PORTAL"
[ "$(text_of h1)" = "Se connecter" ] || fail "the French choice was not kept: $(text_of h1)"
wd POST "/session/$SID/element/$(el 'a[href="/terms"]')/click" '{}' >/dev/null
[ "$(text_of h1)" = "Conditions d'utilisation" ] || fail "terms page: $(text_of h1)"
text_of main | grep -q "No spam, no attacks on other networks." || fail "terms text: $(text_of main)"
go "$PORTAL"
wd POST "/session/$SID/element/$(el 'input#code')/value" "$(jq -nc --arg t "${CODES[2]}" '{text: $t}')" >/dev/null
submit_code "Vous êtes connecté" "French success page"
# The codes were made a few minutes ago (more on a busy machine): their hour has begun.
text_of dl | tr '\n' ' ' | grep -Eq "^Données restantes (50|49) Mo Temps restant (5[5-9] min|1 h) $" ||
  fail "French data and time left: $(text_of dl | tr '\n' ' ')"
[ "$(run_js 'return document.querySelector("meta[http-equiv=refresh]").content')" = '"60;url=/status"' ] ||
  fail "the status page does not update itself"
fits "the French status page at 360 px"
screenshot "$OUT/portal-success-fr-360.png"
png_ok "$OUT/portal-success-fr-360.png"
wd DELETE "/session/$SID" >/dev/null

# The narrowest phones: 320 px.
new_session true 320 568 fr
go "${PORTAL}status"
fits "the status page at 320 px"
in_ns "$NS_G" "${GW[@]}" kick "$MAC" >/dev/null
go "$PORTAL"
[ "$(text_of h1)" = "Se connecter" ] || fail "a French browser got the heading: $(text_of h1)"
fits "the form at 320 px"
wd DELETE "/session/$SID" >/dev/null
echo "browser: Spanish and French, the provider's look, 360 and 320 px"

# Printed vouchers: the sheet renders (and prints to PDF), and a voucher's portal QR code's
# link opens the form with its code filled in, which logs a captive phone in.
mapfile -t VOUCHERS < <(in_ns "$NS_G" "${GW[@]}" codes create --mb 500 --hours 24 --count 4 --print "$OUT/vouchers.html")
[ "${#VOUCHERS[@]}" = 4 ] || fail "codes create --print printed ${#VOUCHERS[@]} codes"
[ "$(grep -c '<section class="card">' "$OUT/vouchers.html")" = 4 ] || fail "the sheet has not 4 cards"
[ "$(grep -o '<svg' "$OUT/vouchers.html" | wc -l)" = 8 ] || fail "the sheet has not 2 QR codes per card"
chmod 644 "$OUT/vouchers.html"
SHEET="$(cd "$OUT" && pwd)/vouchers.html"
new_session true 820 1160
go "file://$SHEET"
[ "$(run_js 'return document.querySelectorAll(".card").length')" = 4 ] || fail "the sheet in Chromium"
text_of body | grep -q "Café Sol; guests" || fail "the sheet does not name the Wi-Fi"
screenshot "$OUT/vouchers.png"
png_ok "$OUT/vouchers.png"
wd DELETE "/session/$SID" >/dev/null
in_ns "$NS_C" "$CHROMIUM" --headless --no-sandbox --disable-gpu --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$(mktemp -d "$WORK/profile.XXXX")" --no-pdf-header-footer \
  --print-to-pdf="${SHEET%.html}.pdf" "file://$SHEET" >/dev/null 2>&1 ||
  fail "Chromium could not print the sheet"
[ "$(head -c 4 "$OUT/vouchers.pdf")" = "%PDF" ] || fail "vouchers.pdf is not a PDF"
# Captive again (the 320 px check left it logged out): the phone scans the voucher.
new_session true
go "${PORTAL}?code=${VOUCHERS[0]}"
[ "$(run_js 'return document.querySelector("input#code").value' | jq -r .)" = "${VOUCHERS[0]}" ] ||
  fail "the voucher's link did not fill the code in"
submit_code "You are online" "logging in from a voucher's link"
wd DELETE "/session/$SID" >/dev/null
echo "browser: vouchers in $OUT/vouchers.html, .png and .pdf; a voucher's link logged a phone in"
# The provider's dashboard, from the gateway itself (it listens on its loopback only), with
# the phone online and downloading so the live rates move.
# The uplink shaped to 2 Mbit/s (curl's own --limit-rate stalls once the socket buffers fill).
in_ns "$NS_U" tc qdisc add dev u0 root tbf rate 2mbit burst 32kbit latency 400ms
in_ns "$NS_C" curl -s -o /dev/null -m 60 http://10.99.0.3/__standin/download/40000000 &
DOWNLOAD_PID=$!
netns_track_pid "$DOWNLOAD_PID"
if in_ns "$NS_C" curl -s -m 2 -o /dev/null "http://10.66.0.1:8090/"; then
  fail "the dashboard answered a LAN device"
fi
ip netns exec "$NS_G" "$CHROMEDRIVER" --port=9516 --log-path="$WORK/chromedriver-gw.log" >/dev/null 2>&1 &
netns_track_pid $!
WD=http://127.0.0.1:9516
WD_NS=$NS_G
for _ in $(seq 1 100); do
  in_ns "$NS_G" curl -sf -m 2 "$WD/status" 2>/dev/null | jq -e '.value.ready' >/dev/null 2>&1 && break
  sleep 0.1
done
new_session true 1280 900
go "$DASHBOARD"
[ "$(current_url)" = "${DASHBOARD}login" ] || fail "not logged in, the dashboard should ask for the password: $(current_url)"
measure "dashboard login page (desktop)"
wd POST "/session/$SID/element/$(el 'input#password')/value" "$(jq -nc --arg t "wrong password" '{text: $t}')" >/dev/null
wd POST "/session/$SID/element/$(el 'form[action=login] button')/click" '{}' >/dev/null
text_of '[role=alert]' | grep -q "Wrong password." || fail "a wrong password: $(text_of main)"
wd POST "/session/$SID/element/$(el 'input#password')/value" "$(jq -nc --arg t "$DASHBOARD_PASSWORD" '{text: $t}')" >/dev/null
wd POST "/session/$SID/element/$(el 'form[action=login] button')/click" '{}' >/dev/null
[ "$(text_of h1)" = "$BRAND · dashboard" ] || fail "after logging in: $(text_of body | head -5)"
measure "dashboard overview (desktop)"
[ "$(text_of '#online')" = 1 ] || fail "the dashboard does not show the phone online: $(text_of '#devices')"
text_of '#devices' | grep -q "$MAC" || fail "the phone's MAC is not in the devices table"
[ "$(run_js 'return document.querySelectorAll("svg.chart rect").length')" = 31 ] ||
  fail "the usage charts have not 24 + 7 bars"
# live.js replaces the devices table's rows within its 2-second round.
run_js 'document.querySelector("#devices tr").dataset.stale = "1"; return true' >/dev/null
sleep 2.5
[ "$(run_js 'return document.querySelectorAll("#devices tr[data-stale]").length')" = 0 ] ||
  fail "the devices table did not refresh itself"
text_of '#devices' | grep -Eq '[0-9.]+ KiB/s' || fail "no live rate while the phone downloads: $(text_of '#devices')"
# Two codes made from the form.
wd POST "/session/$SID/element/$(el 'input[name=mb]')/clear" '{}' >/dev/null
wd POST "/session/$SID/element/$(el 'input[name=mb]')/value" '{"text": "250"}' >/dev/null
wd POST "/session/$SID/element/$(el 'input[name=count]')/clear" '{}' >/dev/null
wd POST "/session/$SID/element/$(el 'input[name=count]')/value" '{"text": "2"}' >/dev/null
wd POST "/session/$SID/element/$(el 'form[action=codes] button')/click" '{}' >/dev/null
text_of '[role=status]' | grep -q "Made 2 code(s)" || fail "making codes: $(text_of main | head -5)"
screenshot "$OUT/dashboard.png"
png_ok "$OUT/dashboard.png"
go "$(run_js 'return document.querySelector("[role=status] a").href' | jq -r .)"
[ "$(run_js 'return document.querySelectorAll(".card").length')" = 2 ] || fail "the new codes' vouchers"
screenshot "$OUT/dashboard-vouchers.png"
png_ok "$OUT/dashboard-vouchers.png"
wd DELETE "/session/$SID" >/dev/null
# On a phone (the provider's own, through a tunnel): nothing wider than the screen.
new_session true 412 860
go "$DASHBOARD"
wd POST "/session/$SID/element/$(el 'input#password')/value" "$(jq -nc --arg t "$DASHBOARD_PASSWORD" '{text: $t}')" >/dev/null
wd POST "/session/$SID/element/$(el 'form[action=login] button')/click" '{}' >/dev/null
[ "$(text_of h1)" = "$BRAND · dashboard" ] || fail "logging in on a phone: $(text_of body | head -5)"
measure "dashboard overview (phone)"
fits "the dashboard at 412 px"
screenshot "$OUT/dashboard-phone.png"
png_ok "$OUT/dashboard-phone.png"
wd DELETE "/session/$SID" >/dev/null
kill "$DOWNLOAD_PID" 2>/dev/null || true
echo "browser: the provider's dashboard: logged in, live rates, codes made and printed; screenshots dashboard.png, dashboard-vouchers.png, dashboard-phone.png"
kill -0 "$GATEWAY_PID" || fail "the gateway died"
grep -qF "$DASHBOARD_PASSWORD" "$WORK/gateway.log" && fail "the dashboard password reached the gateway's log"
echo "browser: ok; figures in $FIGURES"
