//! The portal's HTML, rendered as plain strings: no template engine, no JavaScript, no external
//! assets (a captive client can fetch nothing else), inline CSS only. Everything that did not
//! come from this file goes through [`escape`].
//!
//! Accessibility: `lang`, a real `<label for>`, hints and errors tied to the input with
//! `aria-describedby`, errors in a `role="alert"` element so screen readers announce them,
//! contrast above WCAG AA in light and dark schemes, tap targets at least 48 px high.

use std::fmt::Write as _;

use super::ClientStatus;

const CSS: &str = "\
:root{color-scheme:light dark;--fg:#111;--bg:#fff;--muted:#444;--accent:#0b4f9c;--on-accent:#fff;\
--err:#a4001d;--err-bg:#fdecee;--ok:#0a5c2b;--ok-bg:#e8f5ec;--line:#6b6b6b}\
@media (prefers-color-scheme:dark){:root{--fg:#f2f2f2;--bg:#121212;--muted:#c8c8c8;\
--accent:#8cc4ff;--on-accent:#000;--err:#ff8f9e;--err-bg:#3a0d14;--ok:#8fe3ad;--ok-bg:#0d2e19;\
--line:#9a9a9a}}\
*{box-sizing:border-box}\
body{margin:0;background:var(--bg);color:var(--fg);\
font:1.125rem/1.5 system-ui,-apple-system,\"Segoe UI\",Roboto,sans-serif}\
main{max-width:30rem;margin:0 auto;padding:1.5rem 1rem 3rem}\
h1{font-size:1.625rem;line-height:1.25;margin:.5rem 0 1rem}\
label{display:block;font-weight:600;margin-top:1rem}\
.hint{color:var(--muted);margin:0 0 .5rem}\
input{display:block;width:100%;min-height:3rem;padding:.5rem .75rem;font:inherit;\
font-size:1.375rem;letter-spacing:.1em;text-transform:uppercase;color:var(--fg);\
background:var(--bg);border:2px solid var(--line);border-radius:.5rem}\
input[aria-invalid=true]{border-color:var(--err)}\
button,.button{display:block;width:100%;min-height:3rem;margin:1rem 0;padding:.75rem 1rem;\
font:inherit;font-weight:600;text-align:center;text-decoration:none;color:var(--on-accent);\
background:var(--accent);border:0;border-radius:.5rem;cursor:pointer}\
a{color:var(--accent)}\
:focus-visible{outline:3px solid var(--accent);outline-offset:3px}\
.alert,.ok{padding:.75rem 1rem;margin:0 0 1rem;border-radius:.25rem;border-left:.375rem solid}\
.alert{border-color:var(--err);background:var(--err-bg)}\
.ok{border-color:var(--ok);background:var(--ok-bg)}\
.alert p,.ok p{margin:0}\
dl{display:grid;grid-template-columns:auto 1fr;gap:.5rem 1rem;font-size:1.25rem;margin:1rem 0}\
dt{color:var(--muted)}dd{margin:0;font-weight:600}";

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

/// Time left as a person reads it: "45 s", "12 min", "1 h 12 min", "2 d 3 h". Rounded down,
/// so the page never promises more than is left.
pub fn format_duration(seconds: u64) -> String {
    let minutes = seconds / 60;
    let hours = minutes / 60;
    let days = hours / 24;
    match (days, hours % 24, minutes % 60) {
        _ if seconds < 60 => format!("{seconds} s"),
        _ if minutes < 60 => format!("{minutes} min"),
        (0, h, 0) => format!("{h} h"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, 0, _) => format!("{d} d"),
        (d, h, _) => format!("{d} d {h} h"),
    }
}

/// Data left in megabytes as codes are sold (MB = 2^20 bytes, the backend's unit): "0 MB",
/// "less than 0.1 MB", "4.7 MB", "1,234 MB". Rounded down, like the time.
pub fn format_megabytes(bytes: u64) -> String {
    const MB: u128 = 1 << 20;
    let tenths = u128::from(bytes) * 10 / MB;
    match tenths {
        _ if bytes == 0 => "0 MB".to_owned(),
        0 => "less than 0.1 MB".to_owned(),
        t if t < 100 => format!("{}.{} MB", t / 10, t % 10),
        t => format!(
            "{} MB",
            group_thousands(u64::try_from(t / 10).unwrap_or(u64::MAX))
        ),
    }
}

fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The frame every page shares. `title` is escaped; `body` is trusted markup from this file.
fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title} · Wi-Fi access</title>\n<style>{CSS}</style>\n</head>\n<body>\n\
         <main>\n{body}</main>\n</body>\n</html>\n",
        title = escape(title),
    )
}

fn alert(id: &str, text: &str) -> String {
    format!(
        "<div id=\"{id}\" class=\"alert\" role=\"alert\"><p>{}</p></div>\n",
        escape(text)
    )
}

/// The code form. `error` is shown in an alert tied to the input; `typed` (what the person
/// sent, if anything) is put back into the input so a typo can be fixed rather than retyped.
pub fn form(error: Option<&str>, typed: &str) -> String {
    let mut body = String::from(
        "<h1>Get online</h1>\n<p>Enter the access code you got from the Wi-Fi provider.</p>\n",
    );
    if let Some(text) = error {
        body.push_str(&alert("code-error", text));
    }
    let (described_by, invalid) = match error {
        Some(_) => ("code-hint code-error", " aria-invalid=\"true\""),
        None => ("code-hint", ""),
    };
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/login\">\n\
         <label for=\"code\">Access code</label>\n\
         <p id=\"code-hint\" class=\"hint\">8 letters and digits, like ABCD 2345</p>\n\
         <input id=\"code\" name=\"code\" type=\"text\" inputmode=\"text\" \
         autocapitalize=\"characters\" autocomplete=\"one-time-code\" autocorrect=\"off\" \
         spellcheck=\"false\" maxlength=\"{max}\" required aria-describedby=\"{described_by}\"\
         {invalid} value=\"{value}\">\n\
         <button type=\"submit\">Get online</button>\n</form>\n\
         <p><a href=\"/status\">Already online? See what is left</a></p>\n",
        max = super::form::MAX_CODE_CHARS,
        value = escape(typed),
    );
    page(
        if error.is_some() {
            "Try again"
        } else {
            "Get online"
        },
        &body,
    )
}

/// Which page shows a client's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Online {
    /// Right after a code was accepted.
    JustNow,
    /// `/status`, `/` or any other page asked for by a client that is online.
    Status,
}

/// The success and status page: data and time left.
pub fn online(status: &ClientStatus, when: Online) -> String {
    let intro = match when {
        Online::JustNow => {
            "<div class=\"ok\" role=\"status\"><p>Your code was accepted. \
             You can use the internet now.</p></div>\n"
        }
        Online::Status => "<p>This device is connected to the internet.</p>\n",
    };
    // A code without an expiry still has a session limit: say which one the time is.
    let (time_label, after) = if status.code_expires {
        (
            "Time left",
            "When either runs out, this device is disconnected; enter a new code to continue.",
        )
    } else {
        (
            "Session time left",
            "Your code does not expire. When the session time runs out, enter the same code \
             again to go on with the data it has left; when the data runs out, enter a new code.",
        )
    };
    let body = format!(
        "<h1>You are online</h1>\n{intro}\
         <dl>\n<dt>Data left</dt><dd>{data}</dd>\n<dt>{time_label}</dt><dd>{time}</dd>\n</dl>\n\
         <p>{after}</p>\n\
         <a class=\"button\" href=\"/status\">Check what is left</a>\n",
        data = format_megabytes(status.bytes_left),
        time = format_duration(status.seconds_left),
    );
    page("You are online", &body)
}

/// `/status` for a client that is not online.
pub fn not_online() -> String {
    page(
        "Not online",
        "<h1>You are not online yet</h1>\n\
         <p>This device has no access code in use.</p>\n\
         <a class=\"button\" href=\"/\">Enter an access code</a>\n",
    )
}

/// A page for a request the portal cannot serve (wrong method, and the like).
pub fn message(title: &str, text: &str) -> String {
    let body = format!(
        "<h1>{}</h1>\n{}<a class=\"button\" href=\"/\">Go to the access code page</a>\n",
        escape(title),
        alert("message", text),
    );
    page(title, &body)
}

/// The body of the redirect to the portal, for clients that do not follow redirects.
pub fn redirect(url: &str) -> String {
    let body = format!(
        "<h1>Wi-Fi login</h1>\n<p>This network needs an access code.</p>\n\
         <a class=\"button\" href=\"{}\">Go to the login page</a>\n",
        escape(url)
    );
    page("Wi-Fi login", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let html = form(Some("bad <b>"), "\"><script>alert(1)</script>");
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("value=\"&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;\""));
        assert!(html.contains("<p>bad &lt;b&gt;</p>"));
    }

    #[test]
    fn the_form_is_accessible() {
        let plain = form(None, "");
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
        let failed = form(Some("That code is not valid."), "abcd");
        assert!(failed.contains("role=\"alert\"><p>That code is not valid.</p>"));
        assert!(failed.contains("aria-describedby=\"code-hint code-error\" aria-invalid=\"true\""));
        assert!(failed.contains("value=\"abcd\""));
    }

    #[test]
    fn no_page_loads_anything_from_elsewhere() {
        let status = ClientStatus {
            bytes_left: 1,
            seconds_left: 1,
            code_expires: true,
        };
        for html in [
            form(Some("x"), "y"),
            online(&status, Online::JustNow),
            online(&status, Online::Status),
            not_online(),
            message("Nope", "No."),
            redirect("http://10.66.0.1:8080/"),
        ] {
            assert!(html.starts_with("<!doctype html>"));
            assert!(html.contains("<html lang=\"en\">"));
            for external in ["<script", "<link", "<img", "src=", "@import", "url("] {
                assert!(!html.contains(external), "{external} in {html}");
            }
        }
    }

    #[test]
    fn status_pages_show_what_is_left() {
        let status = ClientStatus {
            bytes_left: 512 * 1_048_576 + 300_000,
            seconds_left: 4_320,
            code_expires: true,
        };
        let html = online(&status, Online::JustNow);
        assert!(html.contains("<dd>512 MB</dd>"), "{html}");
        assert!(html.contains("<dd>1 h 12 min</dd>"), "{html}");
        assert!(html.contains("Your code was accepted"));
        assert!(!online(&status, Online::Status).contains("Your code was accepted"));
        assert!(not_online().contains("href=\"/\""));
        let no_expiry = ClientStatus {
            code_expires: false,
            ..status
        };
        let html = online(&no_expiry, Online::Status);
        assert!(
            html.contains("<dt>Session time left</dt><dd>1 h 12 min</dd>"),
            "{html}"
        );
        assert!(html.contains("Your code does not expire"), "{html}");
        assert!(!html.contains("<dt>Time left</dt>"), "{html}");
    }

    #[test]
    fn messages_and_redirects_escape() {
        assert!(message("<x>", "<y>").contains("<h1>&lt;x&gt;</h1>"));
        assert!(message("<x>", "<y>").contains("<p>&lt;y&gt;</p>"));
        assert!(
            redirect("http://a/?b=\"c\"&d").contains("href=\"http://a/?b=&quot;c&quot;&amp;d\"")
        );
    }

    #[test]
    fn durations_read_like_a_person_would_say_them() {
        for (seconds, text) in [
            (0, "0 s"),
            (45, "45 s"),
            (59, "59 s"),
            (60, "1 min"),
            (119, "1 min"),
            (3_599, "59 min"),
            (3_600, "1 h"),
            (4_320, "1 h 12 min"),
            (86_399, "23 h 59 min"),
            (86_400, "1 d"),
            (97_200, "1 d 3 h"),
            (172_800 + 60, "2 d"),
            (u64::MAX, "213503982334601 d 7 h"),
        ] {
            assert_eq!(format_duration(seconds), text, "{seconds}");
        }
    }

    #[test]
    fn megabytes_round_down() {
        for (bytes, text) in [
            (0, "0 MB"),
            (1, "less than 0.1 MB"),
            (104_857, "less than 0.1 MB"),
            (104_858, "0.1 MB"),
            (5 * 1_048_576, "5.0 MB"),
            (5 * 1_048_576 - 1, "4.9 MB"),
            (10 * 1_048_576 - 1, "9.9 MB"),
            (10 * 1_048_576, "10 MB"),
            (1234 * 1_048_576 + 1, "1,234 MB"),
            (u64::MAX, "17,592,186,044,415 MB"),
        ] {
            assert_eq!(format_megabytes(bytes), text, "{bytes}");
        }
    }
}
