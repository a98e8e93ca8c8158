//! The portal's HTML, rendered as plain strings: no template engine, no JavaScript, no external
//! assets (a captive client can fetch nothing else), inline CSS and the provider's logo from
//! the portal itself only. Everything that did not come from this file goes through
//! [`escape`]: what the client sent, the catalogue's texts and the provider's name and terms.
//!
//! The code form may offer sign-in with a network account (where codes come from the
//! backend): an email and a password in a `<details>` part that opens by itself when it has
//! something to show, so the form stays one field for those who do not sign in and still
//! needs no script. The password is never put back into a page.
//!
//! Accessibility: `lang`, a real `<label for>`, hints and errors tied to the input with
//! `aria-describedby`, errors in a `role="alert"` element so screen readers announce them,
//! contrast above WCAG AA in light and dark schemes, tap targets at least 48 px high. Small
//! screens: one column that fits 320 px, long words wrap.

use std::fmt::Write as _;

use super::ClientStatus;
use super::i18n::{Msg, Tr};
use super::look::Look;
use crate::net::Millis;

const CSS: &str = "\
:root{color-scheme:light dark;--fg:#111;--bg:#fff;--muted:#444;--accent:#0b4f9c;--on-accent:#fff;\
--err:#a4001d;--err-bg:#fdecee;--ok:#0a5c2b;--ok-bg:#e8f5ec;--line:#6b6b6b;\
--brand:var(--accent);--on-brand:var(--on-accent)}\
@media (prefers-color-scheme:dark){:root{--fg:#f2f2f2;--bg:#121212;--muted:#c8c8c8;\
--accent:#8cc4ff;--on-accent:#000;--err:#ff8f9e;--err-bg:#3a0d14;--ok:#8fe3ad;--ok-bg:#0d2e19;\
--line:#9a9a9a}}\
*{box-sizing:border-box}\
body{margin:0;background:var(--bg);color:var(--fg);overflow-wrap:break-word;\
font:1.125rem/1.5 system-ui,-apple-system,\"Segoe UI\",Roboto,sans-serif}\
main,nav{max-width:30rem;margin:0 auto;padding:1.5rem 1rem}\
header{display:flex;align-items:center;gap:.75rem;padding:.5rem 1rem;min-height:3rem;\
background:var(--brand);color:var(--on-brand);font-weight:600;font-size:1.25rem}\
header img{max-height:3rem;max-width:50%;width:auto;height:auto}\
h1{font-size:1.625rem;line-height:1.25;margin:.5rem 0 1rem}\
label{display:block;font-weight:600;margin-top:1rem}\
.hint{color:var(--muted);margin:0 0 .5rem}\
input{display:block;width:100%;min-height:3rem;padding:.5rem .75rem;font:inherit;\
font-size:1.375rem;letter-spacing:.1em;text-transform:uppercase;color:var(--fg);\
background:var(--bg);border:2px solid var(--line);border-radius:.5rem}\
input[aria-invalid=true]{border-color:var(--err)}\
input[type=email],input[type=password]{font-size:1.125rem;letter-spacing:normal;\
text-transform:none}\
details{margin:1rem 0;padding:0 1rem;border:1px solid var(--line);border-radius:.5rem}\
summary{min-height:3rem;padding:.75rem 0;font-weight:600;cursor:pointer}\
details[open]{padding-bottom:1rem}details .hint:last-child{margin:.5rem 0 0}\
button,.button{display:block;width:100%;min-height:3rem;margin:1rem 0;padding:.75rem 1rem;\
font:inherit;font-weight:600;text-align:center;text-decoration:none;color:var(--on-brand);\
background:var(--brand);border:0;border-radius:.5rem;cursor:pointer}\
a{color:var(--accent)}\
:focus-visible{outline:3px solid var(--accent);outline-offset:3px}\
.alert,.ok{padding:.75rem 1rem;margin:0 0 1rem;border-radius:.25rem;border-left:.375rem solid}\
.alert{border-color:var(--err);background:var(--err-bg)}\
.note{padding:.75rem 1rem;margin:0 0 1rem;border-left:.375rem solid var(--muted)}.note p{margin:0}\
.ok{border-color:var(--ok);background:var(--ok-bg)}\
.alert p,.ok p{margin:0}.alert p+p,.ok p+p{margin-top:.5rem}\
.hint,.small{font-size:1rem}\
dl{display:grid;grid-template-columns:auto 1fr;gap:.5rem 1rem;font-size:1.25rem;margin:1rem 0}\
dt{color:var(--muted)}dd{margin:0;font-weight:600}\
nav{padding-top:0;border-top:1px solid var(--line)}\
nav h2{font-size:1rem;color:var(--muted);margin:1rem 0 0}\
nav ul{list-style:none;display:flex;flex-wrap:wrap;gap:0 1.25rem;margin:0;padding:0}\
nav a,nav strong{display:inline-block;padding:.75rem 0;min-height:3rem}";

/// Where the status pages send the browser to update them, and how often: without script,
/// the "what is left" figures stay current while the page is open.
pub const REFRESH_SECONDS: u32 = 60;
/// Where the portal serves the provider's logo.
pub const LOGO_PATH: &str = "/brand/logo";

/// What every page is rendered with: the language, the provider's look, and where the
/// portal's own pages are.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub tr: Tr<'a>,
    pub look: &'a Look,
    /// Prefix of links to the portal's own pages: empty on the portal's own host, the
    /// portal's origin (`http://10.66.0.1:8080`) on a page served under another host.
    pub base: &'a str,
    /// Whether the code form offers sign-in with a network account.
    pub accounts: bool,
    /// Since when the backend has been unreachable, if it is: the form says so, calmly.
    pub backend_down_since: Option<Millis>,
}

impl View<'_> {
    fn t(&self, msg: Msg) -> String {
        escape(self.tr.t(msg))
    }

    /// Whether the page is served on the portal's own host (where the logo loads and where a
    /// refresh stays).
    fn own_host(&self) -> bool {
        self.base.is_empty()
    }
}

/// Text made safe to place in HTML content and in double- or single-quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// How a page is framed: its title (escaped here), the path its language links reload, and
/// whether it updates itself.
struct Frame<'a> {
    title: &'a str,
    here: &'a str,
    refresh: bool,
}

/// The frame every page shares. `body` is trusted markup from this file.
fn page(view: &View<'_>, frame: &Frame<'_>, body: &str) -> String {
    let site = match &view.look.name {
        Some(name) => name.as_str(),
        None => view.tr.t(Msg::SiteTitle),
    };
    let mut out = format!(
        "<!doctype html>\n<html lang=\"{lang}\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
        lang = escape(view.tr.tag()),
    );
    if frame.refresh {
        let _ = writeln!(
            out,
            "<meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS};url={}/status\">",
            escape(view.base)
        );
    }
    let _ = write!(
        out,
        "<title>{title} · {site}</title>\n<style>{CSS}{colors}</style>\n</head>\n<body>\n",
        title = escape(frame.title),
        site = escape(site),
        colors = view.look.colors_css,
    );
    let logo = view.look.logo.is_some() && view.own_host();
    if logo || view.look.name.is_some() {
        out.push_str("<header>");
        if logo {
            // Beside the name the logo is decoration; alone it stands for the provider.
            let alt = match view.look.name {
                Some(_) => String::new(),
                None => view.t(Msg::SiteTitle),
            };
            let _ = write!(out, "<img src=\"{LOGO_PATH}\" alt=\"{alt}\">");
        }
        if let Some(name) = &view.look.name {
            let _ = write!(out, "<span>{}</span>", escape(name));
        }
        out.push_str("</header>\n");
    }
    let _ = write!(out, "<main>\n{body}</main>\n");
    out.push_str(&language_links(view, frame.here));
    out.push_str("</body>\n</html>\n");
    out
}

/// Links to the page in each other language: plain links, so choosing needs no script.
fn language_links(view: &View<'_>, here: &str) -> String {
    let languages = view.look.languages.list();
    if languages.len() < 2 {
        return String::new();
    }
    let pick = view.t(Msg::LanguagePick);
    let mut out = format!("<nav aria-label=\"{pick}\">\n<h2>{pick}</h2>\n<ul>\n");
    for (index, language) in languages.iter().enumerate() {
        let tag = escape(language.tag());
        let name = escape(view.look.languages.tr(index).t(Msg::LanguageName));
        if language.tag() == view.tr.tag() {
            let _ = writeln!(
                out,
                "<li><strong aria-current=\"true\">{name}</strong></li>"
            );
        } else {
            let _ = writeln!(
                out,
                "<li><a href=\"{base}{here}?lang={tag}\" hreflang=\"{tag}\" lang=\"{tag}\">{name}</a></li>",
                base = escape(view.base),
                here = escape(here),
            );
        }
    }
    out.push_str("</ul>\n</nav>\n");
    out
}

fn alert(id: &str, text: &str) -> String {
    format!(
        "<div id=\"{id}\" class=\"alert\" role=\"alert\"><p>{}</p></div>\n",
        escape(text)
    )
}

/// Which part of the code form an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Code,
    /// The email and password of the sign-in with a network account.
    Account,
}

/// What the person sent, put back into the form so a typo can be fixed rather than retyped.
/// Never the password.
#[derive(Debug, Clone, Copy, Default)]
pub struct Typed<'a> {
    pub code: &'a str,
    pub email: &'a str,
}

/// The code form, with the sign-in part if the view offers accounts. `error` is shown in an
/// alert tied to the inputs of its field; `typed` is put back into the inputs.
pub fn form(view: &View<'_>, error: Option<(&str, Field)>, typed: Typed<'_>) -> String {
    let mut body = format!(
        "<h1>{}</h1>\n<p>{}</p>\n",
        view.t(Msg::FormTitle),
        view.t(Msg::FormIntro)
    );
    if let Some(since) = view.backend_down_since {
        let text = view
            .tr
            .fill(Msg::FormOfflineNotice, &[("time", &clock_utc(since))]);
        let _ = writeln!(
            body,
            "<div class=\"note\" role=\"note\"><p>{}</p></div>",
            escape(&text)
        );
    }
    let field = error.map(|(text, field)| {
        let id = match field {
            Field::Code => "code-error",
            Field::Account => "account-error",
        };
        body.push_str(&alert(id, text));
        field
    });
    let (described_by, invalid) = match field {
        Some(Field::Code) => ("code-hint code-error", " aria-invalid=\"true\""),
        _ => ("code-hint", ""),
    };
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/login\">\n\
         <label for=\"code\">{label}</label>\n\
         <p id=\"code-hint\" class=\"hint\">{hint}</p>\n\
         <input id=\"code\" name=\"code\" type=\"text\" inputmode=\"text\" \
         autocapitalize=\"characters\" autocomplete=\"one-time-code\" autocorrect=\"off\" \
         spellcheck=\"false\" maxlength=\"{max}\" required aria-describedby=\"{described_by}\"\
         {invalid} value=\"{value}\">\n",
        label = view.t(Msg::FormLabel),
        hint = view.t(Msg::FormHint),
        max = super::form::MAX_CODE_CHARS,
        value = escape(typed.code),
    );
    if view.accounts {
        body.push_str(&account_part(
            view,
            field == Some(Field::Account),
            typed.email,
        ));
    }
    let _ = write!(
        body,
        "<button type=\"submit\">{}</button>\n</form>\n",
        view.t(Msg::FormSubmit)
    );
    if view.look.terms.is_some() {
        let _ = writeln!(
            body,
            "<p class=\"small\">{} <a href=\"{}/terms\">{}</a></p>",
            view.t(Msg::FormTermsAccept),
            escape(view.base),
            view.t(Msg::FormTermsLink)
        );
    }
    let _ = writeln!(
        body,
        "<p><a href=\"{}/status\">{}</a></p>",
        escape(view.base),
        view.t(Msg::FormStatusLink)
    );
    let title = view.tr.t(if error.is_some() {
        Msg::FormRetryTitle
    } else {
        Msg::FormTitle
    });
    page(
        view,
        &Frame {
            title,
            here: "/",
            refresh: false,
        },
        &body,
    )
}

/// The optional sign-in with a network account: open when it has an error or an email to
/// show. The password field is always empty.
fn account_part(view: &View<'_>, failed: bool, email: &str) -> String {
    let (open, email_described, password_described, invalid) = if failed {
        (
            " open",
            "account-hint account-error",
            "account-hint account-warning account-error",
            " aria-invalid=\"true\"",
        )
    } else {
        (
            if email.is_empty() { "" } else { " open" },
            "account-hint",
            "account-hint account-warning",
            "",
        )
    };
    format!(
        "<details{open}>\n<summary>{summary}</summary>\n\
         <p id=\"account-hint\" class=\"hint\">{intro}</p>\n\
         <label for=\"email\">{email_label}</label>\n\
         <input id=\"email\" name=\"email\" type=\"email\" inputmode=\"email\" \
         autocomplete=\"username\" autocapitalize=\"none\" autocorrect=\"off\" spellcheck=\"false\" \
         maxlength=\"{email_max}\" aria-describedby=\"{email_described}\"{invalid} value=\"{email}\">\n\
         <label for=\"password\">{password_label}</label>\n\
         <input id=\"password\" name=\"password\" type=\"password\" \
         autocomplete=\"current-password\" maxlength=\"{password_max}\" \
         aria-describedby=\"{password_described}\"{invalid}>\n\
         <p id=\"account-warning\" class=\"hint\">{warning}</p>\n</details>\n",
        summary = view.t(Msg::FormAccountSummary),
        intro = view.t(Msg::FormAccountIntro),
        email_label = view.t(Msg::FormEmailLabel),
        password_label = view.t(Msg::FormPasswordLabel),
        warning = view.t(Msg::FormAccountWarning),
        email_max = super::form::MAX_EMAIL_CHARS,
        password_max = super::form::MAX_PASSWORD_CHARS,
        email = escape(email),
    )
}

/// Which page shows a client's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Online<'a> {
    /// Right after a code was accepted; with the email of the account signed in, if any.
    JustNow(Option<&'a str>),
    /// `/status`, `/` or any other page asked for by a client that is online.
    Status,
}

/// The success and status page: data and time left. On the portal's own host it reloads
/// `/status` every [`REFRESH_SECONDS`]; under another host it does not (the reload would
/// leave the page the person opened).
pub fn online(view: &View<'_>, status: &ClientStatus, when: Online<'_>) -> String {
    let intro = match when {
        Online::JustNow(account) => {
            let signed_in = account.map_or_else(String::new, |email| {
                let text = view.tr.fill(Msg::OnlineSignedIn, &[("email", email)]);
                format!("<p>{}</p>", escape(&text))
            });
            format!(
                "<div class=\"ok\" role=\"status\"><p>{}</p>{signed_in}</div>\n",
                view.t(Msg::OnlineAccepted)
            )
        }
        Online::Status => format!("<p>{}</p>\n", view.t(Msg::OnlineConnected)),
    };
    // A code without an expiry still has a session limit: say which one the time is.
    // Another account's code: its expiry is not told, so the time is the session's limit
    // and the page must not promise more.
    let (time_label, after) = if status.other_account {
        (Msg::OnlineSessionTimeLeft, Msg::OnlineAfterOtherAccount)
    } else if status.code_expires {
        (Msg::OnlineTimeLeft, Msg::OnlineAfterExpiring)
    } else {
        (Msg::OnlineSessionTimeLeft, Msg::OnlineAfterNotExpiring)
    };
    let refresh = view.own_host();
    let mut body = format!(
        "<h1>{title}</h1>\n{intro}\
         <dl>\n<dt>{data_label}</dt><dd>{data}</dd>\n<dt>{time_label}</dt><dd>{time}</dd>\n</dl>\n\
         <p>{after}</p>\n",
        title = view.t(Msg::OnlineTitle),
        data_label = view.t(Msg::OnlineDataLeft),
        data = escape(&view.tr.megabytes(status.bytes_left)),
        time_label = view.t(time_label),
        time = escape(&view.tr.duration(status.seconds_left)),
        after = view.t(after),
    );
    if refresh {
        let _ = writeln!(
            body,
            "<p class=\"small\">{}</p>",
            view.t(Msg::OnlineRefreshes)
        );
    }
    let _ = writeln!(
        body,
        "<a class=\"button\" href=\"{}/status\">{}</a>",
        escape(view.base),
        view.t(Msg::OnlineCheck)
    );
    page(
        view,
        &Frame {
            title: view.tr.t(Msg::OnlineTitle),
            here: "/status",
            refresh,
        },
        &body,
    )
}

/// `at` as the time of day in UTC, `HH:MM` (a Pi's local time zone is rarely set).
fn clock_utc(at: Millis) -> String {
    let minutes = at.0 / 60_000 % (24 * 60);
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

/// `/status` for a client that is not online.
pub fn not_online(view: &View<'_>) -> String {
    let body = format!(
        "<h1>{}</h1>\n<p>{}</p>\n<a class=\"button\" href=\"{}/\">{}</a>\n",
        view.t(Msg::NotOnlineHeading),
        view.t(Msg::NotOnlineText),
        escape(view.base),
        view.t(Msg::NotOnlineEnter),
    );
    page(
        view,
        &Frame {
            title: view.tr.t(Msg::NotOnlineTitle),
            here: "/status",
            refresh: false,
        },
        &body,
    )
}

/// The provider's terms of use: paragraphs at blank lines, line breaks kept, all escaped.
pub fn terms(view: &View<'_>, text: &str) -> String {
    let mut body = format!("<h1>{}</h1>\n", view.t(Msg::TermsTitle));
    let text = text.replace("\r\n", "\n");
    for paragraph in text.split("\n\n").map(str::trim).filter(|p| !p.is_empty()) {
        let lines: Vec<String> = paragraph.lines().map(escape).collect();
        let _ = writeln!(body, "<p>{}</p>", lines.join("<br>\n"));
    }
    let _ = writeln!(
        body,
        "<a class=\"button\" href=\"{}/\">{}</a>",
        escape(view.base),
        view.t(Msg::TermsBack)
    );
    page(
        view,
        &Frame {
            title: view.tr.t(Msg::TermsTitle),
            here: "/terms",
            refresh: false,
        },
        &body,
    )
}

/// A page for a request the portal cannot serve (wrong method, and the like).
pub fn message(view: &View<'_>, title: &str, text: &str) -> String {
    let body = format!(
        "<h1>{}</h1>\n{}<a class=\"button\" href=\"{}/\">{}</a>\n",
        escape(title),
        alert("message", text),
        escape(view.base),
        view.t(Msg::MessageHome),
    );
    page(
        view,
        &Frame {
            title,
            here: "/",
            refresh: false,
        },
        &body,
    )
}

/// The body of the redirect to the portal, for clients that do not follow redirects.
pub fn redirect(view: &View<'_>, url: &str) -> String {
    let body = format!(
        "<h1>{}</h1>\n<p>{}</p>\n<a class=\"button\" href=\"{}\">{}</a>\n",
        view.t(Msg::RedirectTitle),
        view.t(Msg::RedirectText),
        escape(url),
        view.t(Msg::RedirectGo),
    );
    page(
        view,
        &Frame {
            title: view.tr.t(Msg::RedirectTitle),
            here: "/",
            refresh: false,
        },
        &body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portal::look::Logo;

    const STATUS: ClientStatus = ClientStatus {
        bytes_left: 512 * 1_048_576 + 300_000,
        seconds_left: 4_320,
        code_expires: true,
        other_account: false,
    };

    fn view<'a>(look: &'a Look, tag: &str) -> View<'a> {
        View {
            tr: look.languages.tr(look.languages.find(tag).unwrap()),
            look,
            base: "",
            accounts: false,
            backend_down_since: None,
        }
    }

    fn code(code: &str) -> Typed<'_> {
        Typed { code, email: "" }
    }

    fn every_page(view: &View<'_>) -> Vec<String> {
        vec![
            form(view, Some(("x", Field::Code)), code("y")),
            form(view, None, Typed::default()),
            form(
                &View {
                    accounts: true,
                    ..*view
                },
                Some(("x", Field::Account)),
                Typed {
                    code: "y",
                    email: "z@example.com",
                },
            ),
            online(view, &STATUS, Online::JustNow(None)),
            online(view, &STATUS, Online::JustNow(Some("z@example.com"))),
            online(view, &STATUS, Online::Status),
            not_online(view),
            terms(view, "Terms."),
            message(view, "Nope", "No."),
            redirect(view, "http://10.66.0.1:8080/"),
        ]
    }

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<script>alert('x' & "y")</script>"#),
            "&lt;script&gt;alert(&#39;x&#39; &amp; &quot;y&quot;)&lt;/script&gt;"
        );
        assert_eq!(escape("ABCD 2345 é"), "ABCD 2345 é");
    }

    #[test]
    fn the_form_escapes_what_was_typed() {
        let look = Look::default();
        let html = form(
            &view(&look, "en"),
            Some(("bad <b>", Field::Code)),
            code("\"><script>alert(1)</script>"),
        );
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("value=\"&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;\""));
        assert!(html.contains("<p>bad &lt;b&gt;</p>"));
    }

    #[test]
    fn the_form_is_accessible() {
        let look = Look::default();
        let view = view(&look, "en");
        let plain = form(&view, None, Typed::default());
        for needle in [
            "<html lang=\"en\">",
            "<label for=\"code\">",
            "id=\"code\"",
            "inputmode=\"text\"",
            "autocapitalize=\"characters\"",
            "autocomplete=\"one-time-code\"",
            "aria-describedby=\"code-hint\"",
            "method=\"post\" action=\"/login\"",
            "name=\"viewport\"",
        ] {
            assert!(plain.contains(needle), "{needle}");
        }
        assert!(!plain.contains("role=\"alert\""));
        assert!(!plain.contains("aria-invalid=\"true\""));
        let failed = form(
            &view,
            Some(("That code is not valid.", Field::Code)),
            code("abcd"),
        );
        assert!(failed.contains("role=\"alert\"><p>That code is not valid.</p>"));
        assert!(failed.contains("aria-describedby=\"code-hint code-error\" aria-invalid=\"true\""));
        assert!(failed.contains("value=\"abcd\""));
    }

    #[test]
    fn the_sign_in_part_is_there_only_with_accounts_and_never_holds_the_password() {
        let look = Look::default();
        let plain = view(&look, "en");
        let html = form(&plain, None, Typed::default());
        assert!(!html.contains("name=\"email\""), "{html}");
        assert!(!html.contains("name=\"password\""), "{html}");
        let accounts = View {
            accounts: true,
            ..plain
        };
        let html = form(&accounts, None, code("ABCD2345"));
        for needle in [
            "<details>\n<summary>Sign in with your network account (optional)</summary>",
            "<label for=\"email\">Email</label>",
            "type=\"email\" inputmode=\"email\" autocomplete=\"username\"",
            "maxlength=\"254\" aria-describedby=\"account-hint\" value=\"\"",
            "<label for=\"password\">Password</label>",
            "type=\"password\" autocomplete=\"current-password\" maxlength=\"256\"",
            "aria-describedby=\"account-hint account-warning\">",
            "This page is not encrypted",
            // Inside the form, before its one button: sent with the code.
            "</details>\n<button type=\"submit\">Get online</button>\n</form>",
        ] {
            assert!(html.contains(needle), "{needle} in {html}");
        }
        // An email typed opens the part and comes back; an account error points at it.
        let typed = Typed {
            code: "ABCD2345",
            email: "\"><b>@example.com",
        };
        let html = form(&accounts, None, typed);
        assert!(html.contains("<details open>"), "{html}");
        assert!(
            html.contains("value=\"&quot;&gt;&lt;b&gt;@example.com\""),
            "{html}"
        );
        let html = form(
            &accounts,
            Some(("Wrong email or password.", Field::Account)),
            typed,
        );
        assert!(html.contains("<details open>"), "{html}");
        assert!(html.contains("id=\"account-error\" class=\"alert\" role=\"alert\""));
        assert!(
            html.contains("aria-describedby=\"account-hint account-error\" aria-invalid=\"true\"")
        );
        assert!(
            html.contains("aria-describedby=\"code-hint\" value=\"ABCD2345\""),
            "{html}"
        );
        // The password input never has a value.
        let password = html.split("id=\"password\"").nth(1).unwrap();
        let password = password.split('>').next().unwrap();
        assert!(!password.contains("value"), "{password}");
        // Every language has the texts.
        for tag in ["es", "fr"] {
            let html = form(
                &View {
                    accounts: true,
                    ..view(&look, tag)
                },
                None,
                Typed::default(),
            );
            assert!(!html.contains("network account"), "{tag}: {html}");
            assert!(!html.contains("not encrypted"), "{tag}: {html}");
        }
    }

    #[test]
    fn the_success_page_says_which_account_was_signed_in() {
        let look = Look::default();
        let en = view(&look, "en");
        let html = online(&en, &STATUS, Online::JustNow(Some("a<b>@example.com")));
        assert!(
            html.contains("<p>Signed in as a&lt;b&gt;@example.com: the data you use"),
            "{html}"
        );
        let html = online(&en, &STATUS, Online::JustNow(None));
        assert!(!html.contains("Signed in"), "{html}");
    }

    #[test]
    fn no_page_loads_anything_from_elsewhere() {
        let look = Look::default();
        for html in every_page(&view(&look, "en")) {
            assert!(html.starts_with("<!doctype html>"));
            assert!(html.contains("<html lang=\"en\">"));
            for external in ["<script", "<link", "<img", "src=", "@import", "url("] {
                assert!(!html.contains(external), "{external} in {html}");
            }
        }
    }

    #[test]
    fn pages_speak_the_chosen_language_and_link_the_others() {
        let look = Look::default();
        let es = view(&look, "es");
        let html = form(&es, None, Typed::default());
        assert!(html.contains("<html lang=\"es\">"), "{html}");
        assert!(html.contains("<h1>Conéctate</h1>"), "{html}");
        assert!(
            html.contains("<title>Conéctate · Acceso Wi-Fi</title>"),
            "{html}"
        );
        assert!(html.contains("<strong aria-current=\"true\">Español</strong>"));
        assert!(html.contains("<a href=\"/?lang=fr\" hreflang=\"fr\" lang=\"fr\">Français</a>"));
        assert!(html.contains("<a href=\"/?lang=en\" hreflang=\"en\" lang=\"en\">English</a>"));
        let status = online(&view(&look, "fr"), &STATUS, Online::Status);
        assert!(
            status.contains("<dt>Données restantes</dt><dd>512 Mo</dd>"),
            "{status}"
        );
        assert!(status.contains("<dd>1 h 12 min</dd>"), "{status}");
        assert!(status.contains("href=\"/status?lang=es\""), "{status}");
        // No English left on a translated page (the language links name languages).
        let english: Vec<&str> = ["Get online", "Access code", "Data left", "Time left"].to_vec();
        for html in every_page(&es) {
            for text in &english {
                assert!(!html.contains(text), "{text} in {html}");
            }
        }
    }

    #[test]
    fn status_pages_show_what_is_left_and_update_themselves() {
        let look = Look::default();
        let en = view(&look, "en");
        let html = online(&en, &STATUS, Online::JustNow(None));
        assert!(html.contains("<dd>512 MB</dd>"), "{html}");
        assert!(html.contains("<dd>1 h 12 min</dd>"), "{html}");
        assert!(html.contains("Your code was accepted"));
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"60;url=/status\">"));
        let status = online(&en, &STATUS, Online::Status);
        assert!(!status.contains("Your code was accepted"));
        assert!(status.contains("<meta http-equiv=\"refresh\" content=\"60;url=/status\">"));
        assert!(status.contains("updates itself every minute"));
        // Under another host, links lead to the portal and nothing reloads.
        let foreign = View {
            base: "http://10.66.0.1:8080",
            ..en
        };
        let html = online(&foreign, &STATUS, Online::Status);
        assert!(!html.contains("http-equiv"), "{html}");
        assert!(
            html.contains("href=\"http://10.66.0.1:8080/status\""),
            "{html}"
        );
        assert!(!not_online(&en).contains("http-equiv"));
        assert!(not_online(&en).contains("href=\"/\""));
        let no_expiry = ClientStatus {
            code_expires: false,
            ..STATUS
        };
        let html = online(&en, &no_expiry, Online::Status);
        assert!(
            html.contains("<dt>Session time left</dt><dd>1 h 12 min</dd>"),
            "{html}"
        );
        assert!(html.contains("Your code does not expire"), "{html}");
        assert!(!html.contains("<dt>Time left</dt>"), "{html}");
        // Another account's code: no promise that it does not expire.
        let roaming = ClientStatus {
            code_expires: false,
            other_account: true,
            ..STATUS
        };
        let html = online(&en, &roaming, Online::Status);
        assert!(html.contains("<dt>Session time left</dt>"), "{html}");
        assert!(!html.contains("does not expire"), "{html}");
        assert!(html.contains("another provider"), "{html}");
    }

    /// While the backend is unreachable the form says since when, as a note (not an
    /// alert), in each language.
    #[test]
    fn the_form_notes_an_unreachable_backend_with_its_time() {
        let look = Look::default();
        let down = |tag| View {
            // 2026-12-07 17:05:42 UTC.
            backend_down_since: Some(Millis(1_796_663_142_000)),
            ..view(&look, tag)
        };
        let html = form(&down("en"), None, Typed::default());
        assert!(html.contains("class=\"note\""), "{html}");
        assert!(html.contains("unreachable since 17:05 UTC"), "{html}");
        assert!(!html.contains("role=\"alert\""), "{html}");
        for tag in ["es", "fr"] {
            assert!(form(&down(tag), None, Typed::default()).contains("17:05 UTC"));
        }
        assert!(!form(&view(&look, "en"), None, Typed::default()).contains("class=\"note\""));
    }

    #[test]
    fn messages_and_redirects_escape() {
        let look = Look::default();
        let en = view(&look, "en");
        assert!(message(&en, "<x>", "<y>").contains("<h1>&lt;x&gt;</h1>"));
        assert!(message(&en, "<x>", "<y>").contains("<p>&lt;y&gt;</p>"));
        assert!(
            redirect(&en, "http://a/?b=\"c\"&d")
                .contains("href=\"http://a/?b=&quot;c&quot;&amp;d\"")
        );
    }

    #[test]
    fn provider_texts_are_escaped() {
        let hostile = "<script>alert('x')</script>";
        let mut look = Look {
            name: Some(format!("Café {hostile}")),
            terms: Some(format!("Rule 1: {hostile}\r\nline two\n\n\nRule 2 & more")),
            logo: Some(Logo {
                bytes: axum::body::Bytes::from_static(b"<svg/>"),
                content_type: "image/svg+xml",
            }),
            ..Look::default()
        };
        // A catalogue text with markup, and a parameter with markup, are text too.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("sw.toml"),
            format!("language.name = \"Kiswahili {hostile}\"\nform.title = \"{hostile}\"\nerror.bad_character = \"{{char}} {hostile}\"\n"),
        )
        .unwrap();
        look.languages = crate::portal::i18n::Languages::load(dir.path()).0;
        let sw = view(&look, "sw");
        let error = sw
            .tr
            .fill(Msg::ErrorBadCharacter, &[("char", "<img src=x>")]);
        let mut pages = every_page(&sw);
        pages.push(form(&sw, Some((&error, Field::Code)), Typed::default()));
        pages.push(terms(&sw, look.terms.as_deref().unwrap()));
        for html in &pages {
            assert!(!html.contains("<script"), "{html}");
            assert!(!html.contains("<img src=x>"), "{html}");
        }
        let html = terms(&sw, look.terms.as_deref().unwrap());
        assert!(html.contains("<p>Rule 1: &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;<br>\nline two</p>\n<p>Rule 2 &amp; more</p>"), "{html}");
        assert!(
            html.contains("<header><img src=\"/brand/logo\" alt=\"\"><span>Café &lt;script&gt;"),
            "{html}"
        );
        assert!(html.contains("· Café &lt;script&gt;"), "{html}");
        let form_page = form(&sw, Some((&error, Field::Code)), Typed::default());
        assert!(
            form_page.contains("<p>&lt;img src=x&gt; &lt;script&gt;"),
            "{form_page}"
        );
        assert!(form_page.contains("<a href=\"/terms\">"), "{form_page}");
        // Under another host the logo is left out: it would not load from there.
        let foreign = View {
            base: "http://10.66.0.1:8080",
            ..sw
        };
        assert!(!not_online(&foreign).contains("<img"));
    }

    #[test]
    fn provider_colours_follow_the_defaults() {
        let look = Look {
            colors_css: ":root{--brand:#ffcc00;--on-brand:#000000}".to_owned(),
            ..Look::default()
        };
        let html = form(&view(&look, "en"), None, Typed::default());
        // After the built-in rules, so the provider's colours win in dark mode too.
        assert!(
            html.contains("min-height:3rem}:root{--brand:#ffcc00;--on-brand:#000000}</style>"),
            "{html}"
        );
    }
}
