//! `portal`: raw bytes, as a client would send them on one TCP connection, into hyper's HTTP/1
//! server with the portal's router behind it (as `portal::serve` sets it up), over an
//! in-memory pipe. Also `form`: the form parser itself, `parse_form` and `read_form`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use edgeshare_gateway::net::Mac;
use edgeshare_gateway::portal::{self, Account, ClientStatus, Gate, PortalSettings, Redeem};
use edgeshare_gateway::refusal::Refusal;
use edgeshare_shared::code::AccessCode;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tower::ServiceExt as _;

use crate::engine::{Target, signature};
use crate::form;

/// A gate whose answers depend only on the client, the code and whether an account came
/// with it: devices with an odd last address byte are online; the code's first character
/// picks the redemption's outcome, or with an account its second character. It offers
/// accounts, so the form's account part (and the email put back into it) is fuzzed too.
#[derive(Debug)]
struct FuzzGate;

fn online(ip: IpAddr) -> bool {
    let last = match ip.to_canonical() {
        IpAddr::V4(v4) => v4.octets()[3],
        IpAddr::V6(v6) => v6.octets()[15],
    };
    last % 2 == 1
}

const STATUS: ClientStatus = ClientStatus {
    bytes_left: 123_456_789,
    seconds_left: 3_600,
    code_expires: true,
    other_account: false,
};

impl Gate for FuzzGate {
    async fn redeem(&self, _ip: IpAddr, code: AccessCode, account: Option<Account>) -> Redeem {
        if account.is_some() {
            return match code.as_str().as_bytes().get(1).copied().unwrap_or(0) % 5 {
                0 => Ok(STATUS),
                1 => Err(Refusal::WrongAccount),
                2 => Err(Refusal::NotConsumer),
                3 => Err(Refusal::AccountUnreachable),
                _ => Err(Refusal::OtherAccount),
            };
        }
        match code.as_str().bytes().next().unwrap_or(0) % 9 {
            0 => Ok(STATUS),
            1 => Err(Refusal::Invalid),
            2 => Err(Refusal::Expired),
            3 => Err(Refusal::UsedUp),
            4 => Err(Refusal::Revoked),
            5 => Err(Refusal::NotOurs),
            6 => Err(Refusal::BackendUnreachable),
            7 => Err(Refusal::UnknownDevice),
            _ => Ok(ClientStatus {
                code_expires: false,
                ..STATUS
            }),
        }
    }

    async fn status(&self, ip: IpAddr) -> Option<ClientStatus> {
        online(ip).then_some(STATUS)
    }

    /// IPv4 peers are each a device of their own; IPv6 ones have no known MAC (the portal's
    /// shared bucket).
    async fn mac(&self, ip: IpAddr) -> Option<Mac> {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let [a, b, c, d] = v4.octets();
                Some(Mac([2, 0, a, b, c, d]))
            }
            IpAddr::V6(_) => None,
        }
    }

    fn accounts(&self) -> bool {
        true
    }
}

/// Peers the input is sent from, picked by its length: captive and online, IPv4, IPv4 on a
/// dual-stack socket, IPv6.
const PEERS: [&str; 4] = [
    "10.66.0.2:50000",
    "10.66.0.3:50001",
    "[::ffff:10.66.0.5]:50002",
    "[fe80::2]:50003",
];

const PORTAL_URL: &str = "http://10.66.0.1:8080/";

/// How long one connection may take here before it counts as a hang (the real server gives a
/// request 30 s, but nothing here waits on anything outside the process).
const CONNECTION_LIMIT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct PortalTarget {
    runtime: tokio::runtime::Runtime,
    gate: Arc<FuzzGate>,
}

impl PortalTarget {
    pub fn new() -> Self {
        PortalTarget {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("cannot start a tokio runtime: {e}")),
            gate: Arc::new(FuzzGate),
        }
    }
}

impl Default for PortalTarget {
    fn default() -> Self {
        Self::new()
    }
}

impl PortalTarget {
    /// The status of each reply to `input`'s requests, after checking every reply's properties.
    pub fn statuses(&mut self, input: &[u8]) -> Result<Vec<u16>, String> {
        let peer: SocketAddr = PEERS[input.len() % PEERS.len()]
            .parse()
            .map_err(|e| format!("bad peer: {e}"))?;
        let gate = self.gate.clone();
        let reply = self
            .runtime
            .block_on(async {
                tokio::time::timeout(CONNECTION_LIMIT, exchange(gate, peer, input)).await
            })
            .map_err(|_| {
                format!(
                    "the connection did not finish within {} s",
                    CONNECTION_LIMIT.as_secs()
                )
            })?;
        check_reply(&reply)
    }
}

/// Sends `bytes` on one connection (then half-closes it) and returns all that came back.
async fn exchange(gate: Arc<FuzzGate>, peer: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    // A fresh router per input: each input starts with an empty rate limiter.
    let app = portal::router(gate, PortalSettings::new(PORTAL_URL));
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let service = hyper::service::service_fn(
        move |mut request: axum::http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(request.map(Body::new))
        },
    );
    // As `portal::serve` builds it, but for `half_close`: the input ends with a half-close
    // (so the exchange ends without waiting out a timeout), and without it hyper drops the
    // connection at that EOF before answering. Parsing and routing are the same.
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(portal::HEADER_TIMEOUT)
        .half_close(true)
        .serve_connection(hyper_util::rt::TokioIo::new(server), service);
    let talk = async {
        // The server may close first (a parse error): a failed write is expected then.
        let _ = client.write_all(bytes).await;
        let _ = client.shutdown().await;
        let mut reply = Vec::new();
        let _ = client.read_to_end(&mut reply).await;
        reply
    };
    let (_, reply) = tokio::join!(connection, talk);
    reply
}

/// One response's status and headers (names lowercased), from where `text` starts.
fn head(text: &str) -> Option<(u16, Vec<(String, String)>)> {
    let end = text.find("\r\n\r\n")?;
    let mut lines = text[..end].split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some((status, headers))
}

/// The properties every reply must have.
fn check_reply(reply: &[u8]) -> Result<Vec<u16>, String> {
    let text = String::from_utf8_lossy(reply);
    if text.to_ascii_lowercase().contains("<fuzz") {
        return Err("input reached a page unescaped (`<fuzz` in a reply)".to_owned());
    }
    let mut statuses = Vec::new();
    for (at, _) in text.match_indices("HTTP/1.1 ") {
        let Some((status, headers)) = head(&text[at..]) else {
            return Err(format!("a reply without a complete head at byte {at}"));
        };
        let has = |name: &str| headers.iter().any(|(n, _)| n == name);
        let value = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        // hyper's own error replies (a request it could not parse) are bare; every reply of
        // the portal's router carries Cache-Control.
        let bare_hyper_error = !has("content-type")
            && value("content-length") == Some("0")
            && matches!(status, 400 | 408 | 413 | 414 | 417 | 431 | 501 | 505);
        if !has("cache-control") && !bare_hyper_error && !(100..200).contains(&status) {
            return Err(format!("reply {status} has no Cache-Control: {headers:?}"));
        }
        if status == 500 {
            return Err("the portal answered 500 (its gate never fails)".to_owned());
        }
        if status == 503 && value("retry-after") != Some("60") {
            return Err("503 without Retry-After: 60".to_owned());
        }
        // Interim replies (100 Continue to `Expect`) have no headers of their own.
        if (100..200).contains(&status) {
            continue;
        }
        // The portal's own pages (an OS probe's exact success reply is plain `text/html`).
        if value("content-type") == Some("text/html; charset=utf-8")
            && !has("content-security-policy")
        {
            return Err(format!(
                "HTML reply {status} without Content-Security-Policy: {headers:?}"
            ));
        }
        statuses.push(status);
    }
    Ok(statuses)
}

impl Target for PortalTarget {
    fn name(&self) -> &'static str {
        "portal"
    }

    fn run(&mut self, input: &[u8]) -> Result<u64, String> {
        let statuses = self.statuses(input)?;
        let shape: Vec<String> = statuses.iter().map(u16::to_string).collect();
        Ok(signature(&[&shape.join(",")]))
    }

    fn dictionary(&self) -> &'static [&'static str] {
        &[
            "GET ",
            "POST ",
            "HEAD ",
            "PUT ",
            "OPTIONS ",
            "CONNECT ",
            " HTTP/1.1\r\n",
            " HTTP/1.0\r\n",
            " HTTP/2.0\r\n",
            "/",
            "/login",
            "/status",
            "/captive-portal/api",
            "/generate_204",
            "/hotspot-detect.html",
            "/connecttest.txt",
            "/ncsi.txt",
            "/success.txt",
            "/canonical.html",
            "/terms",
            "/brand/logo",
            "?a=b",
            "?lang=es",
            "?lang=%3Cfuzz%3E",
            "#frag",
            "//",
            "/..",
            "%2F",
            "%00",
            "Host: 10.66.0.1:8080\r\n",
            "Host: captive.apple.com\r\n",
            "Host: [::1]:80\r\n",
            "Host: 10.66.0.1:99999\r\n",
            "Host: a@b\r\n",
            "Host: \r\n",
            "Content-Type: application/x-www-form-urlencoded\r\n",
            "Content-Type: application/x-www-form-urlencoded; charset=UTF-8\r\n",
            "Content-Type: text/plain\r\n",
            "Content-Length: ",
            "Content-Length: 0\r\n",
            "Content-Length: 4097\r\n",
            "Content-Length: 8193\r\n",
            "Transfer-Encoding: chunked\r\n",
            "Transfer-Encoding: gzip, chunked\r\n",
            "Connection: close\r\n",
            "Connection: keep-alive\r\n",
            "Expect: 100-continue\r\n",
            "Accept-Language: ",
            "Accept-Language: es-MX,es;q=0.9,*;q=0.1\r\n",
            "Accept-Language: fr;q=0, *\r\n",
            ";q=0.",
            ";q=1.000",
            "Cookie: lang=",
            "Cookie: lang=fr\r\n",
            "\r\n\r\n",
            "0\r\n\r\n",
            "5\r\ncode=\r\n",
            "ffffffffffffffff\r\n",
            "code=",
            "code=ABCD2345",
            "code=abcd+2345",
            "&code=",
            "&email=",
            "&password=",
            "&email=a%40b.c&password=p",
            "other=1&",
            "%3Cfuzz%3E",
            "<fuzz>",
            "%22%3E%3Cfuzz",
            "\"><fuzz ",
            "%ZZ",
            "%E2%80",
            "+",
        ]
    }

    fn max_len(&self) -> usize {
        12 * 1024
    }
}

/// `form`: the code form's parser. The first line of the input is the `Content-Type`, the
/// rest the body.
#[derive(Debug)]
pub struct FormTarget {
    runtime: tokio::runtime::Runtime,
}

impl FormTarget {
    pub fn new() -> Self {
        FormTarget {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("cannot start a tokio runtime: {e}")),
        }
    }
}

impl Default for FormTarget {
    fn default() -> Self {
        Self::new()
    }
}

/// The form encoded again: its fields (the account's only if given), another field first or
/// last.
fn encode_form(parsed: &form::LoginForm, other_first: bool) -> String {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    if other_first {
        form.append_pair("other", "1&code=x&email=y");
    }
    form.append_pair("code", &parsed.code);
    if !parsed.email.is_empty() {
        form.append_pair("email", &parsed.email);
    }
    if !parsed.password.is_empty() {
        form.append_pair("password", parsed.password.expose());
    }
    if !other_first {
        form.append_pair("other", "2");
    }
    form.finish()
}

fn kind(result: &Result<form::LoginForm, form::FormError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(form::FormError::TooLarge) => "too-large",
        Err(form::FormError::NotAForm(_)) => "not-a-form",
        Err(form::FormError::Malformed) => "malformed",
        Err(form::FormError::CodeTooLong(_)) => "too-long",
        Err(form::FormError::EmailTooLong(_)) => "email-too-long",
        Err(form::FormError::PasswordTooLong(_)) => "password-too-long",
        Err(form::FormError::Unreadable(_)) => "unreadable",
    }
}

impl Target for FormTarget {
    fn name(&self) -> &'static str {
        "form"
    }

    fn run(&mut self, input: &[u8]) -> Result<u64, String> {
        let (content_type, body) = match input.iter().position(|&b| b == b'\n') {
            Some(at) => (&input[..at], &input[at + 1..]),
            None => (&b""[..], input),
        };
        let parsed = form::parse_form(body);
        if let Ok(fields) = &parsed {
            if std::str::from_utf8(body).is_err() {
                return Err("a form came out of a body that is not UTF-8".to_owned());
            }
            for (name, chars, max) in [
                ("code", fields.code.chars().count(), form::MAX_CODE_CHARS),
                ("email", fields.email.chars().count(), form::MAX_EMAIL_CHARS),
                (
                    "password",
                    fields.password.expose().chars().count(),
                    form::MAX_PASSWORD_CHARS,
                ),
            ] {
                if chars > max {
                    return Err(format!("a {name} of {chars} characters was accepted"));
                }
            }
            // The parsed form re-encodes to one that parses back to the same fields.
            for other_first in [false, true] {
                let again = encode_form(fields, other_first);
                match form::parse_form(again.as_bytes()) {
                    Ok(back) if &back == fields => {}
                    other => {
                        return Err(format!(
                            "{fields:?} re-encoded as {again:?} parses as {other:?}"
                        ));
                    }
                }
            }
        }
        // The whole reader: what `POST /login` calls.
        let mut headers = HeaderMap::new();
        if let Ok(value) = axum::http::HeaderValue::from_bytes(content_type) {
            headers.insert(CONTENT_TYPE, value);
        }
        let read = self
            .runtime
            .block_on(form::read_form(&headers, Body::from(body.to_vec())));
        let form_type = headers
            .get(CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .and_then(|t| t.split(';').next().map(|e| e.trim().to_ascii_lowercase()))
            .is_some_and(|essence| essence == "application/x-www-form-urlencoded");
        let expected = if body.len() > form::MAX_BODY_BYTES {
            "too-large"
        } else if !form_type {
            "not-a-form"
        } else {
            kind(&parsed)
        };
        if kind(&read) != expected {
            return Err(format!(
                "read_form gave {} where {expected} was expected ({read:?})",
                kind(&read)
            ));
        }
        if expected == "ok" && read.as_ref().ok() != parsed.as_ref().ok() {
            return Err(format!(
                "read_form {read:?} differs from parse_form {parsed:?}"
            ));
        }
        Ok(signature(&[kind(&parsed), kind(&read)]))
    }

    fn dictionary(&self) -> &'static [&'static str] {
        &[
            "application/x-www-form-urlencoded",
            "Application/X-WWW-Form-Urlencoded; charset=UTF-8",
            "multipart/form-data",
            "code=",
            "&code=",
            "code",
            "&email=",
            "&password=",
            "email",
            "password",
            "%40",
            "&",
            "+",
            "%",
            "%2",
            "%20",
            "%26code%3D",
            "%C3%A9",
            "%FF",
            "%E2%80",
            "ABCD2345",
            "=",
            "==",
            ";",
        ]
    }

    fn max_len(&self) -> usize {
        10 * 1024
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_reach_the_router_and_replies_come_back() {
        let mut portal = PortalTarget::new();
        let get = b"GET / HTTP/1.1\r\nHost: 10.66.0.1:8080\r\n\r\n";
        assert_eq!(portal.statuses(get), Ok(vec![200]));
        let body = "code=BBCD2345";
        let login = format!(
            "POST /login HTTP/1.1\r\nHost: 10.66.0.1:8080\r\nContent-Type: \
             application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        // 'B' picks `Err(Refusal::Revoked)`.
        assert_eq!(portal.statuses(login.as_bytes()), Ok(vec![403]));
        let two = b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\nPUT / HTTP/1.1\r\n\r\n";
        assert!(!portal.statuses(two).unwrap().is_empty());
        assert_eq!(portal.statuses(b"\x00\x01garbage\r\n\r\n"), Ok(vec![400]));
    }

    #[test]
    fn an_unescaped_input_in_a_page_is_caught() {
        let reply = b"HTTP/1.1 200 OK\r\ncache-control: no-store\r\n\r\n<FUZZ>";
        assert!(check_reply(reply).is_err());
    }
}
