//! Access codes as the crowdsourced-internet backend issues them: 8 characters from `A-Z`
//! without `I` and `O`, and `2-9` (no 0/O, 1/I to misread on a phone keyboard).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The characters a code is made of.
pub const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
/// The length of every code.
pub const LENGTH: usize = 8;

/// A well-formed access code, upper case.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AccessCode(String);

/// Why text is not an access code; the message is fit to show a consumer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadCode {
    #[error("a code has {LENGTH} characters; this one has {0}")]
    Length(usize),
    #[error("a code has only letters and the digits 2-9; '{0}' is not one of them")]
    Character(char),
}

impl AccessCode {
    /// Reads a code as a person types it: surrounding spaces, lower case, and spaces or
    /// dashes inside ("abcd-efgh") are accepted.
    pub fn parse(text: &str) -> Result<Self, BadCode> {
        let cleaned: String = text
            .trim()
            .chars()
            .filter(|c| !matches!(c, ' ' | '-'))
            .map(|c| c.to_ascii_uppercase())
            .collect();
        if let Some(bad) = cleaned
            .chars()
            .find(|c| !c.is_ascii() || !ALPHABET.contains(&(*c as u8)))
        {
            return Err(BadCode::Character(bad));
        }
        if cleaned.len() != LENGTH {
            return Err(BadCode::Length(cleaned.chars().count()));
        }
        Ok(AccessCode(cleaned))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A code as it may appear in a log line or an error: its first two characters only, since
/// the whole code is a secret that lets anyone online.
pub fn redact(code: &str) -> String {
    format!("{}…", code.get(..2).unwrap_or(""))
}

/// A session id (`<code>-<start ms>`) with its code redacted: `AB…-1732190000000`.
pub fn redact_session(session: &str) -> String {
    match session.split_once('-') {
        Some((code, rest)) => format!("{}-{rest}", redact(code)),
        None => redact(session),
    }
}

impl std::str::FromStr for AccessCode {
    type Err = BadCode;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        AccessCode::parse(text)
    }
}

impl TryFrom<String> for AccessCode {
    type Error = BadCode;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        AccessCode::parse(&value)
    }
}

impl From<AccessCode> for String {
    fn from(code: AccessCode) -> Self {
        code.0
    }
}

impl fmt::Display for AccessCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AccessCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccessCode({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn redacted_forms_keep_two_characters() {
        assert_eq!(redact("ABCD2345"), "AB…");
        assert_eq!(redact("A"), "…");
        assert_eq!(
            redact_session("ABCD2345-1732190000000"),
            "AB…-1732190000000"
        );
        assert_eq!(redact_session("ABCD2345"), "AB…");
    }

    #[test]
    fn typed_forms_are_accepted() {
        for text in ["ABCD2345", " abcd2345 ", "abcd-2345", "ABCD 2345"] {
            assert_eq!(AccessCode::parse(text).unwrap().as_str(), "ABCD2345");
        }
    }

    #[test]
    fn bad_codes_say_why() {
        assert_eq!(AccessCode::parse("ABC"), Err(BadCode::Length(3)));
        assert_eq!(AccessCode::parse("ABCDEFG0"), Err(BadCode::Character('0')));
        assert_eq!(AccessCode::parse("ABCDEFGI"), Err(BadCode::Character('I')));
        assert_eq!(AccessCode::parse("ABCDEFGÉ"), Err(BadCode::Character('É')));
        assert_eq!(AccessCode::parse(""), Err(BadCode::Length(0)));
    }

    proptest! {
        #[test]
        fn every_code_from_the_alphabet_round_trips(indices in proptest::collection::vec(0usize..ALPHABET.len(), LENGTH)) {
            let text: String = indices.iter().map(|i| ALPHABET[*i] as char).collect();
            let code = AccessCode::parse(&text).unwrap();
            prop_assert_eq!(code.as_str(), text.as_str());
            let json = serde_json::to_string(&code).unwrap();
            prop_assert_eq!(serde_json::from_str::<AccessCode>(&json).unwrap(), code);
        }

        #[test]
        fn parse_never_panics(text in ".*") {
            let _ = AccessCode::parse(&text);
        }
    }
}
