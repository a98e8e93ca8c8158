//! The dependency policy of `deny.toml`, checked without cargo-deny and without network:
//! every package in `cargo metadata`'s resolve (all targets; normal, build and dev
//! dependencies) must have a licence expression the allow-list satisfies, must not be
//! banned, and must come from an allowed registry or be a workspace member. Pure: the binary
//! hands in both files' text.
//!
//! It reads the parts of `deny.toml` that cargo-deny reads for the same checks
//! (`licenses.allow`, `bans.deny`, `sources.allow-registry`), so there is one policy for
//! both. Advisories need the advisory database and are not checked here (see the README).

use std::collections::HashSet;
use std::fmt;

use serde::Deserialize;

/// What `deny.toml` allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub licences: HashSet<String>,
    pub banned: HashSet<String>,
    pub registries: HashSet<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct DenyToml {
    licenses: Licences,
    bans: Bans,
    sources: Sources,
}

#[derive(Deserialize)]
struct Licences {
    allow: Vec<String>,
}

#[derive(Deserialize)]
struct Bans {
    #[serde(default)]
    deny: Vec<Ban>,
}

/// A ban as cargo-deny writes it: `{ crate = "openssl", reason = "…" }`.
#[derive(Deserialize)]
struct Ban {
    #[serde(rename = "crate")]
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Sources {
    allow_registry: Vec<String>,
}

impl Policy {
    pub fn from_deny_toml(text: &str) -> Result<Policy, toml::de::Error> {
        let deny: DenyToml = toml::from_str(text)?;
        Ok(Policy {
            licences: deny.licenses.allow.into_iter().collect(),
            banned: deny.bans.deny.into_iter().map(|ban| ban.name).collect(),
            registries: deny.sources.allow_registry.into_iter().collect(),
        })
    }
}

/// One package that breaks the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub package: String,
    pub version: String,
    pub problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The allow-list does not satisfy the licence expression.
    Licence(String),
    /// A licence expression that does not parse.
    BadExpression {
        expression: String,
        why: String,
    },
    /// Only a licence file (or nothing): a person must read it.
    NoExpression,
    Banned,
    /// Neither an allowed registry nor a workspace member (a git or path dependency).
    Source(String),
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Violation {
            package, version, ..
        } = self;
        match &self.problem {
            Problem::Licence(expression) => write!(
                f,
                "{package} {version}: licence \"{expression}\" is not allowed by deny.toml's licenses.allow"
            ),
            Problem::BadExpression { expression, why } => write!(
                f,
                "{package} {version}: licence \"{expression}\" is not an SPDX expression ({why})"
            ),
            Problem::NoExpression => write!(
                f,
                "{package} {version}: no SPDX licence expression (only a licence file, or none): read it and decide"
            ),
            Problem::Banned => write!(f, "{package} {version}: banned by deny.toml's bans.deny"),
            Problem::Source(source) => write!(
                f,
                "{package} {version}: source {source} is not crates.io nor the workspace"
            ),
        }
    }
}

#[derive(Deserialize)]
struct Metadata {
    packages: Vec<Package>,
    workspace_members: Vec<String>,
}

#[derive(Deserialize)]
struct Package {
    id: String,
    name: String,
    version: String,
    license: Option<String>,
    source: Option<String>,
}

/// Every violation in `cargo metadata --format-version 1` output, in its package order.
pub fn check(policy: &Policy, metadata_json: &str) -> Result<Vec<Violation>, serde_json::Error> {
    let metadata: Metadata = serde_json::from_str(metadata_json)?;
    let members: HashSet<&str> = metadata
        .workspace_members
        .iter()
        .map(String::as_str)
        .collect();
    let mut violations = Vec::new();
    for package in &metadata.packages {
        let mut problems = Vec::new();
        match &package.license {
            None => problems.push(Problem::NoExpression),
            Some(expression) => match licence_allowed(expression, &policy.licences) {
                Ok(true) => {}
                Ok(false) => problems.push(Problem::Licence(expression.clone())),
                Err(why) => problems.push(Problem::BadExpression {
                    expression: expression.clone(),
                    why,
                }),
            },
        }
        if policy.banned.contains(&package.name) {
            problems.push(Problem::Banned);
        }
        let member = members.contains(package.id.as_str());
        match &package.source {
            Some(source) => {
                let registry = source.strip_prefix("registry+").unwrap_or("");
                if !policy.registries.contains(registry) {
                    problems.push(Problem::Source(source.clone()));
                }
            }
            None if member => {}
            None => problems.push(Problem::Source(format!("path ({})", package.id))),
        }
        violations.extend(problems.into_iter().map(|problem| Violation {
            package: package.name.clone(),
            version: package.version.clone(),
            problem,
        }));
    }
    Ok(violations)
}

/// Whether the licences in `allowed` satisfy an SPDX expression: `OR` needs one side,
/// `AND` both, parentheses group, and the old `/` means `OR`. `X WITH exception` is
/// satisfied when `X` is allowed (an exception only adds permissions) or when the whole
/// `X WITH exception` is listed.
pub fn licence_allowed(expression: &str, allowed: &HashSet<String>) -> Result<bool, String> {
    let spaced = expression
        .replace('(', " ( ")
        .replace(')', " ) ")
        .replace('/', " OR ");
    let tokens: Vec<&str> = spaced.split_whitespace().collect();
    let mut parser = Parser {
        tokens: &tokens,
        at: 0,
        allowed,
    };
    let result = parser.or()?;
    match parser.tokens.get(parser.at) {
        None => Ok(result),
        Some(extra) => Err(format!("unexpected \"{extra}\"")),
    }
}

struct Parser<'a> {
    tokens: &'a [&'a str],
    at: usize,
    allowed: &'a HashSet<String>,
}

impl<'a> Parser<'a> {
    fn next_is(&mut self, word: &str) -> bool {
        let found = self.tokens.get(self.at) == Some(&word);
        if found {
            self.at += 1;
        }
        found
    }

    fn or(&mut self) -> Result<bool, String> {
        let mut any = self.and()?;
        while self.next_is("OR") {
            // Both sides are parsed, so that a malformed right side is still an error.
            let right = self.and()?;
            any = any || right;
        }
        Ok(any)
    }

    fn and(&mut self) -> Result<bool, String> {
        let mut all = self.with()?;
        while self.next_is("AND") {
            let right = self.with()?;
            all = all && right;
        }
        Ok(all)
    }

    fn with(&mut self) -> Result<bool, String> {
        if self.next_is("(") {
            let inner = self.or()?;
            return if self.next_is(")") {
                Ok(inner)
            } else {
                Err("a \"(\" is not closed".to_owned())
            };
        }
        let licence = self.licence()?;
        if self.next_is("WITH") {
            let exception = self.licence()?;
            let whole = format!("{licence} WITH {exception}");
            return Ok(self.allowed.contains(licence) || self.allowed.contains(&whole));
        }
        Ok(self.allowed.contains(licence))
    }

    fn licence(&mut self) -> Result<&'a str, String> {
        match self.tokens.get(self.at) {
            Some(&token) if !["AND", "OR", "WITH", "(", ")"].contains(&token) => {
                self.at += 1;
                Ok(token)
            }
            Some(token) => Err(format!("a licence expected, found \"{token}\"")),
            None => Err("a licence expected at the end".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DENY: &str = include_str!("../../../deny.toml");

    fn policy() -> Policy {
        Policy::from_deny_toml(DENY).expect("the workspace's deny.toml")
    }

    #[test]
    fn licence_expressions_as_crates_write_them() {
        let allowed = policy().licences;
        for ok in [
            "MIT OR Apache-2.0",
            "MIT/Apache-2.0",
            "Apache-2.0 / MIT",
            "(MIT OR Apache-2.0) AND Unicode-3.0",
            "Apache-2.0 WITH LLVM-exception OR Apache-2.0 OR MIT",
            "MIT OR Apache-2.0 OR LGPL-2.1-or-later",
            "Apache-2.0 AND ISC",
        ] {
            assert_eq!(licence_allowed(ok, &allowed), Ok(true), "{ok}");
        }
        for refused in [
            "GPL-3.0-only",
            "MIT AND GPL-2.0-or-later",
            "(MIT OR Apache-2.0) AND AGPL-3.0",
            "LGPL-2.1-or-later",
            "GPL-2.0 WITH Classpath-exception-2.0",
        ] {
            assert_eq!(licence_allowed(refused, &allowed), Ok(false), "{refused}");
        }
        for bad in ["", "MIT OR", "(MIT", "MIT Apache-2.0", "AND MIT"] {
            assert!(licence_allowed(bad, &allowed).is_err(), "{bad:?}");
        }
    }

    /// `cargo metadata` output of a workspace member and its dependencies.
    fn metadata(packages: &[(&str, Option<&str>, Option<&str>)]) -> String {
        let registry = "registry+https://github.com/rust-lang/crates.io-index";
        let mut list = vec![serde_json::json!({
            "id": "path+file:///ws/app#0.1.0", "name": "app", "version": "0.1.0",
            "license": "MIT OR Apache-2.0", "license_file": null, "source": null,
        })];
        for (name, license, source) in packages {
            list.push(serde_json::json!({
                "id": format!("{}#{name}@1.0.0", source.unwrap_or(registry)),
                "name": name, "version": "1.0.0", "license": license,
                "license_file": license.is_none().then_some("LICENSE"),
                "source": source.map_or(registry.to_owned(), |s| s.to_owned()),
            }));
        }
        serde_json::json!({
            "packages": list,
            "workspace_members": ["path+file:///ws/app#0.1.0"],
            "version": 1,
        })
        .to_string()
    }

    #[test]
    fn a_gpl_crate_a_banned_one_and_a_git_one_are_violations() {
        let text = metadata(&[
            ("serde", Some("MIT OR Apache-2.0"), None),
            ("readline-gpl", Some("GPL-3.0-or-later"), None),
            ("openssl-sys", Some("MIT"), None),
            ("mystery", None, None),
            (
                "forked",
                Some("MIT"),
                Some("git+https://example.invalid/forked?rev=1"),
            ),
        ]);
        let found: Vec<String> = check(&policy(), &text)
            .expect("metadata")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            [
                "readline-gpl 1.0.0: licence \"GPL-3.0-or-later\" is not allowed by deny.toml's licenses.allow",
                "openssl-sys 1.0.0: banned by deny.toml's bans.deny",
                "mystery 1.0.0: no SPDX licence expression (only a licence file, or none): read it and decide",
                "forked 1.0.0: source git+https://example.invalid/forked?rev=1 is not crates.io nor the workspace",
            ]
        );
        let clean = metadata(&[("serde", Some("MIT OR Apache-2.0"), None)]);
        assert_eq!(check(&policy(), &clean).expect("metadata"), []);
    }

    #[test]
    fn the_bans_are_the_tls_stacks_we_do_not_ship() {
        let banned = policy().banned;
        for name in [
            "openssl",
            "openssl-sys",
            "native-tls",
            "aws-lc-sys",
            "aws-lc-rs",
        ] {
            assert!(banned.contains(name), "{name}");
        }
    }
}
