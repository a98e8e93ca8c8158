//! The portal's languages: a message catalogue per language, the choice of one for a request
//! (`?lang=`, the `lang` cookie, `Accept-Language`), and numbers written the language's way.
//!
//! English, Spanish and French are built in (`gateway/locales/*.toml`, compiled into the
//! binary). A provider adds a language, or changes any text of a built-in one, with a file
//! `<tag>.toml` in `portal.locales_dir`: its keys override the built-in language's, and any key
//! a language lacks is shown in English. Catalogue texts are plain text with `{name}`
//! placeholders; the pages escape them like any other text, so a catalogue cannot add markup.

use std::collections::HashMap;
use std::path::Path;

macro_rules! messages {
    ($($variant:ident = $key:literal,)*) => {
        /// Every text the portal shows, by its catalogue key.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Msg {
            $($variant,)*
        }

        impl Msg {
            pub const ALL: &[Msg] = &[$(Msg::$variant,)*];

            pub fn key(self) -> &'static str {
                match self {
                    $(Msg::$variant => $key,)*
                }
            }
        }
    };
}

messages! {
    LanguageName = "language.name",
    LanguagePick = "language.pick",
    NumberDecimal = "number.decimal",
    NumberGroup = "number.group",
    UnitSeconds = "unit.seconds",
    UnitMinutes = "unit.minutes",
    UnitHours = "unit.hours",
    UnitHoursMinutes = "unit.hours_minutes",
    UnitDays = "unit.days",
    UnitDaysHours = "unit.days_hours",
    DataMegabytes = "data.megabytes",
    DataLessThan = "data.less_than",
    SiteTitle = "site.title",
    FormTitle = "form.title",
    FormRetryTitle = "form.retry_title",
    FormIntro = "form.intro",
    FormLabel = "form.label",
    FormHint = "form.hint",
    FormSubmit = "form.submit",
    FormStatusLink = "form.status_link",
    FormTermsAccept = "form.terms_accept",
    FormTermsLink = "form.terms_link",
    FormAccountSummary = "form.account_summary",
    FormAccountIntro = "form.account_intro",
    FormEmailLabel = "form.email_label",
    FormPasswordLabel = "form.password_label",
    FormAccountWarning = "form.account_warning",
    FormOfflineNotice = "form.offline_notice",
    TermsTitle = "terms.title",
    TermsBack = "terms.back",
    ErrorInvalid = "error.invalid",
    ErrorExpired = "error.expired",
    ErrorUsedUp = "error.used_up",
    ErrorRevoked = "error.revoked",
    ErrorNotOurs = "error.not_ours",
    ErrorUnlisted = "error.unlisted",
    ErrorBackendDown = "error.backend_down",
    ErrorUnknownDevice = "error.unknown_device",
    ErrorNotSaved = "error.not_saved",
    ErrorInternal = "error.internal",
    ErrorTooManyDevice = "error.too_many_device",
    ErrorTooManyGlobal = "error.too_many_global",
    ErrorBadLength = "error.bad_length",
    ErrorBadCharacter = "error.bad_character",
    ErrorTooLarge = "error.too_large",
    ErrorTooLong = "error.too_long",
    ErrorNotAForm = "error.not_a_form",
    ErrorTimeout = "error.timeout",
    ErrorWrongAccount = "error.wrong_account",
    ErrorNotConsumer = "error.not_consumer",
    ErrorAccountDown = "error.account_down",
    ErrorAccountIncomplete = "error.account_incomplete",
    ErrorOtherAccount = "error.other_account",
    ErrorAccountsOff = "error.accounts_off",
    ErrorAccountTooLong = "error.account_too_long",
    OnlineTitle = "online.title",
    OnlineAccepted = "online.accepted",
    OnlineConnected = "online.connected",
    OnlineDataLeft = "online.data_left",
    OnlineTimeLeft = "online.time_left",
    OnlineSessionTimeLeft = "online.session_time_left",
    OnlineAfterExpiring = "online.after_expiring",
    OnlineAfterNotExpiring = "online.after_not_expiring",
    OnlineAfterOtherAccount = "online.after_other_account",
    OnlineRefreshes = "online.refreshes",
    OnlineCheck = "online.check",
    OnlineSignedIn = "online.signed_in",
    NotOnlineTitle = "not_online.title",
    NotOnlineHeading = "not_online.heading",
    NotOnlineText = "not_online.text",
    NotOnlineEnter = "not_online.enter",
    NotAllowedTitle = "not_allowed.title",
    NotAllowedText = "not_allowed.text",
    MessageHome = "message.home",
    RedirectTitle = "redirect.title",
    RedirectText = "redirect.text",
    RedirectGo = "redirect.go",
}

/// The built-in catalogues; English first, and complete (a test makes sure).
const BUILT_IN: &[(&str, &str)] = &[
    ("en", include_str!("../../locales/en.toml")),
    ("es", include_str!("../../locales/es.toml")),
    ("fr", include_str!("../../locales/fr.toml")),
];

/// A provider's catalogue file is a page of text; anything larger is not one.
pub const MAX_FILE_BYTES: u64 = 64 * 1024;
/// Languages read from the directory at most (the `Accept-Language` match walks them all).
pub const MAX_LANGUAGES: usize = 64;
/// `Accept-Language` entries looked at; browsers send a handful.
const MAX_RANGES: usize = 32;

/// One language's texts. Keys it lacks come from English.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Language {
    tag: String,
    texts: HashMap<Msg, String>,
}

impl Language {
    /// The language tag, lower case (`es`, `pt-br`).
    pub fn tag(&self) -> &str {
        &self.tag
    }
}

/// The languages the portal speaks; the first is English, the fallback for everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Languages {
    list: Vec<Language>,
}

/// One language chosen for a request, with English behind it.
#[derive(Debug, Clone, Copy)]
pub struct Tr<'a> {
    lang: &'a Language,
    english: &'a Language,
}

impl Default for Languages {
    /// The built-in languages only.
    fn default() -> Self {
        let mut list = Vec::new();
        for (tag, text) in BUILT_IN {
            // The built-ins are tested to parse; a failure here would be a build mistake, and
            // the portal then still speaks what did parse.
            if let Ok(texts) = parse_catalogue(text) {
                list.push(Language {
                    tag: (*tag).to_owned(),
                    texts,
                });
            }
        }
        Languages { list }
    }
}

impl Languages {
    /// The built-in languages with the provider's files from `dir` over them. A file that
    /// cannot be used is left out and reported as (file name, what is wrong); a missing
    /// directory is no problem (no provider languages).
    pub fn load(dir: &Path) -> (Languages, Vec<(String, String)>) {
        let mut languages = Languages::default();
        let mut problems = Vec::new();
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return (languages, problems);
            }
            Err(err) => {
                problems.push((dir.display().to_string(), format!("cannot read: {err}")));
                return (languages, problems);
            }
        };
        let mut files: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
            .collect();
        // The same order on every start, so the same file wins the limit and the problems read
        // the same.
        files.sort();
        for path in files {
            let shown = path.display().to_string();
            match read_language_file(&path) {
                Ok((tag, texts)) => {
                    if let Err(message) = languages.merge(tag, texts) {
                        problems.push((shown, message));
                    }
                }
                Err(message) => problems.push((shown, message)),
            }
        }
        (languages, problems)
    }

    fn merge(&mut self, tag: String, texts: HashMap<Msg, String>) -> Result<(), String> {
        if let Some(known) = self.list.iter_mut().find(|lang| lang.tag == tag) {
            known.texts.extend(texts);
            return Ok(());
        }
        if self.list.len() >= MAX_LANGUAGES {
            return Err(format!("more than {MAX_LANGUAGES} languages; left out"));
        }
        if !texts.contains_key(&Msg::LanguageName) {
            return Err(format!(
                "a new language needs `{}` (its name in itself, shown in the language links)",
                Msg::LanguageName.key()
            ));
        }
        self.list.push(Language { tag, texts });
        Ok(())
    }

    pub fn list(&self) -> &[Language] {
        &self.list
    }

    /// The language at `index` of [`Languages::list`] (English for one out of range).
    pub fn tr(&self, index: usize) -> Tr<'_> {
        let english = &self.list[0];
        Tr {
            lang: self.list.get(index).unwrap_or(english),
            english,
        }
    }

    /// The index of the language tagged `tag` (any case), if the portal speaks it.
    pub fn find(&self, tag: &str) -> Option<usize> {
        self.list
            .iter()
            .position(|lang| lang.tag.eq_ignore_ascii_case(tag))
    }

    /// The language for a request: a valid `?lang=`, else the `lang` cookie, else
    /// `Accept-Language`, else English.
    pub fn choose(
        &self,
        query: Option<&str>,
        cookie: Option<&str>,
        accept_language: Option<&str>,
    ) -> usize {
        query
            .and_then(|tag| self.find(tag))
            .or_else(|| cookie.and_then(|tag| self.find(tag)))
            .or_else(|| {
                let tags: Vec<&str> = self.list.iter().map(|lang| lang.tag.as_str()).collect();
                negotiate(accept_language?, &tags)
            })
            .unwrap_or(0)
    }
}

impl<'a> Tr<'a> {
    pub fn tag(&self) -> &'a str {
        &self.lang.tag
    }

    /// The text for `msg`, in English if this language lacks it.
    pub fn t(&self, msg: Msg) -> &'a str {
        self.lang
            .texts
            .get(&msg)
            .or_else(|| self.english.texts.get(&msg))
            .map_or(msg.key(), String::as_str)
    }

    /// The text for `msg` with each `{name}` replaced by its value. One pass: a value that
    /// contains braces stays as it is.
    pub fn fill(&self, msg: Msg, params: &[(&str, &str)]) -> String {
        let template = self.t(msg);
        let mut out = String::with_capacity(template.len() + 16);
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let value = after.find('}').and_then(|close| {
                let name = &after[..close];
                params
                    .iter()
                    .find(|(param, _)| *param == name)
                    .map(|(_, value)| (*value, close))
            });
            match value {
                Some((value, close)) => {
                    out.push_str(value);
                    rest = &after[close + 1..];
                }
                None => {
                    out.push('{');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// `n` with this language's thousands separator: "1,234", "1.234", "1 234".
    pub fn integer(&self, n: u64) -> String {
        let group = self.t(Msg::NumberGroup);
        let digits = n.to_string();
        let mut out = String::with_capacity(digits.len() * 2);
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push_str(group);
            }
            out.push(c);
        }
        out
    }

    /// Time left as a person reads it: "45 s", "12 min", "1 h 12 min", "2 d 3 h". Rounded
    /// down, so the page never promises more than is left.
    pub fn duration(&self, seconds: u64) -> String {
        let minutes = seconds / 60;
        let hours = minutes / 60;
        let days = hours / 24;
        let n = |v: u64| self.integer(v);
        match (days, hours % 24, minutes % 60) {
            _ if seconds < 60 => self.fill(Msg::UnitSeconds, &[("n", &n(seconds))]),
            _ if minutes < 60 => self.fill(Msg::UnitMinutes, &[("n", &n(minutes))]),
            (0, h, 0) => self.fill(Msg::UnitHours, &[("h", &n(h))]),
            (0, h, m) => self.fill(Msg::UnitHoursMinutes, &[("h", &n(h)), ("m", &n(m))]),
            (d, 0, _) => self.fill(Msg::UnitDays, &[("d", &n(d))]),
            (d, h, _) => self.fill(Msg::UnitDaysHours, &[("d", &n(d)), ("h", &n(h))]),
        }
    }

    /// Data left in megabytes as codes are sold (MB = 2^20 bytes, the backend's unit): "0 MB",
    /// "less than 0.1 MB", "4.7 MB", "1,234 MB". Rounded down, like the time.
    pub fn megabytes(&self, bytes: u64) -> String {
        const MB: u128 = 1 << 20;
        let tenths = u128::from(bytes) * 10 / MB;
        let decimal = self.t(Msg::NumberDecimal);
        let amount = match tenths {
            _ if bytes == 0 => "0".to_owned(),
            0 => return self.fill(Msg::DataLessThan, &[("n", &format!("0{decimal}1"))]),
            t if t < 100 => format!("{}{decimal}{}", t / 10, t % 10),
            t => self.integer(u64::try_from(t / 10).unwrap_or(u64::MAX)),
        };
        self.fill(Msg::DataMegabytes, &[("n", &amount)])
    }
}

/// The best of `available` (lower-case tags) for an `Accept-Language` header, by RFC 4647
/// lookup: ranges by falling q-value (ties in the order sent), each tried as sent, then with
/// its last subtags cut off (`es-MX` → `es`), then against any tag of the same primary
/// language (`pt` → `pt-br`); `*` takes the first available tag. A tag refused with `q=0` is
/// never the answer. Entries that do not parse are skipped, so any header gives an answer or
/// `None`.
pub fn negotiate(header: &str, available: &[&str]) -> Option<usize> {
    let mut ranges: Vec<(&str, u16)> = header
        .split(',')
        .take(MAX_RANGES)
        .filter_map(parse_range)
        .collect();
    // Stable: equal q-values keep the order sent.
    ranges.sort_by_key(|range| std::cmp::Reverse(range.1));
    let refused = |tag: &str| {
        ranges
            .iter()
            .any(|(range, q)| *q == 0 && range.eq_ignore_ascii_case(tag))
    };
    for (range, q) in &ranges {
        if *q == 0 {
            continue;
        }
        if *range == "*" {
            if let Some(found) = available.iter().position(|tag| !refused(tag)) {
                return Some(found);
            }
            continue;
        }
        let mut prefix = *range;
        loop {
            if let Some(found) = available
                .iter()
                .position(|tag| tag.eq_ignore_ascii_case(prefix) && !refused(tag))
            {
                return Some(found);
            }
            match prefix.rfind('-') {
                Some(cut) => prefix = &prefix[..cut],
                None => break,
            }
        }
        let primary = range.split('-').next().unwrap_or_default();
        if let Some(found) = available.iter().position(|tag| {
            tag.split('-')
                .next()
                .is_some_and(|own| own.eq_ignore_ascii_case(primary))
                && !refused(tag)
        }) {
            return Some(found);
        }
    }
    None
}

/// One `Accept-Language` entry, `tag[;q=0.8]`, as (tag, q in thousandths).
fn parse_range(entry: &str) -> Option<(&str, u16)> {
    let mut parts = entry.split(';');
    let tag = parts.next()?.trim();
    let tag_ok = tag == "*"
        || (!tag.is_empty()
            && tag.len() <= 35
            && tag.split('-').all(|sub| {
                (1..=8).contains(&sub.len()) && sub.bytes().all(|b| b.is_ascii_alphanumeric())
            }));
    if !tag_ok {
        return None;
    }
    let mut q = 1000;
    for param in parts {
        let (name, value) = param.split_once('=')?;
        if name.trim().eq_ignore_ascii_case("q") {
            q = parse_q(value.trim())?;
        }
    }
    Some((tag, q))
}

/// A q-value (`0`, `0.5`, `1.000`) in thousandths.
fn parse_q(text: &str) -> Option<u16> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if fraction.len() > 3 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let thousandths = format!("{fraction:0<3}").parse::<u16>().ok()?;
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// Whether `tag` may name a catalogue file: a language subtag of 2-3 letters, then optional
/// subtags of 2-8 letters or digits (`es`, `pt-br`, `zh-hant`), lower case.
fn is_file_tag(tag: &str) -> bool {
    let mut subtags = tag.split('-');
    let language_ok = subtags.next().is_some_and(|lang| {
        (2..=3).contains(&lang.len()) && lang.bytes().all(|b| b.is_ascii_lowercase())
    });
    language_ok
        && subtags.all(|sub| {
            (2..=8).contains(&sub.len())
                && sub
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

fn read_language_file(path: &Path) -> Result<(String, HashMap<Msg, String>), String> {
    let tag = path
        .file_stem()
        .and_then(|stem| stem.to_str())
        .filter(|stem| is_file_tag(stem))
        .ok_or_else(|| {
            "the file name must be a lower-case language tag and .toml (es.toml, pt-br.toml)"
                .to_owned()
        })?;
    let size = std::fs::metadata(path)
        .map_err(|err| format!("cannot read: {err}"))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(format!(
            "{size} bytes; a catalogue may have at most {MAX_FILE_BYTES}"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|err| format!("cannot read: {err}"))?;
    Ok((tag.to_owned(), parse_catalogue(&text)?))
}

/// A catalogue's texts: TOML whose keys (dotted, or as tables) are [`Msg`] keys and whose
/// values are strings using no placeholder the English text does not have.
pub fn parse_catalogue(text: &str) -> Result<HashMap<Msg, String>, String> {
    let table: toml::Table = text
        .parse()
        .map_err(|err: toml::de::Error| format!("not valid TOML: {}", err.message()))?;
    let mut flat = Vec::new();
    flatten("", &table, &mut flat)?;
    let english = english_placeholders();
    let mut texts = HashMap::new();
    for (key, value) in flat {
        let msg = Msg::ALL
            .iter()
            .copied()
            .find(|msg| msg.key() == key)
            .ok_or_else(|| format!("unknown key `{key}`"))?;
        if let Some(allowed) = english.get(&msg) {
            if let Some(bad) =
                placeholders(&value).find(|name| !allowed.iter().any(|ok| ok == name))
            {
                return Err(format!(
                    "`{key}` uses {{{bad}}}, which is not one of its placeholders ({})",
                    placeholder_list(allowed)
                ));
            }
        }
        texts.insert(msg, value);
    }
    Ok(texts)
}

fn flatten(
    prefix: &str,
    table: &toml::Table,
    out: &mut Vec<(String, String)>,
) -> Result<(), String> {
    for (name, value) in table {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match value {
            toml::Value::String(text) => out.push((key, text.clone())),
            toml::Value::Table(inner) => flatten(&key, inner, out)?,
            _ => return Err(format!("`{key}` must be a string")),
        }
    }
    Ok(())
}

/// The `{name}`s of a text.
fn placeholders(text: &str) -> impl Iterator<Item = &str> {
    text.split('{').skip(1).filter_map(|part| {
        let name = &part[..part.find('}')?];
        (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            .then_some(name)
    })
}

fn placeholder_list(names: &[String]) -> String {
    if names.is_empty() {
        return "it has none".to_owned();
    }
    names
        .iter()
        .map(|name| format!("{{{name}}}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Each message's placeholders in the built-in English catalogue.
fn english_placeholders() -> HashMap<Msg, Vec<String>> {
    let english = toml::from_str::<toml::Table>(BUILT_IN[0].1).unwrap_or_default();
    let mut flat = Vec::new();
    let _ = flatten("", &english, &mut flat);
    flat.into_iter()
        .filter_map(|(key, text)| {
            let msg = Msg::ALL.iter().copied().find(|msg| msg.key() == key)?;
            Some((msg, placeholders(&text).map(str::to_owned).collect()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const AVAILABLE: &[&str] = &["en", "es", "fr", "pt-br"];

    #[test]
    fn negotiation_follows_q_values_and_falls_back_by_region() {
        for (header, want) in [
            ("es", Some(1)),
            ("es-MX", Some(1)),
            ("ES-mx,en;q=0.5", Some(1)),
            ("de, fr;q=0.9, en;q=0.8", Some(2)),
            ("en;q=0.1, fr;q=0.7", Some(2)),
            ("fr-CA;q=0.4,es;q=0.6", Some(1)),
            ("pt", Some(3)),
            ("pt-PT", Some(3)),
            ("pt-BR", Some(3)),
            ("de", None),
            ("*", Some(0)),
            ("de, *;q=0.5", Some(0)),
            ("en;q=0, *", Some(1)),
            ("es;q=0, es-MX", None),
            ("fr;q=0", None),
            ("", None),
            ("ñ, 💥;q=2", None),
            ("es;q=abc, fr", Some(2)),
            ("es;q=1.5, fr;q=0.2", Some(2)),
            ("es;;q=0.9", None),
            (";;;,,,", None),
            ("zh-Hant-TW, fr;q=0.001", Some(2)),
            ("en-US,en;q=0.9,es;q=0.8", Some(0)),
        ] {
            assert_eq!(negotiate(header, AVAILABLE), want, "{header:?}");
        }
    }

    #[test]
    fn q_values_parse_as_rfc_9110_writes_them() {
        for (text, want) in [
            ("1", Some(1000)),
            ("1.0", Some(1000)),
            ("1.000", Some(1000)),
            ("0", Some(0)),
            ("0.5", Some(500)),
            ("0.05", Some(50)),
            ("0.123", Some(123)),
            ("0.1234", None),
            ("1.5", None),
            ("2", None),
            ("-0.5", None),
            ("", None),
            ("0.x", None),
        ] {
            assert_eq!(parse_q(text), want, "{text:?}");
        }
    }

    proptest! {
        #[test]
        fn negotiation_never_panics_and_picks_an_available_tag(header in any::<String>()) {
            if let Some(found) = negotiate(&header, AVAILABLE) {
                prop_assert!(found < AVAILABLE.len());
            }
        }

        #[test]
        fn header_like_input_never_panics(header in "([a-zA-Z*-]{0,12}(;q=[0-9.]{0,6})?,? ?){0,40}") {
            let _ = negotiate(&header, AVAILABLE);
            let languages = Languages::default();
            prop_assert!(languages.choose(Some(&header), Some(&header), Some(&header)) < languages.list().len());
        }
    }

    #[test]
    fn built_in_catalogues_are_complete_and_parse() {
        let languages = Languages::default();
        let tags: Vec<&str> = languages.list().iter().map(Language::tag).collect();
        assert_eq!(tags, ["en", "es", "fr"]);
        for lang in languages.list() {
            for msg in Msg::ALL {
                assert!(
                    lang.texts.contains_key(msg),
                    "{} lacks {}",
                    lang.tag,
                    msg.key()
                );
            }
            assert_eq!(lang.texts.len(), Msg::ALL.len(), "{}", lang.tag);
        }
    }

    #[test]
    fn the_query_beats_the_cookie_which_beats_the_header() {
        let languages = Languages::default();
        let es = languages.find("es").unwrap();
        let fr = languages.find("fr").unwrap();
        assert_eq!(languages.choose(Some("es"), Some("fr"), Some("fr")), es);
        assert_eq!(languages.choose(Some("xx"), Some("fr"), Some("es")), fr);
        assert_eq!(languages.choose(None, Some("<b>"), Some("es-AR")), es);
        assert_eq!(languages.choose(None, None, Some("garbage;;;")), 0);
        assert_eq!(languages.choose(None, None, None), 0);
    }

    #[test]
    fn missing_texts_fall_back_to_english() {
        let mut languages = Languages::default();
        let texts = parse_catalogue(
            "[language]\nname = \"Kiswahili\"\n[form]\ntitle = \"Ingia mtandaoni\"\n",
        )
        .unwrap();
        languages.merge("sw".to_owned(), texts).unwrap();
        let sw = languages.tr(languages.find("sw").unwrap());
        assert_eq!(sw.t(Msg::FormTitle), "Ingia mtandaoni");
        assert_eq!(sw.t(Msg::FormLabel), "Access code");
        assert_eq!(sw.tag(), "sw");
        // Out of range is English, not a panic.
        assert_eq!(languages.tr(99).t(Msg::FormLabel), "Access code");
    }

    #[test]
    fn bad_catalogues_say_what_is_wrong() {
        for (text, want) in [
            ("form.title = ", "not valid TOML"),
            ("[form]\ntitel = \"x\"", "unknown key `form.titel`"),
            ("form.title = 3", "`form.title` must be a string"),
            (
                "unit.seconds = \"{m} s\"",
                "uses {m}, which is not one of its placeholders ({n})",
            ),
            ("form.title = \"{n}\"", "it has none"),
        ] {
            let err = parse_catalogue(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        // A text may leave a placeholder out, and braces that are not placeholders are text.
        assert!(parse_catalogue("unit.hours_minutes = \"{h} h\"\nform.title = \"{ }\"").is_ok());
    }

    #[test]
    fn provider_files_override_add_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("es.toml"), "form.title = \"¡Conéctate!\"\n").unwrap();
        std::fs::write(
            dir.path().join("sw.toml"),
            "language.name = \"Kiswahili\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("de.toml"),
            "form.title = \"Online gehen\"\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("Bad Name.toml"), "").unwrap();
        std::fs::write(dir.path().join("it.toml"), "form.tytle = \"x\"").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a catalogue").unwrap();
        let (languages, problems) = Languages::load(dir.path());
        let es = languages.tr(languages.find("es").unwrap());
        assert_eq!(es.t(Msg::FormTitle), "¡Conéctate!");
        assert_eq!(es.t(Msg::FormLabel), "Código de acceso");
        assert!(languages.find("sw").is_some());
        assert!(languages.find("de").is_none());
        assert!(languages.find("it").is_none());
        let shown: Vec<String> = problems
            .iter()
            .map(|(file, message)| format!("{file}: {message}"))
            .collect();
        assert_eq!(shown.len(), 3, "{shown:?}");
        assert!(shown[0].ends_with("Bad Name.toml: the file name must be a lower-case language tag and .toml (es.toml, pt-br.toml)"), "{shown:?}");
        assert!(shown[1].ends_with("de.toml: a new language needs `language.name` (its name in itself, shown in the language links)"), "{shown:?}");
        assert!(
            shown[2].ends_with("it.toml: unknown key `form.tytle`"),
            "{shown:?}"
        );
        // No directory: the built-ins, and nothing to report.
        let (languages, problems) = Languages::load(&dir.path().join("missing"));
        assert_eq!(languages, Languages::default());
        assert!(problems.is_empty());
    }

    #[test]
    fn placeholders_are_filled_once() {
        let languages = Languages::default();
        let en = languages.tr(0);
        assert_eq!(
            en.fill(Msg::ErrorTooManyDevice, &[("seconds", "{seconds}")]),
            "Too many wrong codes from this device. Wait {seconds} s, then try again."
        );
        assert_eq!(
            en.fill(Msg::ErrorBadCharacter, &[("char", "<")]),
            "That does not look like an access code: a code has only letters and the digits \
             2-9; '<' is not one of them."
        );
    }

    #[test]
    fn numbers_are_written_the_languages_way() {
        let languages = Languages::default();
        let [en, es, fr] = [0, 1, 2].map(|i| languages.tr(i));
        let big = 1234 * 1_048_576 + 1;
        assert_eq!(en.megabytes(big), "1,234 MB");
        assert_eq!(es.megabytes(big), "1.234 MB");
        assert_eq!(fr.megabytes(big), "1\u{202f}234 Mo");
        assert_eq!(es.megabytes(5 * 1_048_576 - 1), "4,9 MB");
        assert_eq!(fr.megabytes(1), "moins de 0,1 Mo");
        assert_eq!(fr.duration(97_200), "1 j 3 h");
        assert_eq!(es.duration(4_320), "1 h 12 min");
    }

    #[test]
    fn durations_read_like_a_person_would_say_them() {
        let languages = Languages::default();
        let en = languages.tr(0);
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
            (u64::MAX, "213,503,982,334,601 d 7 h"),
        ] {
            assert_eq!(en.duration(seconds), text, "{seconds}");
        }
    }

    #[test]
    fn megabytes_round_down() {
        let languages = Languages::default();
        let en = languages.tr(0);
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
            assert_eq!(en.megabytes(bytes), text, "{bytes}");
        }
    }
}
