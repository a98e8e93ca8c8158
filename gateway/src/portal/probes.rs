//! The replies operating systems expect from their captive-portal probes once a client is
//! online. While it is captive, the same paths get the redirect to the portal instead: that
//! difference is how phones and laptops decide to open (or close) their login window.
//!
//! Probes are matched on the path alone: the Host header names Google, Apple, Microsoft or
//! Mozilla, whose port-80 traffic nftables sends here while the client is captive.

use axum::http::StatusCode;

/// One probe and its success reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub path: &'static str,
    pub status: StatusCode,
    /// `None` for an empty reply.
    pub content_type: Option<&'static str>,
    pub body: &'static str,
}

const APPLE_SUCCESS: &str = "<HTML><HEAD><TITLE>Success</TITLE></HEAD><BODY>Success</BODY></HTML>";
const FIREFOX_CANONICAL: &str =
    r#"<meta http-equiv="refresh" content="0;url=https://support.mozilla.org/kb/captive-portal"/>"#;

const fn empty(path: &'static str) -> Probe {
    Probe {
        path,
        status: StatusCode::NO_CONTENT,
        content_type: None,
        body: "",
    }
}

const fn ok(path: &'static str, content_type: &'static str, body: &'static str) -> Probe {
    Probe {
        path,
        status: StatusCode::OK,
        content_type: Some(content_type),
        body,
    }
}

const HTML: &str = "text/html";
const TEXT: &str = "text/plain";

/// Every probe the portal answers.
pub const PROBES: &[Probe] = &[
    // Android and ChromeOS (connectivitycheck.gstatic.com, clients3.google.com).
    empty("/generate_204"),
    empty("/gen_204"),
    // Apple (captive.apple.com, www.apple.com).
    ok("/hotspot-detect.html", HTML, APPLE_SUCCESS),
    ok("/library/test/success.html", HTML, APPLE_SUCCESS),
    // Windows (www.msftconnecttest.com, www.msftncsi.com).
    ok("/connecttest.txt", TEXT, "Microsoft Connect Test"),
    ok("/ncsi.txt", TEXT, "Microsoft NCSI"),
    // Firefox (detectportal.firefox.com).
    ok("/canonical.html", HTML, FIREFOX_CANONICAL),
    ok("/success.txt", TEXT, "success\n"),
];

/// The probe asked for by `path`, if it is one.
pub fn find(path: &str) -> Option<&'static Probe> {
    PROBES.iter().find(|probe| probe.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_found_by_exact_path() {
        assert_eq!(
            find("/generate_204").map(|p| p.status),
            Some(StatusCode::NO_CONTENT)
        );
        assert_eq!(find("/success.txt").map(|p| p.body), Some("success\n"));
        for not_a_probe in ["/", "/generate_204/", "/GENERATE_204", "/x/ncsi.txt", ""] {
            assert_eq!(find(not_a_probe), None, "{not_a_probe}");
        }
    }

    #[test]
    fn empty_replies_have_no_content_type() {
        for probe in PROBES {
            assert_eq!(
                probe.status == StatusCode::NO_CONTENT,
                probe.content_type.is_none(),
                "{}",
                probe.path
            );
            assert_eq!(probe.body.is_empty(), probe.content_type.is_none());
        }
    }
}
