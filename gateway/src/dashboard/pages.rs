//! The dashboard's HTML: the login page and the overview. Every text that comes from
//! outside (codes, addresses, the backend's answers, error messages) is escaped here; the
//! page loads nothing from elsewhere (no CDN: a Pi may have no internet) and works without
//! JavaScript, which only refreshes the devices table (`live.js`).

use std::fmt::Write as _;

use time::OffsetDateTime;
use time::macros::format_description;

use super::chart::{bars, human_bytes};
use super::view::{Agent, AgentFigures, DeviceLive, Earnings, Health, Overview, SessionLive};
use crate::code_book::{CodeRow, CodeState};
use crate::portal::escape;

const STYLE: &str = "\
*{box-sizing:border-box}body{margin:0;font:15px/1.4 system-ui,sans-serif;color:#1b1f24;background:#f3f5f7}\
header{display:flex;justify-content:space-between;align-items:center;padding:.6em 1em;background:#1d4e89;color:#fff}\
header h1{font-size:1.1em;margin:0}main{max-width:1100px;margin:auto;padding:.5em}\
section{background:#fff;border-radius:8px;padding:.6em 1em;margin:.6em 0;box-shadow:0 1px 2px #0002;overflow-x:auto}\
h2{font-size:1em;margin:.2em 0 .5em}table{border-collapse:collapse;width:100%}\
th,td{text-align:left;padding:.25em .5em;border-bottom:1px solid #e3e6ea;white-space:nowrap}\
td.n,th.n{text-align:right}button,input{font:inherit}button{cursor:pointer;border:0;border-radius:4px;padding:.25em .7em;background:#1d4e89;color:#fff}\
button.warn{background:#a12622}input[type=number]{width:6em}form.inline{display:inline}\
.notice{background:#e6f4ea;border-left:4px solid #1e7b34}.error{background:#fdecea;border-left:4px solid #a12622}\
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:.6em}.grid section{margin:0}\
.chart{width:100%;height:auto}.chart rect{fill:#1d4e89}.chart .axis{font-size:10px;fill:#555}\
.muted{color:#667}dl{display:grid;grid-template-columns:auto 1fr;gap:.1em 1em;margin:0}dd{margin:0}\
.login{max-width:340px;margin:10vh auto}.login input{width:100%;padding:.4em;margin:.3em 0 .8em}";

/// A whole page around `body`.
fn page(title: &str, head_extra: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<title>{}</title><style>{STYLE}</style>{head_extra}</head><body>{body}</body></html>",
        escape(title)
    )
}

/// The login form, with `error` above it when the last try failed.
pub fn login(provider: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e)))
        .unwrap_or_default();
    page(
        &format!("{provider} · dashboard"),
        "",
        &format!(
            "<main class=\"login\"><section><h2>{} · provider dashboard</h2>{error}\
<form method=\"post\" action=\"login\"><label for=\"password\">Password</label>\
<input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required autofocus>\
<button type=\"submit\">Log in</button></form></section></main>",
            escape(provider)
        ),
    )
}

/// What the overview says above everything else: the outcome of the last form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    None,
    /// Markup the server made from checked values (codes it made, a MAC it parsed).
    Done(String),
    /// Text, escaped here.
    Failed(String),
}

/// Unix milliseconds as `2026-12-04 15:02 UTC`.
pub fn utc_time(ms: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(format_description!(
                "[year]-[month]-[day] [hour]:[minute] UTC"
            ))
            .ok()
        })
        .unwrap_or_else(|| "?".to_owned())
}

fn rate(bytes_per_second: f64) -> String {
    format!("{}/s", human_bytes(bytes_per_second.max(0.0) as u64))
}

/// A form that posts one action with the CSRF token.
fn action_form(
    action: &str,
    csrf: &str,
    fields: &[(&str, &str)],
    label: &str,
    warn: bool,
) -> String {
    let mut form = format!(
        "<form class=\"inline\" method=\"post\" action=\"{action}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        escape(csrf)
    );
    for (name, value) in fields {
        let _ = write!(
            form,
            "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
            escape(value)
        );
    }
    let class = if warn { " class=\"warn\"" } else { "" };
    let _ = write!(
        form,
        "<button type=\"submit\"{class}>{label}</button></form>"
    );
    form
}

/// One device's row; `live.js` writes the same cells from `live.json`.
fn device_row(session: &SessionLive, device: &DeviceLive, csrf: &str) -> String {
    let mut ips = escape(&device.ip.to_string());
    for also in &device.also {
        let _ = write!(ips, "<br><small>{}</small>", escape(&also.to_string()));
    }
    format!(
        "<tr><td>{}</td><td>{ips}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
<td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
        escape(&device.mac.to_string()),
        escape(session.code.as_str()),
        rate(device.down_rate),
        rate(device.up_rate),
        human_bytes(device.up_bytes + device.down_bytes),
        human_bytes(session.left_bytes()),
        utc_time(session.expires_ms),
        action_form(
            "kick",
            csrf,
            &[("mac", &device.mac.to_string())],
            "Log out",
            false
        ),
    )
}

fn devices(sessions: &[SessionLive], csrf: &str) -> String {
    let count: usize = sessions.iter().map(|s| s.devices.len()).sum();
    let mut rows = String::new();
    for session in sessions {
        for device in &session.devices {
            rows.push_str(&device_row(session, device, csrf));
        }
    }
    if rows.is_empty() {
        rows.push_str("<tr><td colspan=\"9\" class=\"muted\">No device online.</td></tr>");
    }
    format!(
        "<section><h2>Online now: <span id=\"online\">{count}</span> device(s)</h2><table>\
<thead><tr><th>Device</th><th>Address</th><th>Code</th><th class=\"n\">Down</th><th class=\"n\">Up</th>\
<th class=\"n\">Used</th><th class=\"n\">Left</th><th>Until</th><th></th></tr></thead>\
<tbody id=\"devices\">{rows}</tbody></table></section>"
    )
}

/// Every live session (a code in use), also one whose devices have all left: what it used
/// of its quota, and until when.
fn sessions(sessions: &[SessionLive], csrf: &str) -> String {
    let mut rows = String::new();
    for session in sessions {
        let _ = write!(
            rows,
            "<tr><td><code>{}</code></td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
<td class=\"n\">{}</td><td>{}</td><td>{}</td></tr>",
            escape(session.code.as_str()),
            session
                .consumer
                .as_deref()
                .map_or_else(|| "-".to_owned(), escape),
            session.devices.len(),
            human_bytes(session.used_bytes),
            human_bytes(session.quota_bytes),
            utc_time(session.expires_ms),
            action_form(
                "revoke",
                csrf,
                &[("code", session.code.as_str())],
                "Revoke",
                true
            ),
        );
    }
    if rows.is_empty() {
        rows.push_str("<tr><td colspan=\"7\" class=\"muted\">No code in use.</td></tr>");
    }
    format!(
        "<section><h2>Sessions: {}</h2><table><thead><tr><th>Code</th><th>Account</th><th class=\"n\">Devices</th>\
<th class=\"n\">Used</th><th class=\"n\">Of</th><th>Until</th><th></th></tr></thead>\
<tbody>{rows}</tbody></table></section>",
        sessions.len()
    )
}

/// The account's earnings, and the credit its gateways' reports lost (as the agent found it).
fn earnings(earnings: Option<&Result<Earnings, String>>, agent: &Agent) -> String {
    let mut body = match earnings {
        None => "<p class=\"muted\">Local codes: nothing is credited to a network account.</p>"
            .to_owned(),
        Some(Err(err)) => format!(
            "<p class=\"error\">The backend did not answer: {}</p>",
            escape(err)
        ),
        Some(Ok(e)) => format!(
            "<dl><dt>Account</dt><dd>{}</dd><dt>Points</dt><dd id=\"points\">{}</dd>\
<dt>Bytes shared</dt><dd>{}</dd></dl>",
            escape(&e.name),
            escape(&format!("{}", e.points)),
            escape(&match e.bytes_shared.parse::<u64>() {
                Ok(bytes) => format!("{} ({bytes} B)", human_bytes(bytes)),
                Err(_) => e.bytes_shared.clone(),
            })
        ),
    };
    let shortfall = match agent {
        Agent::Running(AgentFigures {
            shortfall: Some(s), ..
        }) => Some(s).filter(|s| s.points > 0 || s.bytes > 0 || s.entries_missed),
        _ => None,
    };
    if let Some(s) = shortfall {
        let at_least = if s.entries_missed { "at least " } else { "" };
        let _ = write!(
            body,
            "<p class=\"error\" id=\"shortfall\">Credit lost: the account is {at_least}{} points and {} of bytes shared short of what its usage log earned since the agent started (reports crediting it at once, from any of its gateways; ask the backend's operator).{}</p>",
            s.points,
            human_bytes(s.bytes),
            if s.entries_missed {
                " Log entries may have been missed."
            } else {
                ""
            }
        );
    }
    format!("<section><h2>Earnings</h2>{body}</section>")
}

fn health(health: Option<&Health>, agent: &Agent) -> String {
    let mut out = String::from("<section><h2>Health</h2><dl>");
    match health {
        None => out.push_str("<dt>Gateway</dt><dd class=\"error\">not answering</dd>"),
        Some(h) => {
            let _ = write!(
                out,
                "<dt>Gateway</dt><dd>up {} · {} codes</dd><dt>Unattributed</dt><dd>{}</dd>",
                humantime::format_duration(std::time::Duration::from_secs(h.uptime_seconds)),
                escape(&h.codes),
                human_bytes(h.unattributed_bytes)
            );
            if let Some(since) = h.backend_down_since_ms {
                let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(since);
                let _ = write!(
                    out,
                    "<dt>Backend</dt><dd class=\"error\">unreachable since {}: own codes admit consumers from the last code list, other accounts' codes are refused, usage waits in the ledger</dd>",
                    humantime::format_rfc3339_seconds(at)
                );
            }
            match &h.meters {
                None => out.push_str("<dt>Meters</dt><dd>kernel only (capture off)</dd>"),
                Some(m) => {
                    let _ = write!(
                        out,
                        "<dt>Kernel meter</dt><dd>↓ {} ↑ {}</dd><dt>Capture meter</dt><dd>↓ {} ↑ {}</dd>\
<dt>Drift (all quiet)</dt><dd>{}</dd><dt>Explained by queue drops</dt><dd>{}</dd>\
<dt>Capture drops</dt><dd>{} packets</dd><dt>LAN queue drops</dt><dd>{} packets</dd>",
                        human_bytes(m.kernel_down),
                        human_bytes(m.kernel_up),
                        human_bytes(m.capture_down),
                        human_bytes(m.capture_up),
                        m.drift.map_or("not measured yet".to_owned(), |d| format!(
                            "{:+.4} %",
                            d * 100.0
                        )),
                        human_bytes(m.explained_bytes),
                        m.capture_drops,
                        m.lan_queue_drops
                    );
                }
            }
        }
    }
    match agent {
        Agent::Unreachable(reason) => {
            let _ = write!(
                out,
                "<dt>Agent</dt><dd class=\"error\">not answering: {}</dd>",
                escape(reason)
            );
        }
        Agent::Running(a) => {
            let billing = match (a.billing, a.failing_since) {
                (false, _) => "usage reporting not set up".to_owned(),
                (true, None) => "reporting".to_owned(),
                (true, Some(since)) => format!("NOT REPORTING since {}", utc_time(since * 1000)),
            };
            let _ = write!(
                out,
                "<dt>Agent</dt><dd>up {} · {}</dd><dt>Usage</dt><dd>{} reported, {} pending</dd>",
                humantime::format_duration(std::time::Duration::from_secs(a.uptime_seconds)),
                escape(&billing),
                human_bytes(a.reported_bytes),
                human_bytes(a.pending_bytes)
            );
            if let Some(error) = &a.last_error {
                let _ = write!(out, "<dt>Last error</dt><dd>{}</dd>", escape(error));
            }
        }
    }
    out.push_str("</dl></section>");
    out
}

fn codes(
    codes: &Result<Vec<CodeRow>, String>,
    csrf: &str,
    backend: bool,
    now: OffsetDateTime,
) -> String {
    let never = if backend {
        "<label><input type=\"checkbox\" name=\"never\" value=\"1\"> never expire</label> "
    } else {
        ""
    };
    let mut out = format!(
        "<section><h2>Codes</h2><form method=\"post\" action=\"codes\">\
<input type=\"hidden\" name=\"csrf\" value=\"{}\">\
<label>MB <input type=\"number\" name=\"mb\" min=\"1\" step=\"any\" value=\"500\" required></label> \
<label>hours <input type=\"number\" name=\"hours\" min=\"1\" step=\"any\" value=\"24\"></label> {never}\
<label>count <input type=\"number\" name=\"count\" min=\"1\" max=\"50\" value=\"1\" required></label> \
<button type=\"submit\">Make codes</button></form>",
        escape(csrf)
    );
    match codes {
        Err(err) => {
            let _ = write!(
                out,
                "<p class=\"error\">The codes could not be listed: {}</p>",
                escape(err)
            );
        }
        Ok(rows) => {
            let valid: Vec<&CodeRow> = rows
                .iter()
                .filter(|r| r.state(now) == CodeState::Valid)
                .collect();
            if !valid.is_empty() {
                let query: Vec<String> = valid
                    .iter()
                    .map(|r| format!("code={}", r.code.as_str()))
                    .collect();
                let _ = write!(
                    out,
                    "<p><a href=\"vouchers?{}\" target=\"_blank\">Print vouchers of the {} valid code(s)</a></p>",
                    escape(&query.join("&")),
                    valid.len()
                );
            }
            out.push_str(
                "<table><thead><tr><th>Code</th><th>State</th><th class=\"n\">Left</th>\
<th class=\"n\">Of</th><th>Expires</th><th></th></tr></thead><tbody>",
            );
            for row in rows {
                let state = row.state(now);
                let expires = row.expires.map_or("never".to_owned(), |at| {
                    utc_time(u64::try_from(at.unix_timestamp()).unwrap_or(0) * 1000)
                });
                let mut actions = String::new();
                if state == CodeState::Valid {
                    let _ = write!(
                        actions,
                        "<a href=\"vouchers?code={}\" target=\"_blank\">Print</a> {}",
                        escape(row.code.as_str()),
                        action_form(
                            "revoke",
                            csrf,
                            &[("code", row.code.as_str())],
                            "Revoke",
                            true
                        )
                    );
                }
                let _ = write!(
                    out,
                    "<tr><td><code>{}</code></td><td>{}</td><td class=\"n\">{:.1} MB</td>\
<td class=\"n\">{:.1} MB</td><td>{expires}</td><td>{actions}</td></tr>",
                    escape(row.code.as_str()),
                    state.as_str(),
                    row.remaining_mb,
                    row.total_mb
                );
            }
            if rows.is_empty() {
                out.push_str("<tr><td colspan=\"6\" class=\"muted\">No codes yet.</td></tr>");
            }
            out.push_str("</tbody></table>");
        }
    }
    out.push_str("</section>");
    out
}

fn usage(usage: &Result<super::view::Usage, String>) -> String {
    match usage {
        Err(err) => format!(
            "<section><h2>Usage</h2><p class=\"error\">The usage ledger could not be read: {}</p></section>",
            escape(err)
        ),
        Ok(u) => {
            let day: u64 = u.hours.iter().map(|(_, b)| b).sum();
            let week: u64 = u.days.iter().map(|(_, b)| b).sum();
            format!(
                "<div class=\"grid\"><section><h2>Last 24 hours: {}</h2>{}</section>\
<section><h2>Last 7 days: {}</h2>{}</section></div>",
                human_bytes(day),
                bars("bytes per hour, last 24 hours (UTC)", &u.hours, 3),
                human_bytes(week),
                bars("bytes per day, last 7 days", &u.days, 1)
            )
        }
    }
}

/// The overview: devices, earnings, usage, codes, health.
pub fn overview(
    provider: &str,
    overview: &Overview,
    csrf: &str,
    backend: bool,
    notice: &Notice,
    now: OffsetDateTime,
) -> String {
    let notice = match notice {
        Notice::None => String::new(),
        Notice::Done(text) => format!(
            "<section class=\"notice\" role=\"status\">{}</section>",
            text
        ),
        Notice::Failed(text) => format!(
            "<section class=\"error\" role=\"alert\">{}</section>",
            escape(text)
        ),
    };
    let live = overview.live.as_ref();
    let body = format!(
        "<header><h1>{} · dashboard</h1>{}</header><main>{notice}{}{}\
<div class=\"grid\">{}{}</div>{}{}</main><script src=\"live.js\"></script>",
        escape(provider),
        action_form("logout", csrf, &[], "Log out", false),
        devices(live.map_or(&[][..], |l| &l.sessions), csrf),
        sessions(live.map_or(&[][..], |l| &l.sessions), csrf),
        earnings(overview.earnings.as_ref(), &overview.agent),
        health(live.map(|l| &l.health), &overview.agent),
        usage(&overview.usage),
        codes(&overview.codes, csrf, backend, now),
    );
    page(
        &format!("{provider} · dashboard"),
        "<noscript><meta http-equiv=\"refresh\" content=\"15\"></noscript>",
        &body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::view::{Live, Usage};
    use edgeshare_shared::code::AccessCode;

    #[test]
    fn an_unreachable_backend_is_shown_with_its_time() {
        let health = Health {
            backend_down_since_ms: Some(1_796_663_142_000),
            ..Health::default()
        };
        let html = super::health(Some(&health), &Agent::Unreachable("x".into()));
        assert!(
            html.contains("backend</dt>") || html.contains("Backend</dt>"),
            "{html}"
        );
        assert!(
            html.contains("unreachable since 2026-12-07T17:05:42Z"),
            "{html}"
        );
        let html = super::health(Some(&Health::default()), &Agent::Unreachable("x".into()));
        assert!(!html.contains("unreachable since"), "{html}");
    }

    #[test]
    fn whatever_comes_from_outside_is_escaped() {
        let overview = Overview {
            live: Some(Live {
                at_ms: 0,
                sessions: vec![SessionLive {
                    code: AccessCode::parse("ABCD2345").unwrap(),
                    started_ms: 0,
                    expires_ms: 0,
                    quota_bytes: 10,
                    used_bytes: 3,
                    consumer: Some("<consumer>".into()),
                    devices: vec![],
                }],
                health: Health {
                    codes: "<i>".into(),
                    ..Health::default()
                },
            }),
            codes: Err("<script>alert(1)</script>".into()),
            usage: Err("<img src=x>".into()),
            earnings: Some(Ok(Earnings {
                name: "<b>Eve</b>".into(),
                points: 3.0,
                bytes_shared: "\"><script>".into(),
            })),
            agent: Agent::Unreachable("<u>".into()),
        };
        let html = overview_page(&overview);
        for bad in [
            "<script>alert",
            "<img src",
            "<b>Eve",
            "\"><script>",
            "<u>",
            "<i>",
            "<em>P",
            "<consumer>",
        ] {
            assert!(!html.contains(bad), "{bad} unescaped");
        }
        assert!(html.contains("&lt;script&gt;alert(1)"));
        let login = login("<em>P</em>", Some("<x>"));
        assert!(!login.contains("<em>P") && !login.contains("<x>"));
    }

    fn overview_page(overview: &Overview) -> String {
        super::overview(
            "<em>P</em>",
            overview,
            "\"csrf",
            true,
            &Notice::Failed("<x>".into()),
            OffsetDateTime::UNIX_EPOCH,
        )
    }

    #[test]
    fn the_earnings_panel_shows_lost_credit_with_its_size() {
        let mut overview = Overview {
            live: None,
            codes: Ok(vec![]),
            usage: Ok(Usage::default()),
            earnings: Some(Ok(Earnings {
                name: "P".into(),
                points: 163.0,
                bytes_shared: "173825036".into(),
            })),
            agent: Agent::Running(AgentFigures::default()),
        };
        assert!(!overview_page(&overview).contains("Credit lost"));
        overview.agent = Agent::Running(AgentFigures {
            shortfall: Some(super::super::view::Shortfall {
                points: 35,
                bytes: 36_700_160,
                entries_missed: false,
            }),
            ..AgentFigures::default()
        });
        let html = overview_page(&overview);
        assert!(
            html.contains(
                "Credit lost: the account is 35 points and 35.0 MiB of bytes shared short"
            ),
            "{html}"
        );
    }

    #[test]
    fn every_form_carries_the_csrf_token() {
        let overview = Overview {
            live: None,
            codes: Ok(vec![CodeRow {
                code: AccessCode::parse("ABCD2345").unwrap(),
                total_mb: 5.0,
                remaining_mb: 5.0,
                expires: None,
                revoked: false,
            }]),
            usage: Ok(Usage::default()),
            earnings: None,
            agent: Agent::Unreachable("down".into()),
        };
        let html = overview_page(&overview);
        let forms = html.matches("<form").count();
        assert_eq!(forms, 3, "log out, make codes, revoke: {html}");
        assert_eq!(
            html.matches("name=\"csrf\" value=\"&quot;csrf\"").count(),
            forms
        );
    }
}
