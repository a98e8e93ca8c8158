//! Reading the code form: `application/x-www-form-urlencoded`, parsed here because axum's
//! `form` feature is off, with a hard limit on the body so a client cannot make the Pi buffer
//! more than a few kilobytes per request.
//!
//! The form has a `code` (required) and, where the portal offers sign-in with a network
//! account, an `email` and a `password` (both optional). The password is kept as a
//! [`Secret`]: it cannot be printed by accident, and nothing here echoes it.

use std::pin::Pin;

use axum::body::{Body, HttpBody};
use axum::http::HeaderMap;
use axum::http::header::CONTENT_TYPE;
use edgeshare_shared::secret::Secret;

/// The largest body accepted. A form with every field at its longest, each character
/// percent-encoded UTF-8 of 4 bytes (12 bytes on the wire), is under 7 KiB; a real one is a
/// few dozen bytes, a few hundred with an account.
pub const MAX_BODY_BYTES: usize = 8192;
/// The longest `code` field accepted, in characters (a code is 8, with room for spaces).
pub const MAX_CODE_CHARS: usize = 64;
/// The longest `email` accepted, in characters: the longest address SMTP can carry.
pub const MAX_EMAIL_CHARS: usize = 254;
/// The longest `password` accepted, in characters.
pub const MAX_PASSWORD_CHARS: usize = 256;

const FORM_TYPE: &str = "application/x-www-form-urlencoded";

/// Why a request did not carry a usable form. No variant holds what was sent.
#[derive(Debug, thiserror::Error)]
pub enum FormError {
    #[error("request body over {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("content type is {0:?}, not {FORM_TYPE}")]
    NotAForm(Option<String>),
    #[error(
        "form is not UTF-8, does not have exactly one `code` field, or has an `email` or `password` field twice"
    )]
    Malformed,
    #[error("`code` field is {0} characters long (at most {MAX_CODE_CHARS})")]
    CodeTooLong(usize),
    #[error("`email` field is {0} characters long (at most {MAX_EMAIL_CHARS})")]
    EmailTooLong(usize),
    #[error("`password` field is {0} characters long (at most {MAX_PASSWORD_CHARS})")]
    PasswordTooLong(usize),
    #[error("cannot read the request body: {0}")]
    Unreadable(#[source] axum::Error),
}

/// What the form carried, as typed (nothing checked yet but the lengths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginForm {
    pub code: String,
    /// Empty when not sent.
    pub email: String,
    /// Empty when not sent.
    pub password: Secret,
}

/// The form of a request, as typed.
pub async fn read_form(headers: &HeaderMap, body: Body) -> Result<LoginForm, FormError> {
    // Content-Length (when sent) is the size hint: refuse before reading anything.
    let announced = usize::try_from(body.size_hint().lower()).unwrap_or(usize::MAX);
    if announced > MAX_BODY_BYTES {
        return Err(FormError::TooLarge);
    }
    check_content_type(headers)?;
    let bytes = read_limited(body, MAX_BODY_BYTES).await?;
    parse_form(&bytes)
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

/// The fields of an urlencoded form: exactly one `code`, at most one `email` and one
/// `password` (missing: empty). Other fields are ignored; a missing or repeated `code`, or a
/// repeated `email` or `password`, is malformed (which of two values would we check?).
pub fn parse_form(body: &[u8]) -> Result<LoginForm, FormError> {
    if std::str::from_utf8(body).is_err() {
        return Err(FormError::Malformed);
    }
    let (mut code, mut email, mut password) = (None, None, None);
    for (name, value) in url::form_urlencoded::parse(body) {
        let slot = match &*name {
            "code" => &mut code,
            "email" => &mut email,
            "password" => &mut password,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(FormError::Malformed);
        }
    }
    let code = code.ok_or(FormError::Malformed)?;
    let chars = code.chars().count();
    if chars > MAX_CODE_CHARS {
        return Err(FormError::CodeTooLong(chars));
    }
    let email = email.unwrap_or_default();
    let chars = email.chars().count();
    if chars > MAX_EMAIL_CHARS {
        return Err(FormError::EmailTooLong(chars));
    }
    let password = password.unwrap_or_default();
    let chars = password.chars().count();
    if chars > MAX_PASSWORD_CHARS {
        return Err(FormError::PasswordTooLong(chars));
    }
    Ok(LoginForm {
        code: code.into_owned(),
        email: email.into_owned(),
        password: Secret::new(password),
    })
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
            let form = parse_form(body).unwrap();
            assert_eq!(form.code, code);
            assert_eq!((form.email.as_str(), form.password.expose()), ("", ""));
        }
    }

    #[test]
    fn the_account_fields_are_decoded_and_optional() {
        let form =
            parse_form(b"email=consumer%40example.com&code=ABCD2345&password=Consumer%40123+%26")
                .unwrap();
        assert_eq!(form.code, "ABCD2345");
        assert_eq!(form.email, "consumer@example.com");
        assert_eq!(form.password.expose(), "Consumer@123 &");
        assert!(
            !format!("{form:?}").contains("Consumer@123"),
            "the password is never printed"
        );
        let form = parse_form(b"code=ABCD2345&email=&password=").unwrap();
        assert_eq!((form.email.as_str(), form.password.expose()), ("", ""));
    }

    #[test]
    fn malformed_forms_are_refused() {
        for body in [
            &b""[..],
            b"other=1",
            b"code=a&code=b",
            b"code=\xff",
            b"email=a%40b.c&password=x",
            b"code=a&email=a&email=b",
            b"code=a&password=x&password=y",
        ] {
            assert!(
                matches!(parse_form(body), Err(FormError::Malformed)),
                "{body:?}"
            );
        }
        let long = format!("code={}", "A".repeat(MAX_CODE_CHARS + 1));
        assert!(matches!(
            parse_form(long.as_bytes()),
            Err(FormError::CodeTooLong(65))
        ));
        let just_fits = format!("code={}", "é".repeat(MAX_CODE_CHARS));
        assert!(parse_form(just_fits.as_bytes()).is_ok());
        let long = format!("code=A&email={}", "e".repeat(MAX_EMAIL_CHARS + 1));
        assert!(matches!(
            parse_form(long.as_bytes()),
            Err(FormError::EmailTooLong(255))
        ));
        let long = format!("code=A&password={}", "p".repeat(MAX_PASSWORD_CHARS + 1));
        let err = parse_form(long.as_bytes()).unwrap_err();
        assert!(matches!(err, FormError::PasswordTooLong(257)));
        assert!(!err.to_string().contains("ppp"), "{err}");
    }

    /// Every form within the field limits fits the body limit, however the browser encodes
    /// it: each character a 4-byte one, percent-encoded.
    #[tokio::test]
    async fn the_longest_form_fits_the_body_limit() {
        let widest = |chars: usize| "😀".repeat(chars);
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("code", &widest(MAX_CODE_CHARS))
            .append_pair("email", &widest(MAX_EMAIL_CHARS))
            .append_pair("password", &widest(MAX_PASSWORD_CHARS))
            .finish();
        assert!(body.len() <= MAX_BODY_BYTES, "{} bytes", body.len());
        let form = read_form(&form_headers(FORM_TYPE), Body::from(body))
            .await
            .unwrap();
        assert_eq!(form.password.expose().chars().count(), MAX_PASSWORD_CHARS);
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
        let ok = read_form(&headers, Body::from("code=ABCD2345")).await;
        assert_eq!(ok.unwrap().code, "ABCD2345");
        let big = format!("code=A&pad={}", "x".repeat(MAX_BODY_BYTES));
        assert!(matches!(
            read_form(&headers, Body::from(big)).await,
            Err(FormError::TooLarge)
        ));
        // Exactly at the limit is fine (and then the code is too long).
        let at_limit = format!("code={}", "A".repeat(MAX_BODY_BYTES - 5));
        assert!(matches!(
            read_form(&headers, Body::from(at_limit)).await,
            Err(FormError::CodeTooLong(_))
        ));
    }
}
