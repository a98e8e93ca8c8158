//! Reading the code form: `application/x-www-form-urlencoded`, parsed here because axum's
//! `form` feature is off, with a hard limit on the body so a client cannot make the Pi buffer
//! more than a few kilobytes per request.

use std::pin::Pin;

use axum::body::{Body, HttpBody};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;

/// The largest body accepted; a code form is a few dozen bytes.
pub const MAX_BODY_BYTES: usize = 4096;
/// The longest `code` field accepted, in characters (a code is 8, with room for spaces).
pub const MAX_CODE_CHARS: usize = 64;

const FORM_TYPE: &str = "application/x-www-form-urlencoded";

/// Why a request did not carry a usable `code` field.
#[derive(Debug, thiserror::Error)]
pub enum FormError {
    #[error("request body over {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("content type is {0:?}, not {FORM_TYPE}")]
    NotAForm(Option<String>),
    #[error("form is not UTF-8 or does not have exactly one `code` field")]
    Malformed,
    #[error("`code` field is {0} characters long (at most {MAX_CODE_CHARS})")]
    CodeTooLong(usize),
    #[error("cannot read the request body: {0}")]
    Unreadable(#[source] axum::Error),
}

/// The `code` field of a form request, as typed (not yet checked as a code).
pub async fn read_code(headers: &HeaderMap, body: Body) -> Result<String, FormError> {
    // Content-Length (when sent) is the size hint: refuse before reading anything.
    let announced = usize::try_from(body.size_hint().lower()).unwrap_or(usize::MAX);
    if announced > MAX_BODY_BYTES {
        return Err(FormError::TooLarge);
    }
    check_content_type(headers)?;
    let bytes = read_limited(body, MAX_BODY_BYTES).await?;
    parse_code(&bytes)
}

fn check_content_type(headers: &HeaderMap) -> Result<(), FormError> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Err(FormError::NotAForm(None));
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    // Parameters such as "; charset=UTF-8" are allowed.
    let essence = text.split(';').next().unwrap_or_default().trim();
    if essence.eq_ignore_ascii_case(FORM_TYPE) {
        Ok(())
    } else {
        Err(FormError::NotAForm(Some(text.into_owned())))
    }
}

/// Reads a body frame by frame, giving up as soon as it grows past `limit` (a chunked body
/// has no length to check up front).
async fn read_limited(mut body: Body, limit: usize) -> Result<Vec<u8>, FormError> {
    let mut bytes = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(FormError::Unreadable)?;
        if let Ok(data) = frame.into_data() {
            if bytes.len().saturating_add(data.len()) > limit {
                return Err(FormError::TooLarge);
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}

/// The one `code` field of an urlencoded form. Other fields are ignored; a missing or repeated
/// `code` is malformed (which of two values would we check?).
pub fn parse_code(body: &[u8]) -> Result<String, FormError> {
    if std::str::from_utf8(body).is_err() {
        return Err(FormError::Malformed);
    }
    let mut codes = url::form_urlencoded::parse(body).filter(|(name, _)| name == "code");
    let (Some((_, code)), None) = (codes.next(), codes.next()) else {
        return Err(FormError::Malformed);
    };
    let chars = code.chars().count();
    if chars > MAX_CODE_CHARS {
        return Err(FormError::CodeTooLong(chars));
    }
    Ok(code.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn form_headers(content_type: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_str(content_type).unwrap());
        headers
    }

    #[test]
    fn the_code_field_is_decoded() {
        for (body, code) in [
            (&b"code=ABCD2345"[..], "ABCD2345"),
            (b"code=abcd+2345", "abcd 2345"),
            (b"code=ab%2Dcd&other=1", "ab-cd"),
            (b"x=1&code=", ""),
            (b"code=%3Cb%3E", "<b>"),
        ] {
            assert_eq!(parse_code(body).unwrap(), code);
        }
    }

    #[test]
    fn malformed_forms_are_refused() {
        for body in [&b""[..], b"other=1", b"code=a&code=b", b"code=\xff"] {
            assert!(
                matches!(parse_code(body), Err(FormError::Malformed)),
                "{body:?}"
            );
        }
        let long = format!("code={}", "A".repeat(MAX_CODE_CHARS + 1));
        assert!(matches!(
            parse_code(long.as_bytes()),
            Err(FormError::CodeTooLong(65))
        ));
        let just_fits = format!("code={}", "é".repeat(MAX_CODE_CHARS));
        assert!(parse_code(just_fits.as_bytes()).is_ok());
    }

    #[test]
    fn content_types() {
        for ok in [
            "application/x-www-form-urlencoded",
            "Application/X-WWW-Form-Urlencoded; charset=UTF-8",
        ] {
            assert!(check_content_type(&form_headers(ok)).is_ok(), "{ok}");
        }
        for bad in [
            "application/json",
            "multipart/form-data; boundary=x",
            "text/plain",
        ] {
            assert!(check_content_type(&form_headers(bad)).is_err(), "{bad}");
        }
        assert!(matches!(
            check_content_type(&HeaderMap::new()),
            Err(FormError::NotAForm(None))
        ));
    }

    #[tokio::test]
    async fn bodies_are_limited() {
        let headers = form_headers(FORM_TYPE);
        let ok = read_code(&headers, Body::from("code=ABCD2345")).await;
        assert_eq!(ok.unwrap(), "ABCD2345");
        let big = format!("code=A&pad={}", "x".repeat(MAX_BODY_BYTES));
        assert!(matches!(
            read_code(&headers, Body::from(big)).await,
            Err(FormError::TooLarge)
        ));
        // Exactly at the limit is fine (and then the code is too long).
        let at_limit = format!("code={}", "A".repeat(MAX_BODY_BYTES - 5));
        assert!(matches!(
            read_code(&headers, Body::from(at_limit)).await,
            Err(FormError::CodeTooLong(_))
        ));
    }
}
