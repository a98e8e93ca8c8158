//! Loading TOML configuration files so that a person can fix them in one go.
//!
//! serde stops at the first error in a document. A provider editing `/etc/edgeshare/*.toml` on
//! a Pi over SSH should see every problem at once, each with its key and line, so the loader
//! runs serde repeatedly: after each error it records the problem, takes the offending key out
//! of the document (or puts a placeholder in for a missing one) and tries again. Which key and
//! what kind of problem come from serde's structured calls (unknown field, missing field,
//! unknown variant) through the loader's own deserializer ([`value`]) and the path serde took
//! (`serde_path_to_error`), never from an error message's wording. What serde
//! cannot check (ranges, URLs, keys required only in some modes) is checked by the config
//! type's [`Validate`] impl, whose problems are reported the same way.
//!
//! Sources, strongest first: the process environment, an env file (`KEY=VALUE` lines, as
//! systemd's `EnvironmentFile=` reads them, for secrets kept out of the main file), the TOML
//! file. An override is named `EDGESHARE_<SECTION>__<KEY>`: `EDGESHARE_BACKEND__PASSWORD` sets
//! `backend.password`. The double underscore separates levels because keys contain single ones.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

mod value;
use value::{Failure, ValueDeserializer};

const MISSING: &str = "is required but missing";

/// The prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "EDGESHARE_";

/// How many problems are collected before giving up: a file that is not a config at all
/// (say, a binary) must not keep the loader busy.
const MAX_PROBLEMS: usize = 50;

/// A configuration type checks what serde cannot: value ranges, cross-key rules.
pub trait Validate {
    /// Pushes one [`Problems::push`] per problem found; pushes nothing for a good config.
    fn validate(&self, problems: &mut Problems);

    /// Checks the files the config names that a running daemon can do without (it logs
    /// the problem and goes on without the file, say a portal translation): `check-config`
    /// reports them with the rest ([`load_for_check`]), loading for a run does not, so a
    /// typo in such a file never keeps a daemon from starting.
    fn check_files(&self, _problems: &mut Problems) {}
}

/// What loading checks besides the keys and their values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checks {
    Values,
    ValuesAndFiles,
}

/// Problems found by [`Validate::validate`], each against a dotted key path.
#[derive(Debug, Default)]
pub struct Problems {
    found: Vec<(String, String)>,
}

impl Problems {
    /// Records that `key` (dotted, as written in the file: `lan.interface`) is wrong.
    pub fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.found.push((key.into(), message.into()));
    }

    /// Records that a required key is absent.
    pub fn missing(&mut self, key: &str) {
        self.push(key, MISSING);
    }
}

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path (`portal.port`); empty for a problem with the whole document.
    pub key: String,
    /// Where the value came from: a line of the file or an environment variable.
    pub origin: Origin,
    pub message: String,
}

/// Where a configuration value was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Line(usize),
    /// An override from the process environment or the env file, by variable name.
    Env(String),
    /// A key that appears nowhere (a missing key in a missing section).
    Nowhere,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::Line(line) => write!(f, "line {line}: ")?,
            Origin::Env(var) => write!(f, "{var}: ")?,
            Origin::Nowhere => {}
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Why a configuration could not be loaded. Every variant means "fix the configuration":
/// binaries exit with [`EXIT_CONFIG`] for all of them.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read env file {}: {source}", path.display())]
    EnvFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render_invalid(.source_name, .problems))]
    Invalid {
        source_name: String,
        problems: Vec<Problem>,
    },
}

/// The exit code for a configuration error (`EX_CONFIG` from sysexits.h), which systemd and
/// scripts can tell apart from a runtime failure.
pub const EXIT_CONFIG: u8 = 78;

fn render_invalid(source_name: &str, problems: &[Problem]) -> String {
    let count = problems.len();
    let mut out = format!(
        "{source_name} has {count} problem{}:",
        if count == 1 { "" } else { "s" }
    );
    for problem in problems {
        out.push_str("\n  ");
        out.push_str(&problem.to_string());
    }
    out
}

/// Keys set by an override: the variable's name, and whether the value is already a string.
type EnvOrigins = BTreeMap<Vec<String>, (String, bool)>;

/// A configuration override: a dotted key and its raw text, and the variable that gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub key: Vec<String>,
    pub value: String,
    pub variable: String,
}

/// Picks the configuration overrides out of environment-style pairs. Variables without the
/// prefix, or without a `__` (like `EDGESHARE_CONFIG`, which names the file), are not keys.
pub fn overrides_from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Vec<Override> {
    let mut found: Vec<Override> = vars
        .into_iter()
        .filter_map(|(name, value)| {
            let rest = name.strip_prefix(ENV_PREFIX)?;
            if !rest.contains("__") {
                return None;
            }
            let key = rest.split("__").map(str::to_ascii_lowercase).collect();
            Some(Override {
                key,
                value,
                variable: name,
            })
        })
        .collect();
    // Deterministic order, so that problems are reported the same way on every run.
    found.sort_by(|a, b| a.variable.cmp(&b.variable));
    found
}

/// Reads an env file: `KEY=VALUE` lines, `#` comments, blank lines, optional `export ` and
/// optional single or double quotes around the value, as systemd's `EnvironmentFile=` does.
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| {
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (name, value) = line.split_once('=')?;
            let value = value.trim();
            let unquoted = ['"', '\'']
                .iter()
                .find_map(|q| value.strip_prefix(*q)?.strip_suffix(*q))
                .unwrap_or(value);
            Some((name.trim().to_owned(), unquoted.to_owned()))
        })
        .collect()
}

/// Loads a configuration file, the env file beside it if any, and the process environment.
///
/// The env file is `env_file` if given (it must then exist), otherwise `<config>.env` beside
/// the config file if that exists. An env file that others can read is accepted with a
/// warning: it usually holds a password.
pub fn load<T>(path: &Path, env_file: Option<&Path>) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Validate,
{
    load_with(path, env_file, Checks::Values)
}

/// [`load`], and the files the config names checked too ([`Validate::check_files`]): what
/// `check-config` runs.
pub fn load_for_check<T>(path: &Path, env_file: Option<&Path>) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Validate,
{
    load_with(path, env_file, Checks::ValuesAndFiles)
}

fn load_with<T>(path: &Path, env_file: Option<&Path>, checks: Checks) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Validate,
{
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let default_env_file = path.with_extension("env");
    let (env_path, required) = match env_file {
        Some(given) => (given, true),
        None => (default_env_file.as_path(), false),
    };
    let mut vars = Vec::new();
    match std::fs::read_to_string(env_path) {
        Ok(env_text) => {
            crate::secret::warn_if_readable_by_others(env_path);
            vars.extend(parse_env_file(&env_text));
        }
        Err(err) if !required && err.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ConfigError::EnvFile {
                path: env_path.to_owned(),
                source,
            });
        }
    }
    // The process environment wins over the env file: later overrides replace earlier ones.
    vars.extend(std::env::vars());
    parse_with(
        &text,
        &path.display().to_string(),
        &overrides_from_vars(vars),
        checks,
    )
}

/// Parses configuration text with overrides applied. `source_name` names the text in errors.
pub fn parse<T>(text: &str, source_name: &str, overrides: &[Override]) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Validate,
{
    parse_with(text, source_name, overrides, Checks::Values)
}

fn parse_with<T>(
    text: &str,
    source_name: &str,
    overrides: &[Override],
    checks: Checks,
) -> Result<T, ConfigError>
where
    T: DeserializeOwned + Validate,
{
    let invalid = |problems| ConfigError::Invalid {
        source_name: source_name.to_owned(),
        problems,
    };
    let spans = match toml_edit::Document::parse(text) {
        Ok(doc) => doc,
        Err(err) => {
            let origin = err.span().map_or(Origin::Nowhere, |span| {
                Origin::Line(line_of(text, span.start))
            });
            let message = err.message().trim().to_owned();
            return Err(invalid(vec![Problem {
                key: String::new(),
                origin,
                message: format!("not valid TOML: {message}"),
            }]));
        }
    };
    let mut table: toml::Table = toml::from_str(text).map_err(|err| {
        invalid(vec![Problem {
            key: String::new(),
            origin: Origin::Nowhere,
            message: format!("not valid TOML: {}", err.message()),
        }])
    })?;

    let mut env_origin = EnvOrigins::new();
    let mut problems = Vec::new();
    for o in overrides {
        let value = guess_value(&o.value);
        let is_string = value.is_str();
        if let Err(message) = set_path(&mut table, &o.key, value) {
            problems.push(Problem {
                key: o.key.join("."),
                origin: Origin::Env(o.variable.clone()),
                message,
            });
            continue;
        }
        env_origin.insert(o.key.clone(), (o.variable.clone(), is_string));
    }

    let locate = |env_origin: &EnvOrigins, key: &[String]| -> Origin {
        if let Some((var, _)) = env_origin.get(key) {
            return Origin::Env(var.clone());
        }
        find_line(&spans, text, key)
    };

    let mut reported: HashSet<Vec<String>> = HashSet::new();
    let mut placeholders: HashMap<Vec<String>, usize> = HashMap::new();
    let mut noisy: HashSet<Vec<String>> = HashSet::new();
    let config = loop {
        if problems.len() >= MAX_PROBLEMS {
            return Err(invalid(problems));
        }
        let attempt: Result<T, _> =
            serde_path_to_error::deserialize(ValueDeserializer(toml::Value::Table(table.clone())));
        let err = match attempt {
            Ok(config) => break Some(config),
            Err(err) => err,
        };
        let path = path_segments(err.path());
        let message = err.inner().to_string();
        match err.into_inner() {
            Failure::UnknownKey {
                key: name,
                expected,
            } => {
                let mut key = path.clone();
                // Depending on where serde failed, the path may or may not end in the key.
                if key.last() != Some(&name) {
                    key.push(name);
                }
                problems.push(Problem {
                    key: key.join("."),
                    origin: locate(&env_origin, &key),
                    message: format!("unknown key (valid keys: {})", expected.join(", ")),
                });
                reported.insert(key.clone());
                if remove_path(&mut table, &key).is_none() {
                    break None;
                }
            }
            Failure::MissingKey(name) => {
                let mut key = path.clone();
                key.push(name.to_owned());
                // A missing section was filled with an empty table: its own "missing" report
                // gives way to the more precise one for the key inside it.
                let parent = key[..key.len() - 1].join(".");
                problems.retain(|p: &Problem| p.key != parent || p.message != MISSING);
                if reported.insert(key.clone()) {
                    problems.push(Problem {
                        key: key.join("."),
                        origin: locate(&env_origin, &key[..key.len() - 1]),
                        message: MISSING.to_owned(),
                    });
                }
                // Try placeholders of each TOML type until serde accepts one, so that the
                // rest of the document is still checked. The config built with it is never
                // used: there is already a problem to report.
                if !try_placeholder(&mut table, &key, &mut placeholders) {
                    break None;
                }
            }
            failure @ (Failure::BadValue(_) | Failure::UnknownVariant { .. }) => {
                // An override like EDGESHARE_AGENT__DEVICE_ID=42 was read as a number; a
                // string field wants it as text. Retry as a string before calling it wrong.
                if let Some((var, false)) = env_origin.get(&path).cloned() {
                    let raw = overrides
                        .iter()
                        .rev()
                        .find(|o| o.variable == var)
                        .map(|o| o.value.clone())
                        .unwrap_or_default();
                    if set_path(&mut table, &path, toml::Value::String(raw)).is_ok() {
                        env_origin.insert(path.clone(), (var, true));
                        continue;
                    }
                }
                if placeholders.contains_key(&path) {
                    // A required enum (a `[[source]]`'s `kind`) that was taken out for a bad
                    // value: no generic placeholder fits, so put in a variant serde named, so
                    // that the rest is still checked. The index marks it as used up.
                    if let Failure::UnknownVariant { expected, .. } = &failure
                        && let Some(variant) = expected.first()
                        && !path.is_empty()
                        && placeholders.get(&path) != Some(&ENUM_PLACEHOLDER)
                        && set_path(
                            &mut table,
                            &path,
                            toml::Value::String((*variant).to_owned()),
                        )
                        .is_ok()
                    {
                        placeholders.insert(path.clone(), ENUM_PLACEHOLDER);
                        // Rules that depend on the variant would only report on the stand-in.
                        noisy.insert(path[..path.len() - 1].to_vec());
                        continue;
                    }
                    if !try_placeholder(&mut table, &path, &mut placeholders) {
                        break None;
                    }
                    continue;
                }
                if reported.insert(path.clone()) {
                    problems.push(Problem {
                        key: path.join("."),
                        origin: locate(&env_origin, &path),
                        message,
                    });
                }
                if path.is_empty() || remove_path(&mut table, &path).is_none() {
                    break None;
                }
            }
        }
    };

    // Validation runs even when serde found problems: the document it built has the bad keys
    // taken out (defaults in their place) or placeholders in, so its rules still apply to
    // every other key. Rules about keys already reported are dropped as noise.
    if let Some(config) = &config {
        let mut found = Problems::default();
        config.validate(&mut found);
        if checks == Checks::ValuesAndFiles {
            config.check_files(&mut found);
        }
        for (key, message) in found.found {
            let segments: Vec<String> = key.split('.').map(str::to_owned).collect();
            let noise = (1..=segments.len()).any(|n| {
                reported.contains(&segments[..n])
                    || placeholders.contains_key(&segments[..n])
                    || noisy.contains(&segments[..n])
            });
            if !noise {
                problems.push(Problem {
                    origin: locate(&env_origin, &segments),
                    key,
                    message,
                });
            }
        }
    }
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => {
            // File order reads best; overrides first, keys found nowhere last.
            problems.sort_by_key(|p| match p.origin {
                Origin::Env(_) => (0, 0),
                Origin::Line(line) => (1, line),
                Origin::Nowhere => (2, 0),
            });
            Err(invalid(problems))
        }
    }
}

/// The index of a placeholder that is a variant of a required enum; nothing comes after it.
const ENUM_PLACEHOLDER: usize = usize::MAX - 1;

/// Puts the next placeholder candidate at `key`; false when none is left. Candidates cover
/// what config fields are made of: strings (plain, URL, duration), numbers, booleans,
/// sections and lists.
fn try_placeholder(
    table: &mut toml::Table,
    key: &[String],
    tried: &mut HashMap<Vec<String>, usize>,
) -> bool {
    let next = match (get_path(table, key), tried.get(key)) {
        (None, _) => 0,
        (Some(_), Some(&index)) => index + 1,
        // A value the file itself has: nothing to try.
        (Some(_), None) => return false,
    };
    let candidate = match next {
        0 => toml::Value::String(String::new()),
        1 => toml::Value::String("http://placeholder.invalid/".to_owned()),
        2 => toml::Value::String("1s".to_owned()),
        3 => toml::Value::Integer(0),
        4 => toml::Value::Boolean(false),
        5 => toml::Value::Table(toml::Table::new()),
        6 => toml::Value::Array(Vec::new()),
        7 => toml::Value::Float(0.0),
        _ => return false,
    };
    tried.insert(key.to_vec(), next);
    set_path(table, key, candidate).is_ok()
}

/// Reads an override's text as TOML (`8080`, `true`, `["a", "b"]`), or else as a string.
fn guess_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn path_segments(path: &serde_path_to_error::Path) -> Vec<String> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|segment| match segment {
            Segment::Map { key } => Some(key.clone()),
            Segment::Seq { index } => Some(index.to_string()),
            Segment::Enum { variant } => Some(variant.clone()),
            Segment::Unknown => None,
        })
        .collect()
}

/// The table at `parents`, through arrays of tables by index (`source.2.path`).
fn table_at<'a>(table: &'a toml::Table, parents: &[String]) -> Option<&'a toml::Table> {
    let mut current = table;
    let mut parts = parents.iter();
    while let Some(part) = parts.next() {
        current = match current.get(part)? {
            toml::Value::Table(t) => t,
            toml::Value::Array(items) => items
                .get(parts.next()?.parse::<usize>().ok()?)?
                .as_table()?,
            _ => return None,
        };
    }
    Some(current)
}

fn table_at_mut<'a>(table: &'a mut toml::Table, parents: &[String]) -> Option<&'a mut toml::Table> {
    let mut current = table;
    let mut parts = parents.iter();
    while let Some(part) = parts.next() {
        current = match current.get_mut(part)? {
            toml::Value::Table(t) => t,
            toml::Value::Array(items) => items
                .get_mut(parts.next()?.parse::<usize>().ok()?)?
                .as_table_mut()?,
            _ => return None,
        };
    }
    Some(current)
}

fn get_path<'a>(table: &'a toml::Table, key: &[String]) -> Option<&'a toml::Value> {
    let (last, parents) = key.split_last()?;
    table_at(table, parents)?.get(last)
}

fn set_path(table: &mut toml::Table, key: &[String], value: toml::Value) -> Result<(), String> {
    let Some((last, parents)) = key.split_last() else {
        return Err("empty key".to_owned());
    };
    // Inside an array of tables the element exists already; elsewhere missing sections
    // are created.
    if let Some(current) = table_at_mut(table, parents) {
        current.insert(last.clone(), value);
        return Ok(());
    }
    let mut current = table;
    for (depth, part) in parents.iter().enumerate() {
        let entry = current
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry.as_table_mut().ok_or_else(|| {
            format!(
                "cannot set: `{}` is a value, not a section",
                parents[..=depth].join(".")
            )
        })?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

fn remove_path(table: &mut toml::Table, key: &[String]) -> Option<toml::Value> {
    let (last, parents) = key.split_last()?;
    table_at_mut(table, parents)?.remove(last)
}

/// The line of a key in the original text; for a key that is not there, the line of its
/// nearest enclosing section that is.
fn find_line(doc: &toml_edit::Document<&str>, text: &str, key: &[String]) -> Origin {
    enum At<'a> {
        Table(&'a toml_edit::Table),
        Inline(&'a toml_edit::InlineTable),
        /// `[[source]]` tables: the next segment is the index.
        Array(&'a toml_edit::ArrayOfTables),
    }
    let mut best = None;
    let mut at = At::Table(doc.as_table());
    for part in key {
        let found = match at {
            At::Table(t) => t.get_key_value(part),
            At::Inline(t) => t.get_key_value(part),
            At::Array(array) => {
                let Some(table) = part.parse().ok().and_then(|i: usize| array.get(i)) else {
                    break;
                };
                if let Some(span) = table.span() {
                    best = Some(line_of(text, span.start));
                }
                at = At::Table(table);
                continue;
            }
        };
        let Some((k, v)) = found else { break };
        if let Some(span) = k.span().or_else(|| v.span()) {
            best = Some(line_of(text, span.start));
        }
        at = match v {
            toml_edit::Item::Table(t) => At::Table(t),
            toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => At::Inline(t),
            toml_edit::Item::ArrayOfTables(a) => At::Array(a),
            _ => break,
        };
    }
    best.map_or(Origin::Nowhere, Origin::Line)
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |before| before.matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Example {
        lan: Lan,
        #[serde(default)]
        portal: Portal,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Lan {
        interface: String,
        #[serde(default)]
        mtu: Option<u16>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Portal {
        port: u16,
        title: String,
    }

    impl Default for Portal {
        fn default() -> Self {
            Portal {
                port: 8080,
                title: "Online".to_owned(),
            }
        }
    }

    impl Validate for Example {
        fn validate(&self, problems: &mut Problems) {
            if self.portal.port == 0 {
                problems.push("portal.port", "must not be 0");
            }
        }
    }

    fn problems(text: &str, overrides: &[Override]) -> Vec<String> {
        match parse::<Example>(text, "test.toml", overrides) {
            Ok(config) => panic!("expected problems, got {config:?}"),
            Err(ConfigError::Invalid { problems, .. }) => {
                problems.iter().map(ToString::to_string).collect()
            }
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<Override> {
        overrides_from_vars(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
    }

    #[test]
    fn good_file_with_defaults() {
        let config: Example = parse("[lan]\ninterface = \"wlan0\"\n", "t", &[]).unwrap();
        assert_eq!(config.lan.interface, "wlan0");
        assert_eq!(config.portal.port, 8080);
        assert_eq!(config.lan.mtu, None);
    }

    #[test]
    fn every_problem_is_reported_at_once_with_key_and_line() {
        let text = "[lan]\ninterface = \"wlan0\"\nmtu = \"big\"\ncolour = 3\n\n[portal]\nport = \"eighty\"\ntitel = \"x\"\n";
        assert_eq!(
            problems(text, &[]),
            vec![
                "line 3: lan.mtu: invalid type: string \"big\", expected u16",
                "line 4: lan.colour: unknown key (valid keys: interface, mtu)",
                "line 7: portal.port: invalid type: string \"eighty\", expected u16",
                "line 8: portal.titel: unknown key (valid keys: port, title)",
            ]
        );
    }

    #[test]
    fn missing_key_is_reported_and_the_rest_still_checked() {
        let text = "[lan]\nmtu = 1500\n\n[portal]\nport = -1\n";
        assert_eq!(
            problems(text, &[]),
            vec![
                "line 1: lan.interface: is required but missing",
                "line 5: portal.port: invalid value: integer `-1`, expected u16",
            ]
        );
    }

    #[test]
    fn missing_section() {
        assert_eq!(
            problems("", &[]),
            vec!["lan.interface: is required but missing"]
        );
    }

    #[test]
    fn syntax_error_names_the_line() {
        let found = problems("[lan]\ninterface = \"wlan0\"\nport = = 3\n", &[]);
        assert_eq!(found.len(), 1);
        assert!(found[0].starts_with("line 3: not valid TOML"), "{found:?}");
    }

    #[test]
    fn validation_runs_beside_type_errors_but_not_on_reported_keys() {
        let text = "[lan]\nmtu = \"big\"\n[portal]\nport = 0\n";
        assert_eq!(
            problems(text, &[]),
            vec![
                "line 1: lan.interface: is required but missing",
                "line 2: lan.mtu: invalid type: string \"big\", expected u16",
                "line 4: portal.port: must not be 0",
            ]
        );
    }

    #[test]
    fn validation_problems_carry_lines() {
        let text = "[lan]\ninterface = \"wlan0\"\n[portal]\nport = 0\n";
        assert_eq!(
            problems(text, &[]),
            vec!["line 4: portal.port: must not be 0"]
        );
    }

    #[test]
    fn environment_overrides_win_and_are_typed_by_the_field() {
        let overrides = env(&[
            ("EDGESHARE_LAN__INTERFACE", "42"),
            ("EDGESHARE_PORTAL__PORT", "9090"),
            ("EDGESHARE_CONFIG", "/ignored/because/no/double/underscore"),
            ("PATH", "/usr/bin"),
        ]);
        let config: Example = parse("[lan]\ninterface = \"wlan0\"\n", "t", &overrides).unwrap();
        assert_eq!(config.lan.interface, "42");
        assert_eq!(config.portal.port, 9090);
    }

    #[test]
    fn a_bad_override_names_the_variable() {
        let overrides = env(&[
            ("EDGESHARE_PORTAL__PORT", "eighty"),
            ("EDGESHARE_LAN__X", "1"),
        ]);
        assert_eq!(
            problems("[lan]\ninterface = \"wlan0\"\n", &overrides),
            vec![
                "EDGESHARE_LAN__X: lan.x: unknown key (valid keys: interface, mtu)",
                "EDGESHARE_PORTAL__PORT: portal.port: invalid type: string \"eighty\", expected u16",
            ]
        );
    }

    #[test]
    fn env_file_lines() {
        let text = "# secrets\nEDGESHARE_BACKEND__PASSWORD='p=ss word'\nexport A=\"b\"\n\nnot a pair\nB=c\n";
        assert_eq!(
            parse_env_file(text),
            vec![
                (
                    "EDGESHARE_BACKEND__PASSWORD".to_owned(),
                    "p=ss word".to_owned()
                ),
                ("A".to_owned(), "b".to_owned()),
                ("B".to_owned(), "c".to_owned()),
            ]
        );
    }

    /// A value whose own error reads like serde's unknown-field or missing-field message.
    #[derive(Debug)]
    struct Tricky;

    impl<'de> Deserialize<'de> for Tricky {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            let text = String::deserialize(deserializer)?;
            Err(serde::de::Error::custom(format!(
                "{text} field `{text}`, expected `a`"
            )))
        }
    }

    #[allow(dead_code)] // Only its parsing is tested.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct WithTricky {
        name: String,
        tricky: Option<Tricky>,
    }

    impl Validate for WithTricky {
        fn validate(&self, _: &mut Problems) {}
    }

    #[test]
    fn problems_are_told_apart_by_kind_not_by_the_wording_of_messages() {
        for (text, expected) in [
            // A value's own message that reads like serde's: still a bad value of its key,
            // which stays in the file (not "unknown", not "missing").
            (
                "name = \"n\"\ntricky = \"unknown\"\n",
                vec!["line 2: tricky: unknown field `unknown`, expected `a`"],
            ),
            (
                "name = \"n\"\ntricky = \"missing\"\n",
                vec!["line 2: tricky: missing field `missing`, expected `a`"],
            ),
            (
                "tricky = \"missing\"\nnmae = 1\n",
                vec![
                    "line 1: tricky: missing field `missing`, expected `a`",
                    "line 2: nmae: unknown key (valid keys: name, tricky)",
                    "name: is required but missing",
                ],
            ),
        ] {
            let found: Vec<String> = match parse::<WithTricky>(text, "t", &[]) {
                Err(ConfigError::Invalid { problems, .. }) => {
                    problems.iter().map(ToString::to_string).collect()
                }
                other => panic!("{other:?}"),
            };
            assert_eq!(found, expected, "{text}");
        }
    }

    #[test]
    fn a_binary_file_does_not_hang_or_panic() {
        let junk: String = (0..4000u32)
            .map(|i| char::from_u32(i % 200 + 1).unwrap_or('x'))
            .collect();
        assert!(parse::<Example>(&junk, "junk", &[]).is_err());
    }

    #[allow(dead_code)] // Only its parsing is tested.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct WithArray {
        item: Vec<Item>,
    }

    #[allow(dead_code)] // Only its parsing is tested.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        kind: ItemKind,
        size: u8,
    }

    #[allow(dead_code)] // Only its parsing is tested.
    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum ItemKind {
        Small,
        Large,
    }

    impl Validate for WithArray {
        fn validate(&self, _: &mut Problems) {}
    }

    #[test]
    fn arrays_of_tables_name_index_and_line_and_a_bad_enum_does_not_stop_the_check() {
        let text = "[[item]]\nkind = \"small\"\nsize = 1\n\n[[item]]\nkind = \"huge\"\nsize = 300\ncolour = 1\n";
        let found: Vec<String> = match parse::<WithArray>(text, "t", &[]) {
            Err(ConfigError::Invalid { problems, .. }) => {
                problems.iter().map(ToString::to_string).collect()
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(
            found,
            vec![
                "line 6: item.1.kind: unknown variant `huge`, expected `small` or `large`",
                "line 7: item.1.size: invalid value: integer `300`, expected u8",
                "line 8: item.1.colour: unknown key (valid keys: kind, size)",
            ]
        );
    }
}
